"""User-facing errors: a checkpoint's metadata read safely (weights-only; a damaged file named), and the one-line
`recsys-lightning: error: <message>` (exit status 2) every subcommand reports the project's errors with."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch


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


# --- one-line errors for every subcommand ------------------------------------------------------------------------
DEBUG_ENV = "RECSYS_LIGHTNING_DEBUG"
PACKAGE = Path(__file__).resolve().parent
PROG = "recsys-lightning"


def _own_types() -> tuple[type[BaseException], ...]:
    """The project's error types (imported here, when an error is reported, to keep this module free of cycles)."""
    from recsys_lightning.checkpoint_io import CheckpointWriteError
    from recsys_lightning.data.schema import DataError
    from recsys_lightning.prompts import PromptError
    from recsys_lightning.registry import RegistryError

    return DataError, PromptError, RegistryError, CheckpointError, CheckpointWriteError


def _raised_by_us(err: BaseException) -> bool:
    """True when the innermost frame that raised `err` is this package's or a shipped task family's code."""
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return False
    from recsys_lightning.builtin import builtin_dir

    path = Path(tb.tb_frame.f_code.co_filename).resolve()
    return any(path.is_relative_to(root) for root in (PACKAGE, builtin_dir("tasks").resolve()))


def is_user_error(err: BaseException) -> bool:
    """An error whose message is meant for the user: the project's own types, or a ValueError / FileNotFoundError /
    FileExistsError that our code raised about a setting (`data.max_length ...`, `model.beam_size ...`)."""
    if isinstance(err, _own_types()):
        return True
    return isinstance(err, (ValueError, FileNotFoundError, FileExistsError)) and _raised_by_us(err)


def one_line(err: BaseException) -> str:
    message = " ".join(str(err).split("\n")).strip() or type(err).__name__
    return f"{PROG}: error: {message}"


def report_errors(run: Any) -> Any:
    """Call `run()`; a user error (see `is_user_error`) becomes one line `recsys-lightning: error: <message>` on
    stderr and exit status 2. With RECSYS_LIGHTNING_DEBUG=1 it propagates with its full traceback."""
    import os
    import sys

    try:
        return run()
    except Exception as err:  # noqa: BLE001 - anything not ours propagates unchanged below
        if os.environ.get(DEBUG_ENV, "") not in ("", "0") or not is_user_error(err):
            raise
        print(one_line(err), file=sys.stderr, flush=True)
        raise SystemExit(2) from None
