"""The example cache's build lock: concurrent builders of one entry build it once; a killed build's temp entries
are removed when no build holds the lock."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from datasets import Dataset

from recsys_lightning.builtin import builtin_dir
from recsys_lightning.pipeline.cache import ExampleCache


def test_concurrent_builders_build_once_and_both_read_it(tmp_path, capsys):
    builds: list[int] = []

    def build() -> Dataset:
        builds.append(1)
        time.sleep(3)  # longer than the 1 s after which a waiting builder says so
        return Dataset.from_dict({"x": [1, 2, 3]})

    results: list[list[int]] = []

    def worker() -> None:  # each one opens its own cache object, as two processes would
        cache = ExampleCache.open(tmp_path, "Tiny", {"k": 1})
        results.append(cache.dataset("examples/seq/train", build)["x"])

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert builds == [1] and results == [[1, 2, 3], [1, 2, 3]]
    assert "waiting for another process building" in capsys.readouterr().err
    folder = ExampleCache.open(tmp_path, "Tiny", {"k": 1}).folder.name
    assert sorted(p.name for p in tmp_path.iterdir()) == [folder, f"{folder}.lock"]  # the lock file stays, unheld


def test_stale_temp_entries_are_removed_unless_a_build_holds_the_lock(tmp_path):
    cache = ExampleCache.open(tmp_path, "Tiny", {"k": 1})
    stale = cache.folder / ".tmp-train-0123"
    (stale / "data").mkdir(parents=True)
    (cache.folder / ".tmp-tokenizer.json-4567").write_text("{")
    with cache.building():  # a build in progress: its temp entries stay
        ExampleCache.open(tmp_path, "Tiny", {"k": 1})
        (cache.folder / ".tmp-mine").mkdir()
        assert (cache.folder / ".tmp-mine").is_dir()
    assert (cache.folder / ".tmp-mine").is_dir()  # left by that "killed" build
    ExampleCache.open(tmp_path, "Tiny", {"k": 1})  # no build running: every temp entry is stale
    assert not list(cache.folder.glob(".tmp-*")) and (cache.folder / "key.json").is_file()


@pytest.mark.slow
def test_two_concurrent_prepares_build_once(tmp_path, tiny_reviews):
    """Two `recsys-lightning prepare` processes on one cache: one builds, the other waits and reads its entries."""
    config = builtin_dir("lightning_configs") / "demo.yaml"
    argv = [sys.executable, "-m", "recsys_lightning.cli", "prepare", "--config", str(config), "--data.root",
            str(tiny_reviews), "--data.cache_dir", str(tmp_path), "--data.tasks", '[{"name": "sequential"}]']
    runs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [run.communicate(timeout=600) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outs
    stats = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert stats[0]["cache"] == stats[1]["cache"] and stats[0]["examples"] == stats[1]["examples"]
    folder = Path(stats[0]["cache"])
    assert not list(folder.glob(".tmp-*"))
