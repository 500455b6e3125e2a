"""Atomic sharded (FSDP2) checkpoint folders: every rank writes into a hidden temp folder, rank 0 swaps it into place
(recsys_lightning.distributed.swap_into_place). The swap and the clean-up of what killed saves leave, on one process;
then two FSDP2 processes (gloo) whose save fails half-way through one rank's shard: a full disk leaves every earlier
checkpoint byte-identical and ends with the one-line error, a SIGKILL leaves `last.ckpt/` loadable, and the resume
from it logs the same losses as an uninterrupted fit."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import pytest
import torch

from recsys_lightning import distributed
from recsys_lightning.distributed import clean_stale_folders, old_folder, swap_into_place, temp_folder
from tests.conftest import REPO, write_reviews
from tests.test_checkpoint_io import FillsUp
from tests.test_distributed import USERS, losses
from tests.test_resume import STEPS, fit, launch, resume

TOKEN = "0123456789abcdef"


def folder(path: Path, **files: str) -> Path:
    path.mkdir(parents=True)
    for name, text in files.items():
        (path / name).write_text(text)
    return path


def contents(path: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(path.iterdir())}


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "fallback"])
def test_the_swap_replaces_the_folder_and_leaves_nothing_else(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(distributed, "_rename_exchange", lambda a, b: False)
    path = folder(tmp_path / "last.ckpt", **{"meta.pt": "old", "__0_0.distcp": "old shard"})
    new = folder(temp_folder(path, TOKEN), **{"meta.pt": "new", "__1_0.distcp": "new shard"})
    swap_into_place(new, path, TOKEN)
    assert contents(path) == {"__1_0.distcp": "new shard", "meta.pt": "new"}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_renameat2_exchanges_two_folders_here(tmp_path):
    """The atomic path is the one taken on this machine's filesystem (else the swap falls back to two renames)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("renameat2 is Linux's")
    a, b = folder(tmp_path / "a", x="a"), folder(tmp_path / "b", x="b")
    assert distributed._rename_exchange(a, b)
    assert (a / "x").read_text() == "b" and (b / "x").read_text() == "a"
    with pytest.raises(FileNotFoundError):
        distributed._rename_exchange(a, tmp_path / "missing")


def test_the_swap_puts_a_folder_where_there_was_none_or_a_single_file(tmp_path):
    path = tmp_path / "best.ckpt"
    swap_into_place(folder(temp_folder(path, TOKEN), **{"meta.pt": "1"}), path, TOKEN)
    assert contents(path) == {"meta.pt": "1"}
    path = tmp_path / "last.ckpt"
    path.write_text("a consolidated checkpoint")
    swap_into_place(folder(temp_folder(path, TOKEN), **{"meta.pt": "2"}), path, TOKEN)
    assert contents(path) == {"meta.pt": "2"} and sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt",
                                                                                                  "last.ckpt"]


def test_stale_folders_are_removed_and_an_old_folder_without_its_checkpoint_is_put_back(tmp_path):
    folder(tmp_path / "last.ckpt", **{"meta.pt": "good"})
    folder(temp_folder(tmp_path / "last.ckpt", TOKEN), **{"__0_0.distcp": "half"})  # a save killed mid-write
    folder(temp_folder(tmp_path / "step=3.ckpt", "f" * 16))  # a removal killed mid-way
    # a fallback swap killed between its two renames: the old folder aside, the new one complete
    folder(old_folder(tmp_path / "best.ckpt", TOKEN), **{"meta.pt": "best"})
    folder(temp_folder(tmp_path / "best.ckpt", TOKEN), **{"meta.pt": "newer"})
    (tmp_path / ".last.ckpt.123-abcd1234.tmp").write_text("AtomicCheckpointIO's temp file: not a folder")
    folder(tmp_path / ".cache.tmp")
    clean_stale_folders(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".cache.tmp", ".last.ckpt.123-abcd1234.tmp", "best.ckpt",
                                                          "last.ckpt"]
    assert contents(tmp_path / "best.ckpt") == {"meta.pt": "best"}


# --- two FSDP2 processes -----------------------------------------------------------------------------------------
class ShardWriteFails(L.Callback):
    """On rank `rank`, the shard file of the checkpoint saved at global step `step` fails after 4 KiB: the disk is
    full (`enospc`) or the process is SIGKILLed (`kill`). Before that step, rank 0 records a hash of every file of
    the checkpoint folder (`hashes.json` beside it)."""

    def __init__(self, rank: int, step: int, how: str) -> None:
        self.rank, self.step, self.how = rank, step, how

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step - 1 and trainer.is_global_zero:  # the batch whose end saves `step`
            ckpt = Path(trainer.checkpoint_callback.dirpath)
            (ckpt.parent / "hashes.json").write_text(json.dumps(hashes(ckpt)))

    def setup(self, trainer, pl_module, stage):
        if trainer.global_rank != self.rank:
            return
        from torch.distributed.checkpoint.filesystem import FileSystem

        create_stream, callback = FileSystem.create_stream, self

        @contextmanager
        def fails_half_way(fs, path, mode):
            if mode == "wb" and str(path).endswith(".distcp") and trainer.global_step == callback.step:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
                with (FillsUp(fd, 4096, errno.ENOSPC) if callback.how == "enospc" else DiesAfter(fd, 4096)) as f:
                    yield f
            else:
                with create_stream(fs, path, mode) as stream:
                    yield stream

        FileSystem.create_stream = fails_half_way


