"""Atomic checkpoint writes: a write that fails part-way (a full disk, a quota, any error) leaves the previous
checkpoint bit-identical and no temp file, and a full disk is one line naming the checkpoint and the free space.
The disk fills through a writer that fails after N bytes, and for real on a small tmpfs where this user may mount
one (root); both through the real CLI as well."""

from __future__ import annotations

import errno
import io
import os
import re
import subprocess
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import DDPStrategy

from recsys_lightning import checkpoint_io
from recsys_lightning.checkpoint_io import AtomicCheckpointIO, CheckpointWriteError, atomic_write, with_atomic_checkpoints
from recsys_lightning.cli import main
from tests.conftest import REPO, SEQUENTIAL_ONLY
from tests.test_cli import TINY, run


class FillsUp(io.BufferedWriter):
    """A file that takes `limit` bytes, then fails as a full disk does."""

    def __init__(self, fd: int, limit: int, code: int) -> None:
        super().__init__(io.FileIO(fd, "wb"))
        self.left, self.code = limit, code

    def write(self, data) -> int:
        data = memoryview(data).cast("B")
        if len(data) > self.left:
            super().write(data[:self.left])
            super().flush()
            self.left = 0
            raise OSError(self.code, os.strerror(self.code))
        self.left -= len(data)
        return super().write(data)


def disk_fills_after(monkeypatch, limit: int, code: int = errno.ENOSPC, writes_before: int = 0) -> None:
    """Checkpoint temp files (and nothing else) opened after the first `writes_before` ones fail after `limit` bytes."""
    fdopen = os.fdopen
    opened = [0]

    def open_checkpoint(fd, mode="r", *args, **kwargs):
        if mode == "wb" and os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp"):
            opened[0] += 1
            if opened[0] > writes_before:
                return FillsUp(fd, limit, code)
        return fdopen(fd, mode, *args, **kwargs)

    monkeypatch.setattr(checkpoint_io.os, "fdopen", open_checkpoint)


