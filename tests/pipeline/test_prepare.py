"""`recsys-lightning prepare`: builds the cache from a training config and prints statistics as its last line."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from recsys_lightning.cli import main
from recsys_lightning.builtin import builtin_dir
from tests.conftest import SHARED_DATA

CONFIGS = builtin_dir("lightning_configs")


def prepare(capsys, config: str, root: Path, cache: Path, *extra: str) -> dict:
    main(["prepare", "--config", str(CONFIGS / config), "--data.root", str(root), "--data.cache_dir", str(cache),
          *extra])
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_prepare_reads_a_training_config_and_prints_stats_last(tiny_reviews, tmp_path, capsys):
    stats = prepare(capsys, "demo.yaml", tiny_reviews, tmp_path)  # trainer/model/checkpoint sections are ignored
    assert stats["users"] == 40 and stats["items"] > 0 and stats["interactions"] > 200
    counts = stats["examples"]["sequential"]
    assert set(counts) == {"train", "val-seen-item", "val-unseen-item", "test-seen-item", "test-unseen-item"}
    assert counts["test-seen-item"] == 40
    assert set(stats["examples"]) == {"sequential", "direct", "rating", "explanation", "review"}
    assert set(stats["train_tokens_mean"]) == set(stats["examples"])
    cache = Path(stats["cache"])
    built = {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()}
    again = prepare(capsys, "demo.yaml", tiny_reviews, tmp_path)
    assert again["cache"] == stats["cache"] and again["examples"] == stats["examples"]
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()} == built  # nothing rebuilt


def test_prepare_stops_on_bad_input_naming_file_and_line(tiny_reviews, tmp_path, capsys):
    good = prepare(capsys, "demo.yaml", tiny_reviews, tmp_path / "cache")
    cached = sorted(p for p in (tmp_path / "cache").rglob("*"))
    broken = tmp_path / "broken"
    shutil.copytree(tiny_reviews, broken)
    path = next(broken.glob("*.gz"))
    lines = gzip.open(path, "rt").read().splitlines()
    with gzip.open(path, "wt") as f:
        f.write("\n".join([*lines[:3], '{"reviewerID": "u", "asin"', *lines[3:]]) + "\n")
    with pytest.raises(SystemExit) as stop:
        prepare(capsys, "demo.yaml", broken, tmp_path / "cache")
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and "\n" not in err
    assert err.startswith("recsys-lightning: error: ") and "reviews_Tiny_5.json.gz:4: not a JSON object" in err
    assert sorted(p for p in (tmp_path / "cache").rglob("*")) == cached and good["users"] == 40


RESTAURANT = SHARED_DATA / "uci_restaurant_consumer"


@pytest.mark.skipif(not RESTAURANT.is_dir(), reason="shared data absent")
def test_prepare_restaurant_config(tmp_path, capsys):
    stats = prepare(capsys, "restaurant.yaml", RESTAURANT, tmp_path)
    assert (stats["users"], stats["items"], stats["interactions"]) == (138, 130, 1161)
    assert stats["examples"]["sequential"]["test-seen-item"] == 138
    assert set(stats["examples"]) == {"sequential", "direct", "rating", "user_attribute"}


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "beauty").is_dir(), reason="shared data absent")
def test_prepare_beauty_config(tmp_path, capsys):
    stats = prepare(capsys, "beauty.yaml", SHARED_DATA / "beauty", tmp_path)
    assert (stats["users"], stats["items"], stats["interactions"]) == (22363, 12101, 198502)
    assert stats["examples"]["sequential"] == {"train": 198502 - 3 * 22363, "val-seen-item": 22363,
                                               "val-unseen-item": 22363, "test-seen-item": 22363,
                                               "test-unseen-item": 22363}
    assert stats["examples"]["direct"]["test-seen-item"] == 1000  # the recipe's seeded evaluation subset
