"""The one place task families are registered: `@register_task(name)`, discovery of `tasks/*.py` and entry points."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
from importlib import metadata
from pathlib import Path
from typing import Callable, Iterable, TypeVar

from recsys_lightning.builtin import builtin_dir
from recsys_lightning.family import TaskFamily

ENTRY_POINT_GROUP = "recsys_lightning.tasks"
BUILTIN_PACKAGE = "recsys_lightning.builtin_tasks"
TASK_DIRS_ENV = "RECSYS_LIGHTNING_TASK_DIRS"

T = TypeVar("T", bound=type[TaskFamily])
_REGISTRY: dict[str, type[TaskFamily]] = {}
_LOADED_FILES: set[Path] = set()
_LOADED_ENTRY_POINTS = False


class RegistryError(ValueError):
    """A task family that is unknown, registered twice or not a TaskFamily."""


def register_task(name: str) -> Callable[[T], T]:
    """Class decorator: register a TaskFamily subclass under `name`; a second family of that name is rejected."""

    def wrap(cls: T) -> T:
        if not (isinstance(cls, type) and issubclass(cls, TaskFamily)):
            raise RegistryError(f"@register_task({name!r}) needs a TaskFamily subclass, got {cls!r}")
        source = inspect.getfile(cls)
        existing = _REGISTRY.get(name)
        if existing is not None and Path(existing.source).resolve() != Path(source).resolve():
            raise RegistryError(f"task family {name!r} is registered twice: {existing.source} and {source}")
        cls.name, cls.source = name, source
        _REGISTRY[name] = cls
        return cls

    return wrap


def _import_file(path: Path, builtin: bool) -> None:
    """Import a task file; built-in ones under `recsys_lightning.builtin_tasks`, so plugins can subclass them."""
    path = path.resolve()
    if path in _LOADED_FILES:
        return
    _LOADED_FILES.add(path)
    try:
        if builtin:
            importlib.import_module(f"{BUILTIN_PACKAGE}.{path.stem}")
            return
        module_name = f"recsys_lightning_plugins.{hashlib.sha1(str(path.parent).encode()).hexdigest()[:8]}.{path.stem}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise RegistryError(f"cannot import task file {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    except Exception:
        _LOADED_FILES.discard(path)
        raise


def task_dirs(extra: Iterable[str | os.PathLike] = ()) -> list[Path]:
    """Built-in `tasks/`, then folders from $RECSYS_LIGHTNING_TASK_DIRS, then `extra` (a config's `task_dirs`)."""
    env = [p for p in os.environ.get(TASK_DIRS_ENV, "").split(os.pathsep) if p]
    return [builtin_dir("tasks"), *(Path(p) for p in env), *(Path(p) for p in extra)]


def discover(extra_dirs: Iterable[str | os.PathLike] = ()) -> dict[str, type[TaskFamily]]:
    """Import every `.py` file of the task folders and every entry point of the group; return the registry."""
    global _LOADED_ENTRY_POINTS
    builtin = builtin_dir("tasks").resolve()
    for folder in task_dirs(extra_dirs):
        if not folder.is_dir():
            raise RegistryError(f"task folder {folder} does not exist")
        for path in sorted(folder.glob("*.py")):
            if not path.name.startswith("_"):
                _import_file(path, builtin=folder.resolve() == builtin)
    if not _LOADED_ENTRY_POINTS:
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            ep.load()
        _LOADED_ENTRY_POINTS = True
    return dict(_REGISTRY)


def get_task(name: str) -> type[TaskFamily]:
    """The registered family `name`, with the known names in the error when it is missing."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise RegistryError(f"unknown task family {name!r}; registered: {sorted(_REGISTRY)}") from None