class DiesAfter(FillsUp):
    def __init__(self, fd: int, limit: int) -> None:
        super().__init__(fd, limit, errno.ENOSPC)

    def write(self, data) -> int:
        try:
            return super().write(data)
        except OSError:
            os.kill(os.getpid(), signal.SIGKILL)
            raise


def fails(rank: int, step: int, how: str) -> str:
    return "--trainer.callbacks+=" + json.dumps({"class_path": "tests.test_sharded_checkpoint.ShardWriteFails",
                                                 "init_args": {"rank": rank, "step": step, "how": how}})


def hashes(ckpt: Path) -> dict[str, str]:
    """sha256 of every file under the checkpoint folder, hidden (temp) entries apart."""
    return {str(p.relative_to(ckpt)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(ckpt.rglob("*"))
            if p.is_file() and not p.relative_to(ckpt).parts[0].startswith(".")}


def stale(ckpt: Path) -> list[str]:
    return sorted(p.name for p in ckpt.iterdir() if p.name.startswith("."))


def saved_step(path: Path) -> int:
    return torch.load(path / "meta.pt", map_location="cpu", weights_only=True)["global_step"]


@pytest.mark.slow
def test_a_full_disk_on_one_rank_leaves_every_sharded_checkpoint_byte_identical(tmp_path):
    data = write_reviews(tmp_path / "reviews", users=USERS)
    ckpt = tmp_path / "cut" / "ckpt"
    # top-k of one by step, so each save also removes the previous step's folder; step 3's shard fills the disk
    args = fit(tmp_path, data, "fsdp2", "cut", "--checkpoint.monitor", "null", "--checkpoint.filename", "{step}",
               fails(1, 3, "enospc"))
    leaked = ("MASTER_", "PL_", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "RANK", "GROUP_RANK", "TORCHELASTIC_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(leaked)}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           str(port), str(REPO / "tests" / "distributed_runner.py"), json.dumps([args])],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    lines = [line for line in output.splitlines() if line.startswith("recsys-lightning: error: ")]
    assert done.returncode != 0 and len(lines) == 2, output[-6000:]  # one line from each rank
    assert lines[0] == lines[1] and lines[0].startswith(
        f"recsys-lightning: error: checkpoint {ckpt}/step=3.ckpt not written: no space left on the device ("), lines
    assert "the earlier checkpoints there are intact" in lines[0] and "CheckpointException" not in output
    before = json.loads((tmp_path / "cut" / "hashes.json").read_text())
    assert sorted(p.name for p in ckpt.iterdir()) == ["last.ckpt", "step=2.ckpt"]  # step=1's folder was removed
    assert sorted(before) == sorted(hashes(ckpt)) and hashes(ckpt) == before
    assert {f for f in before if f.startswith("last.ckpt/")} == {
        "last.ckpt/.metadata", "last.ckpt/__0_0.distcp", "last.ckpt/__1_0.distcp", "last.ckpt/meta.pt"}
    assert saved_step(ckpt / "last.ckpt") == 2


@pytest.mark.slow
def test_an_fsdp2_fit_killed_mid_shard_resumes_from_the_intact_folder_to_the_same_losses(tmp_path):
    data = write_reviews(tmp_path / "reviews", users=USERS)
    ckpt = tmp_path / "cut" / "ckpt"
    launch([fit(tmp_path, data, "fsdp2", "full"), fit(tmp_path, data, "fsdp2", "cut", fails(1, 6, "kill"))], 2,
           True)
    assert hashes(ckpt) == json.loads((tmp_path / "cut" / "hashes.json").read_text())  # last.ckpt at 5, untouched
    assert saved_step(ckpt / "last.ckpt") == 5
    assert [name.removesuffix(".tmp")[:len(".last.ckpt.")] for name in stale(ckpt)] == [".last.ckpt."]
    launch([resume(tmp_path, data, "fsdp2", "resumed")], 2, False)
    assert stale(ckpt) == []  # the killed save's temp folder went with the next save
    full, cut, resumed = (losses(tmp_path / name) for name in ("full", "cut", "resumed"))
    assert sorted(full) == list(range(STEPS)) and sorted(cut) == list(range(5))
    assert sorted(resumed) == list(range(5, STEPS))
    assert {**cut, **resumed} == full
