"""Sharding the network for FSDP: per transformer block, then the root, for FSDP2 and Lightning's FSDPStrategy.

`RecSysLLM.configure_model` builds the network and hands it to `shard_network`, which wraps every transformer
block, found by shape (the longest `nn.ModuleList` of one block class, so native GLM, HF decoders and peft-wrapped
models alike), then the whole network, whose embeddings and tied output layer form the root unit.

`FSDP2Strategy` writes its sharded checkpoint folders atomically (see `FSDP2Strategy.save_checkpoint` and
`swap_into_place`): a kill or a full disk during a save leaves the previous folder as it was.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import secrets
import shutil
import sys
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.distributed as dist
from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.fsdp.wrap import wrap
from torchmetrics import MetricCollection
from torchmetrics.utilities import dim_zero_cat

from recsys_lightning.errors import checkpoint_write_error, no_space

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh


def transformer_blocks(network: nn.Module) -> nn.ModuleList:
    """The network's stack of transformer blocks: its longest `nn.ModuleList` whose items share one class."""
    stacks = [m for m in network.modules()
              if isinstance(m, nn.ModuleList) and len(m) and len({type(b) for b in m}) == 1]
    if not stacks:
        raise ValueError(f"{type(network).__name__} has no nn.ModuleList of transformer blocks to shard")
    return max(stacks, key=len)


def shard_network(network: nn.Module, mesh: DeviceMesh | None, precision: str = "32-true") -> nn.Module:
    """Shard each transformer block, then the network: FSDP2 `fully_shard` over the data-parallel mesh when the
    strategy gave one (ModelParallelStrategy), else FSDP1 `wrap`, which only acts inside Lightning's FSDPStrategy
    (it opens an `enable_wrap` context around `configure_model`) and returns the module unchanged elsewhere."""
    blocks = transformer_blocks(network)
    if mesh is None:
        for i, block in enumerate(blocks):
            blocks[i] = wrap(block)
        return wrap(network)
    if "tensor_parallel" in (mesh.mesh_dim_names or ()) and mesh["tensor_parallel"].size() > 1:
        raise ValueError("tensor parallelism is not supported: use recsys_lightning.distributed.FSDP2Strategy "
                         "(or ModelParallelStrategy with tensor_parallel_size: 1)")
    data_parallel = mesh["data_parallel"] if "data_parallel" in (mesh.mesh_dim_names or ()) else mesh
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
        if precision.startswith("bf16") else MixedPrecisionPolicy()
    for block in blocks:
        fully_shard(block, mesh=data_parallel, mp_policy=policy)
    return fully_shard(network, mesh=data_parallel, mp_policy=policy)


def mesh_device(mesh: DeviceMesh) -> torch.device:
    """The device this rank's shards live on: the mesh's device type, this process's current GPU for CUDA."""
    if mesh.device_type == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(mesh.device_type)


def gather_for_decoding(network: nn.Module | None) -> None:
    """Gather FSDP2's full weights once, before an evaluation epoch, and keep them through every forward.

    Ranks decode different batch counts and beam search stops early per batch, so per-forward all-gathers
    would not line up across ranks; one gather per epoch does. No-op when the network is not FSDP2-sharded.
    """
    for module in _fsdp_modules(network):
        module.set_reshard_after_forward(False, recurse=False)
        module.unshard()


def release_after_decoding(network: nn.Module | None) -> None:
    """Free the gathered weights after an evaluation epoch; blocks reshard after forward again (not the root,
    FSDP2's default for it)."""
    for module in _fsdp_modules(network):
        module.reshard()
        module.set_reshard_after_forward(module is not network, recurse=False)


def merge_list_states(metrics: MetricCollection) -> None:
    """Concatenate each list state (one tensor per update) into one tensor before `compute`.

    torchmetrics gathers list states without a `dist_reduce_fx` (retrieval metrics' indexes, preds, target) item
    by item, so ranks that decoded different numbers of batches would issue different numbers of all-gathers.
    """
    for metric in metrics.values():
        for name, value in metric.metric_state.items():
            if isinstance(value, list) and len(value) > 1 and all(isinstance(v, torch.Tensor) for v in value):
                setattr(metric, name, [dim_zero_cat(value)])


def _fsdp_modules(network: nn.Module | None) -> list[FSDPModule]:
    return [m for m in network.modules() if isinstance(m, FSDPModule)] if network is not None else []


