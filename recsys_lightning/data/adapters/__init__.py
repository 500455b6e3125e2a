"""Readers turn dataset files, read unchanged, into the common schema. A config's `data.format` names one: every reader
is registered under the entry-point group `recsys_lightning.readers` (name -> a callable `(root: Path, **options) ->
RecData`), the built-in ones by this package's pyproject.toml, others by any installed distribution."""

from __future__ import annotations

import inspect
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Mapping

from recsys_lightning.data.schema import DataError, RecData

ENTRY_POINT_GROUP = "recsys_lightning.readers"
Reader = Callable[..., RecData]


def readers() -> dict[str, metadata.EntryPoint]:
    """Every registered reader by name; one name registered by two distributions to different callables is an
    error naming both. Every distribution's entry points count, not only the first of each name on `sys.path`
    (`metadata.entry_points` drops later ones): a stale `*.egg-info` in a checkout must not hide the installed ones."""
    found: dict[str, metadata.EntryPoint] = {}
    eps = (ep for dist in metadata.distributions() for ep in dist.entry_points if ep.group == ENTRY_POINT_GROUP)
    for ep in eps:
        other = found.setdefault(ep.name, ep)
        if other.value != ep.value:
            both = " and ".join(sorted(f"{e.value} ({_dist(e)})" for e in (other, ep)))
            raise DataError(f"dataset reader {ep.name!r} is registered twice (entry-point group {ENTRY_POINT_GROUP}): "
                            f"{both}")
    return found


def _dist(ep: metadata.EntryPoint) -> str:
    return ep.dist.name if ep.dist is not None else "unknown distribution"


def get_reader(fmt: str) -> Reader:
    """The reader registered as `fmt`, with the registered names in the error when there is none."""
    known = readers()
    if fmt not in known:
        hint = "" if known else (" (no reader is registered at all: install the package, e.g. `pip install -e .`, "
                                 "so that its entry points exist)")
        raise DataError(f"data.format: unknown dataset format {fmt!r}; expected one of {sorted(known)}{hint}")
    reader = known[fmt].load()
    if not callable(reader):
        raise DataError(f"data.format: reader {fmt!r} ({known[fmt].value}) is not callable")
    return reader


def reader_file(fmt: str) -> Path:
    """The source file of the reader `fmt` (a plugin's code is part of what its cached examples depend on)."""
    return Path(inspect.getfile(inspect.unwrap(get_reader(fmt)))).resolve()


def load_dataset(fmt: str, root: Path, seed: int, options: Mapping[str, Any] | None = None) -> RecData:
    """Read `root` with the reader named `fmt`, given `seed` (time-tie breaking) and the config's reader options."""
    reader = get_reader(fmt)
    options = dict(options or {})
    try:
        inspect.signature(reader).bind(root, seed=seed, **options)
    except TypeError as err:
        accepted = [p for p in inspect.signature(reader).parameters if p not in ("root", "seed")]
        raise DataError(f"data.reader_options: reader {fmt!r} does not take {sorted(options)} ({err}); its options: "
                        f"{accepted}") from None
    if not root.is_dir():
        raise DataError(f"data.root: dataset folder {root} does not exist")
    return reader(root, seed=seed, **options)
