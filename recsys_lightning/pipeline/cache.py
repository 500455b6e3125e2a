"""On-disk cache of built examples: Arrow datasets (`datasets.save_to_disk`) and the locally trained tokenizer
in one folder per key, the key hashing the data files and every config value that changes the rows.

Writes are atomic: each entry is built in a temporary folder and renamed into place, so a failed or
interrupted build leaves existing entries untouched. Builds hold a lock (`<folder>.lock` beside the key folder, an
OS file lock that a killed process releases): of two processes (`prepare`s, fits) wanting the same entry, one
builds it and the other waits, then reads it. Every write happens under that lock, so a `.tmp-*` entry found while
holding it was left by a killed build and is removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from datasets import Dataset
from filelock import FileLock, Timeout
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerBase

from recsys_lightning.infilling.tokenizer import tokenizer_identity, wrap_tokenizer

PACKAGE = Path(__file__).resolve().parent.parent
# Source files whose code shapes the rows: the dataset side, the pipeline, the blank-infilling format, prompt
# rendering and the family base.
CODE = ("data/**/*.py", "pipeline/**/*.py", "infilling/**/*.py", "prompts.py", "family.py")


def _sha(chunks: Iterable[bytes]) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(hashlib.sha256(chunk).digest())
    return digest.hexdigest()


def files_hash(paths: Iterable[Path]) -> str:
    """Content hash of files (their names included)."""
    return _sha(p.name.encode() + b"\0" + p.read_bytes() for p in paths)


def code_hash() -> str:
    """Hash of the package sources that build examples, so a code change never serves stale rows."""
    return files_hash(sorted(p for pattern in CODE for p in PACKAGE.glob(pattern)))


def data_fingerprint(root: Path) -> list[list[Any]]:
    """[relative path, size, mtime_ns] of every file under the dataset folder."""
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return [[str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def tokenizer_hash(tokenizer: PreTrainedTokenizerBase) -> str:
    """Identity of a tokenizer: its serialized form when fast, else its class, name and vocabulary."""
    if getattr(tokenizer, "backend_tokenizer", None) is not None:
        return _sha([tokenizer_identity(tokenizer).encode()])
    vocab = sorted(tokenizer.get_vocab().items())
    return _sha([type(tokenizer).__name__.encode(), str(tokenizer.name_or_path).encode(), repr(vocab).encode()])


def key_hash(key: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


class ExampleCache:
    """One key folder: `key.json` (what the key hashes), `tokenizer.json`, and Arrow datasets by name."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._lock = FileLock(str(folder.parent / f"{folder.name}.lock"))

    @contextmanager
    def building(self) -> Iterator[None]:
        """Hold the folder's build lock (waiting, with a note on stderr, while another process builds), after
        removing what killed builds left behind."""
        try:
            self._lock.acquire(timeout=1)
        except Timeout:
            print(f"recsys-lightning: waiting for another process building {self.folder} ...", file=sys.stderr,
                  flush=True)
            self._lock.acquire()
        try:
            self.clean_stale()
            yield
        finally:
            self._lock.release()

    def clean_stale(self) -> list[Path]:
        """Remove `.tmp-*` entries: called with the lock held, when no build can be writing them."""
        stale = sorted(self.folder.glob(".tmp-*")) if self.folder.is_dir() else []
        for path in stale:
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        return stale

    @classmethod
    def open(cls, cache_dir: str | Path, name: str, key: Mapping[str, Any]) -> ExampleCache:
        """The folder `<cache_dir>/<name>-<hash of key>`, created with its `key.json` when new."""
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        cache = cls(Path(cache_dir) / f"{safe}-{key_hash(key)[:16]}")
        cache.folder.mkdir(parents=True, exist_ok=True)
        if any(cache.folder.glob(".tmp-*")):  # a killed build's leftovers, unless a build is running now
            try:
                cache._lock.acquire(timeout=0)
            except Timeout:
                pass
            else:
                try:
                    cache.clean_stale()
                finally:
                    cache._lock.release()
        if not (cache.folder / "key.json").is_file():
            with cache.building():
                if not (cache.folder / "key.json").is_file():
                    cache._publish(cache.folder / "key.json",
                                   lambda tmp: tmp.write_text(json.dumps(key, indent=1, sort_keys=True, default=str)))
        return cache

    def _publish(self, target: Path, write: Callable[[Path], None]) -> None:
        """Write into a fresh temporary path, then rename it to `target`; an entry already there wins."""
        tmp = self.folder / f".tmp-{target.name}-{uuid.uuid4().hex}"
        try:
            write(tmp)
            try:
                os.rename(tmp, target)
            except OSError:
                if not target.exists():
                    raise
        finally:
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            elif tmp.exists():
                tmp.unlink()

    def dataset(self, name: str, build: Callable[[], Dataset]) -> Dataset:
        """The cached dataset `name` (a relative path), built and saved first when absent."""
        path = self.folder / name
        if not path.is_dir():
            with self.building():
                if not path.is_dir():  # built by another process while this one waited
                    built = build()
                    path.parent.mkdir(parents=True, exist_ok=True)
                    self._publish(path, lambda tmp: built.save_to_disk(str(tmp)))
        return Dataset.load_from_disk(str(path))

    def json_value(self, name: str, build: Callable[[], Any]) -> Any:
        """The cached JSON value `name` (semantic item codes, say), built and saved first when absent."""
        path = self.folder / name
        if not path.is_file():
            with self.building():
                if not path.is_file():
                    built = build()
                    self._publish(path, lambda tmp: tmp.write_text(json.dumps(built)))
        return json.loads(path.read_text())

    def tokenizer(self, build: Callable[[], PreTrainedTokenizerBase]) -> PreTrainedTokenizerBase:
        """The cached locally trained tokenizer, trained and saved first when absent."""
        path = self.folder / "tokenizer.json"
        if not path.is_file():
            with self.building():
                if not path.is_file():
                    built = build()
                    self._publish(path, lambda tmp: tmp.write_text(built.backend_tokenizer.to_str()))
        return wrap_tokenizer(Tokenizer.from_file(str(path)))