class FSDP2Strategy(ModelParallelStrategy):
    """FSDP2 over every process (nodes x devices): Lightning's ModelParallelStrategy with the data-parallel size set
    to the world size and no tensor parallelism, so one config serves any `num_nodes` / `devices`.

    Runs on GPUs (NCCL) and on CPUs (gloo). Checkpoints are sharded folders by default (each rank writes its
    shard; `save_distributed_checkpoint: false` writes one file on rank 0, through the trainer's CheckpointIO).
    Sharded folders are written atomically: every rank writes into a fresh hidden sibling folder, and rank 0 swaps
    it into place once all are complete (`swap_into_place`), so a kill or a full disk on any rank leaves the
    previous checkpoint as it was.
    """

    def __init__(self, save_distributed_checkpoint: bool = True,
                 process_group_backend: Literal["nccl", "gloo"] | None = None,
                 timeout: timedelta | None = default_pg_timeout) -> None:
        super().__init__(data_parallel_size="auto", tensor_parallel_size=1,
                         save_distributed_checkpoint=save_distributed_checkpoint,
                         process_group_backend=process_group_backend, timeout=timeout)

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any | None = None) -> None:
        """Write the sharded folder `filepath` atomically, on every rank (a collective).

        The ranks agree on a token (rank 0's, broadcast) and write into `.<name>.<token>.tmp/` beside `filepath`;
        rank 0 first removes what earlier killed saves left there (`clean_stale_folders`). Once every rank reports
        its part written (an all-gather, which is also the barrier), rank 0 swaps the folder into place and fsyncs
        the parent; its outcome is broadcast, so all ranks return or raise together. A failure on any rank removes
        the temp folder and raises on every rank: a full disk or quota as the one-line `CheckpointWriteError`.
        """
        if not self._save_distributed_checkpoint or storage_options is not None:
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        path = Path(self.broadcast(str(filepath)))
        token = self.broadcast(secrets.token_hex(8) if self.global_rank == 0 else None)
        tmp = temp_folder(path, token)
        if self.global_rank == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
            clean_stale_folders(path.parent)
        self.barrier("FSDP2Strategy.save_checkpoint")
        error: BaseException | None = None
        try:
            super().save_checkpoint(checkpoint, tmp)  # DCP shards (fsynced by DCP's writer), then meta.pt on rank 0
            if self.global_rank == 0:
                _fsync(tmp / "meta.pt")
                _fsync(tmp)
        except (Exception, CheckpointException) as caught:  # DCP's CheckpointException is a BaseException
            error = caught
        status = None if error is None else (no_space(error), _first_line(error))
        failed = [(rank, s) for rank, s in enumerate(_all_gather(status)) if s is not None]

        outcome = None
        if self.global_rank == 0:
            try:
                if failed:
                    shutil.rmtree(tmp, ignore_errors=True)
                else:
                    swap_into_place(tmp, path, token)
            except Exception as caught:  # noqa: BLE001 - reported on every rank below
                error = error or caught
                outcome = (no_space(caught), _first_line(caught))
        outcome = self.broadcast(outcome)
        if outcome is not None:
            failed.append((0, outcome))
        if not failed:
            return None
        code = next((s[0] for _, s in failed if s[0] is not None), None)
        if code is not None:
            raise checkpoint_write_error(path, code) from error
        if error is not None:
            raise error
        rank, (_, message) = failed[0]
        raise RuntimeError(f"checkpoint {path} not written: rank {rank} failed ({message}); "
                           f"the earlier checkpoints there are intact")

    def remove_checkpoint(self, filepath: Any) -> None:
        """Remove a superseded checkpoint (ModelCheckpoint's top-k bookkeeping). A sharded folder is first renamed
        to a hidden temp name, so a kill mid-removal leaves no half-deleted folder under a checkpoint's name (the
        next save removes the rest)."""
        path = Path(str(filepath))
        if self.is_global_zero and path.is_dir() and not path.is_symlink():
            doomed = temp_folder(path, secrets.token_hex(8))
            os.rename(path, doomed)
            _fsync(path.parent)
            shutil.rmtree(doomed, ignore_errors=True)
            return
        super().remove_checkpoint(filepath)


# --- atomic sharded checkpoint folders ---------------------------------------------------------------------------
_STALE = re.compile(r"^\.(?P<name>.+)\.(?:(?P<tmp>[0-9a-f]{16})\.tmp|old-(?P<old>[0-9a-f]{16}))$")


def temp_folder(path: Path, token: str) -> Path:
    """Where a sharded save of `path` is written before the swap: a hidden sibling whose name never ends in
    `.ckpt`, so checkpoint listings skip it (AtomicCheckpointIO's temp files are `.<name>.<pid>-<hex8>.tmp`)."""
    return path.parent / f".{path.name}.{token}.tmp"


def old_folder(path: Path, token: str) -> Path:
    """Where the previous folder waits during the fallback swap (no RENAME_EXCHANGE)."""
    return path.parent / f".{path.name}.old-{token}"


def clean_stale_folders(folder: Path) -> None:
    """Remove the temp and old folders that killed saves (or removals) left in `folder`. An old folder whose
    checkpoint is missing (a kill between the two renames of the fallback swap) is put back in its place first."""
    if not folder.is_dir():
        return
    for entry in sorted(folder.iterdir()):
        match = _STALE.match(entry.name)
        if match is None or entry.is_symlink() or not entry.is_dir():
            continue
        target = folder / match["name"]
        if match["old"] and not os.path.lexists(target):
            os.rename(entry, target)
            _fsync(folder)
        else:
            shutil.rmtree(entry, ignore_errors=True)


def swap_into_place(new: Path, path: Path, token: str) -> None:
    """Put the complete folder `new` at `path`, replacing what is there (a sharded folder or a single file).

    On Linux, `renameat2(RENAME_EXCHANGE)` swaps the two names in one atomic step, then the old one (now under the
    temp name) is removed. Where the C library, kernel or filesystem lacks it (NFS, macOS), the old one is renamed
    to `.<name>.old-<token>`, the new one to `path`, and the old one removed: a kill between those two renames
    leaves no `path` but the intact old folder, which the next save puts back (`clean_stale_folders`). The parent
    folder is fsynced before anything old is removed.
    """
    folder = path.parent
    if not os.path.lexists(path):
        os.rename(new, path)
        _fsync(folder)
        return
    if _rename_exchange(new, path):
        _fsync(folder)
        _remove(new)
        return
    old = old_folder(path, token)
    os.rename(path, old)
    os.rename(new, path)
    _fsync(folder)
    _remove(old)


AT_FDCWD = -100
RENAME_EXCHANGE = 2


def _rename_exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two existing paths; False where renameat2's RENAME_EXCHANGE is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # glibc < 2.28, musl without it
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EPERM):
        return False  # the filesystem or kernel refuses the flag (or a seccomp filter the call)
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    """fsync a file or a folder (its entries); filesystems that refuse fsync on a folder are let be."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _all_gather(obj: Any) -> list[Any]:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, obj)
        return gathered
    return [obj]


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:300] if text else ''}"
