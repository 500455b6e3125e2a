"""Atomic checkpoint files: the Lightning `CheckpointIO` every `recsys-lightning` run saves through.

Lightning's `TorchCheckpointIO` writes through an fsspec transaction, which puts the bytes in a temp file under
`$TMPDIR` and moves it onto the target: across filesystems the move empties the target before copying, so a full disk
or a kill mid-copy destroys the previous `last.ckpt`. `AtomicCheckpointIO` writes beside the target instead (same
folder, so the same filesystem), flushes and fsyncs, `os.replace`s it onto the target and fsyncs the folder: the old
checkpoint stays whole until the new one is. A failed write removes its temp file; a full disk (or quota) stops the
run with one line naming the checkpoint and the free space.
"""

from __future__ import annotations

import errno
import os
import uuid
from pathlib import Path
from typing import Any, BinaryIO, Callable

import torch
from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO
from fsspec.implementations.local import LocalFileSystem

from recsys_lightning.errors import NO_SPACE, CheckpointWriteError, checkpoint_write_error, human_bytes, no_space

__all__ = ["NO_SPACE", "AtomicCheckpointIO", "CheckpointWriteError", "atomic_write", "human_bytes", "temp_name",
           "with_atomic_checkpoints"]


def temp_name(path: Path) -> str:
    """A hidden sibling that never ends in `.ckpt`, so checkpoint listings (and top-k bookkeeping) skip it."""
    return f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as error:  # some filesystems refuse fsync on a directory; the rename itself is done
        if error.errno not in (errno.EINVAL, errno.EBADF):
            raise
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Write a file through `write(f)` so that `path` is either its old self or the complete new file.

    Temp files of earlier writes of the same target that never finished (a killed process) are removed first.
    """
    path = Path(path)
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)
    tmp = folder / temp_name(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        code = no_space(error)
        if code is not None:
            raise checkpoint_write_error(path, code) from error
        raise
    _fsync_folder(folder)


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` whose local saves are atomic in the checkpoint's own folder (see the module docstring);
    remote (fsspec URL) paths keep Lightning's save."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike,
                        storage_options: Any | None = None) -> None:
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            return super().save_checkpoint(checkpoint, path, storage_options)
        local = str(path).removeprefix("file://")
        atomic_write(local, lambda f: torch.save(checkpoint, f))


def with_atomic_checkpoints(plugins: Any, strategy: Any = None) -> list[Any]:
    """The trainer's `plugins` with an `AtomicCheckpointIO` added, unless a CheckpointIO is already chosen (in the
    plugins, or by a strategy instance)."""
    plugins = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
    chosen = any(isinstance(p, CheckpointIO) for p in plugins) or getattr(strategy, "_checkpoint_io", None) is not None
    return plugins if chosen else [*plugins, AtomicCheckpointIO()]
