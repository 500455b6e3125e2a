"""Sharding the network for FSDP: per transformer block, then the root, for FSDP2 and Lightning's FSDPStrategy.

`RecSysLLM.configure_model` builds the network and hands it to `shard_network`, which wraps every transformer
block, found by shape (the longest `nn.ModuleList` of one block class, so native GLM, HF decoders and peft-wrapped
models alike), then the whole network, whose embeddings and tied output layer form the root unit.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Literal

import torch
from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.fsdp.wrap import wrap
from torchmetrics import MetricCollection
from torchmetrics.utilities import dim_zero_cat

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
    shard; `save_distributed_checkpoint: false` writes one file on rank 0).
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
