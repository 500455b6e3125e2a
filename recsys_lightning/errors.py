"""Checkpoints read safely: weights-only, with a missing or damaged file named in a `CheckpointError`."""

from __future__ import annotations

import errno
import pickle
import shutil
import zipfile
from pathlib import Path
from typing import Any

import torch


class UnknownIdError(KeyError):
    """A user or item id the model does not know (the serving layer answers it with a 4xx); the message names it."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown id"


class FamilyNotTrainedError(ValueError):
    """A question (a rating, an explanation) whose task family the model was not trained with."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be read (missing, truncated, not a checkpoint) or does not fit the current run."""


def checkpoint_file(path: str | Path) -> Path:
    """The file holding a checkpoint's metadata: the file itself, or `meta.pt` of a sharded (FSDP2) folder."""
    path = Path(path)
    return path / "meta.pt" if path.is_dir() else path


def read_checkpoint(path: str | Path, key: str = "--ckpt_path") -> dict[str, Any]:
    """A checkpoint loaded weights-only (memory-mapped: tensors are not read until used).

    A missing file, a truncated or corrupt one, or one that is not a dict raises CheckpointError naming it.
    """
    file = checkpoint_file(path)
    if not file.is_file():
        raise CheckpointError(f"{key} {path}: no such checkpoint file")
    try:
        ckpt = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        reason = str(err).strip().splitlines()[0].split(". ")[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{key} {file}: not a readable checkpoint, truncated or corrupt ({reason[:160]})") \
            from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{key} {file}: not a training checkpoint (holds a {type(ckpt).__name__})")
    return ckpt


# --- checkpoints that could not be written (single files: checkpoint_io; sharded folders: distributed) -----------
NO_SPACE = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded"}


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, quota); its one-line message names the file and the free space."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(code, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def no_space(error: BaseException | None) -> int | None:
    """ENOSPC or EDQUOT when the error is, or was raised while handling, a full disk: torch.save's zip writer
    answers a failed write with its own RuntimeError ("unexpected pos ...") on exit, and torch.distributed.checkpoint
    raises a CheckpointException that carries each failed rank's error in `failures` ({rank: (error, traceback)})."""
    pending, seen = [error], set()
    while pending:
        error = pending.pop()
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in NO_SPACE:
            return error.errno
        failures = getattr(error, "failures", None)
        if isinstance(failures, dict):
            pending += [f[0] if isinstance(f, tuple) else f for f in failures.values()
                        if isinstance(f[0] if isinstance(f, tuple) else f, BaseException)]
        pending += [error.__context__, error.__cause__]
    return None


def checkpoint_write_error(path: str | Path, code: int) -> CheckpointWriteError:
    """The one-line error of a checkpoint (file or sharded folder) a full disk or quota stopped, with the free space
    left beside it; call it once the partial write is removed, so the earlier checkpoints are what remains."""
    folder = Path(path).parent
    free = shutil.disk_usage(folder).free
    return CheckpointWriteError(code, (
        f"checkpoint {path} not written: {NO_SPACE[code]} ({human_bytes(free)} free in {folder}); "
        f"the earlier checkpoints there are intact; free some space and resume from the latest one"))
