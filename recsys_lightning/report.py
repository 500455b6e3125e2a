"""The one-line `recsys-lightning: error: <message>` (exit status 2) every subcommand reports the project's own
errors with; RECSYS_LIGHTNING_DEBUG=1 shows the full traceback instead."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from recsys_lightning.builtin import builtin_dir
from recsys_lightning.checkpoint_io import CheckpointWriteError
from recsys_lightning.data.schema import DataError
from recsys_lightning.errors import CheckpointError
from recsys_lightning.prompts import PromptError
from recsys_lightning.registry import RegistryError

DEBUG_ENV = "RECSYS_LIGHTNING_DEBUG"
PACKAGE = Path(__file__).resolve().parent
PROG = "recsys-lightning"
OWN_TYPES = (DataError, PromptError, RegistryError, CheckpointError, CheckpointWriteError)


def _raised_by_us(err: BaseException) -> bool:
    """True when the innermost frame that raised `err` is this package's or a shipped task family's code."""
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return False
    path = Path(tb.tb_frame.f_code.co_filename).resolve()
    return any(path.is_relative_to(root) for root in (PACKAGE, builtin_dir("tasks").resolve()))


def is_user_error(err: BaseException) -> bool:
    """An error whose message is meant for the user: the project's own types, or a ValueError / FileNotFoundError /
    FileExistsError that our code raised about a setting (`data.max_length ...`, `model.beam_size ...`)."""
    if isinstance(err, OWN_TYPES):
        return True
    return isinstance(err, (ValueError, FileNotFoundError, FileExistsError)) and _raised_by_us(err)


def user_error(err: BaseException) -> BaseException | None:
    """`err` if it is a user error, else the first user error it was raised from (jsonargparse wraps a backbone's
    refusal of its settings in its own ValueError), else None."""
    seen: set[int] = set()
    stack = [err]
    while stack:
        e = stack.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        if is_user_error(e):
            return e
        stack += [e.__cause__] if e.__cause__ is not None else []
    return None


def one_line(err: BaseException) -> str:
    message = " ".join(str(err).split("\n")).strip() or type(err).__name__
    return f"{PROG}: error: {message}"


def report_errors(run: Any) -> Any:
    """Call `run()`; a user error (see `is_user_error`) becomes one line `recsys-lightning: error: <message>` on
    stderr and exit status 2. With RECSYS_LIGHTNING_DEBUG=1 it propagates with its full traceback."""
    try:
        return run()
    except Exception as err:  # noqa: BLE001 - anything not ours propagates unchanged below
        ours = user_error(err)
        if os.environ.get(DEBUG_ENV, "") not in ("", "0") or ours is None:
            raise
        print(one_line(ours), file=sys.stderr, flush=True)
        raise SystemExit(2) from None