def checkpoint(step: int) -> dict:
    return {"global_step": step, "state_dict": {"w": torch.arange(50_000, dtype=torch.float32) + step}}


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
@pytest.mark.parametrize("limit", [0, 4096, 150_000])
def test_a_write_that_fills_the_disk_leaves_the_previous_checkpoint_and_no_temp_file(tmp_path, monkeypatch, code,
                                                                                     limit):
    path = tmp_path / "ckpt" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(checkpoint(1), path)
    before = path.read_bytes()
    disk_fills_after(monkeypatch, limit, code)
    with pytest.raises(CheckpointWriteError) as caught:
        AtomicCheckpointIO().save_checkpoint(checkpoint(2), path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message and " free in " in message and "intact" in message
    assert ("quota" in message) == (code == errno.EDQUOT) and caught.value.errno == code
    assert path.read_bytes() == before and [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


def test_any_failed_write_removes_its_temp_file_and_keeps_its_error(tmp_path):
    path = tmp_path / "best.ckpt"
    path.write_bytes(b"old")

    def fails(f):
        f.write(b"partial")
        raise RuntimeError("serialization failed")

    with pytest.raises(RuntimeError, match="serialization failed"):
        atomic_write(path, fails)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["best.ckpt"]


def test_the_next_write_removes_the_temp_file_a_killed_write_left(tmp_path):
    path = tmp_path / "last.ckpt"
    (tmp_path / ".last.ckpt.123-abcd1234.tmp").write_bytes(b"half a checkpoint")  # what SIGKILL mid-write leaves
    (tmp_path / ".best.ckpt.123-abcd1234.tmp").write_bytes(b"another target's")
    AtomicCheckpointIO().save_checkpoint(checkpoint(3), path)
    assert torch.load(path, weights_only=True)["global_step"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [".best.ckpt.123-abcd1234.tmp", "last.ckpt"]


def test_saves_never_go_through_tmpdir_and_keep_the_umask(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path / "missing"))  # Lightning's fsspec transaction would write here
    old = os.umask(0o022)
    try:
        AtomicCheckpointIO().save_checkpoint(checkpoint(1), tmp_path / "ckpt" / "x.ckpt")
    finally:
        os.umask(old)
    assert (tmp_path / "ckpt" / "x.ckpt").stat().st_mode & 0o777 == 0o644 and not (tmp_path / "missing").exists()


def test_the_atomic_io_is_added_unless_one_is_configured():
    assert [type(p) for p in with_atomic_checkpoints(None)] == [AtomicCheckpointIO]
    assert [type(p) for p in with_atomic_checkpoints([], DDPStrategy())] == [AtomicCheckpointIO]
    chosen = TorchCheckpointIO()
    assert with_atomic_checkpoints(chosen) == [chosen]
    assert with_atomic_checkpoints(None, DDPStrategy(checkpoint_io=chosen)) == []


def full_disk_message(capsys, fit) -> str:
    """The one line a fit that fills the disk ends with: the CLI's `recsys-lightning: error: ...` on stderr (exit 2),
    or the error itself where the CLI lets it propagate."""
    with pytest.raises((CheckpointWriteError, SystemExit)) as caught:
        fit()
    if isinstance(caught.value, SystemExit):
        assert caught.value.code == 2
        message = capsys.readouterr().err.strip().splitlines()[-1]
    else:
        message = str(caught.value)
    assert "\n" not in message
    return message


def test_a_fit_whose_disk_fills_stops_with_one_line_and_keeps_the_last_good_checkpoint(tmp_path, tiny_reviews,
                                                                                        monkeypatch, capsys):
    disk_fills_after(monkeypatch, 10_000, writes_before=2)  # last.ckpt at steps 1 and 2, then the disk is full
    message = full_disk_message(capsys, lambda: run("fit", tmp_path, tiny_reviews, *SEQUENTIAL_ONLY,
                                                    "--trainer.max_steps", "5", "--checkpoint.every_n_train_steps", "1"))
    assert re.search(r"checkpoint .*/ckpt/last.ckpt not written: no space left on the device \(.* free in .*\); "
                     r"the earlier checkpoints there are intact", message)
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["last.ckpt"]
    assert torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["global_step"] == 2


class FillDisk(L.Callback):
    """Once `last.ckpt` exists, fills its filesystem but for a third of that checkpoint's size."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        folder = Path(trainer.checkpoint_callback.dirpath)
        last = folder / "last.ckpt"
        if last.is_file() and not (folder / "filler").exists():
            free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
            with (folder / "filler").open("wb") as f:
                f.write(b"\0" * max(free - last.stat().st_size // 3, 0))


@pytest.fixture
def small_tmpfs(tmp_path):
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)],
                                           capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_fit_on_a_real_full_disk_stops_with_one_line_and_keeps_last_ckpt(tmp_path, tiny_reviews, small_tmpfs,
                                                                            capsys):
    folder = small_tmpfs / "ckpt"  # logs and the data cache stay on tmp_path
    message = full_disk_message(capsys, lambda: main([
        "fit", "--config", str(REPO / "lightning_configs" / "demo.yaml"), *TINY, *SEQUENTIAL_ONLY,
        "--data.root", str(tiny_reviews), "--trainer.default_root_dir", str(tmp_path),
        "--data.cache_dir", str(tmp_path / "cache"),
        "--trainer.max_steps", "5", "--checkpoint.every_n_train_steps", "1", "--checkpoint.dirpath", str(folder),
        "--trainer.callbacks+=tests.test_checkpoint_io.FillDisk"]))
    assert f"checkpoint {folder}/last.ckpt not written: no space left on the device (" in message
    assert sorted(p.name for p in folder.iterdir()) == ["filler", "last.ckpt"]
    assert torch.load(folder / "last.ckpt", weights_only=True)["global_step"] == 1
