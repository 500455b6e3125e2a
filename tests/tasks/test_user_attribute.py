"""The example plugin family end to end on a MovieLens slice: users' occupations from the movies they rated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recsys_lightning.pipeline.datamodule import RecDataModule, TaskSpec
from tests.conftest import SHARED_DATA

ML = SHARED_DATA / "ml-100k"
pytestmark = pytest.mark.skipif(not ML.is_dir(), reason="shared MovieLens data absent")


@pytest.fixture(scope="module")
def movielens_slice(tmp_path_factory) -> Path:
    """The first 60 users of MovieLens-100k with all their ratings, in the original file formats."""
    root = tmp_path_factory.mktemp("ml")
    users = {line.split("|")[0] for line in (ML / "u.user").read_text(encoding="latin-1").splitlines()[:60]}
    (root / "u.user").write_text("\n".join(l for l in (ML / "u.user").read_text(encoding="latin-1").splitlines()
                                           if l.split("|")[0] in users) + "\n", encoding="latin-1")
    (root / "u.data").write_text("\n".join(l for l in (ML / "u.data").read_text().splitlines()
                                           if l.split("\t")[0] in users) + "\n")
    for name in ("u.item", "u.genre"):
        (root / name).write_bytes((ML / name).read_bytes())
    return root


def test_user_attribute_requests_split_users_and_decode_over_the_values(movielens_slice):
    dm = RecDataModule(tasks=[TaskSpec("user_attribute", options={"attribute": "gender"})], root=str(movielens_slice),
                       format="movielens", vocab_size=600, max_length=256, cache_dir=None)
    dm.setup("fit")
    family = dm.families[0]
    assert family.values.texts == ["female", "male"]
    train_users = {r["user_id"] for r in dm._train[0]}
    val_users = {r["user_id"] for r in dm._eval["val"][0]}
    assert train_users and val_users and not train_users & val_users  # users never cross splits
    row = dm._train[0][0]
    assert row["text"].count("[MASK]") == 1 and row["target"] in ("female", "male")


def test_unknown_or_non_categorical_attributes_fail_at_setup(movielens_slice):
    for attribute, message in (("shoe_size", "has no user feature 'shoe_size'"), ("zip", "distinct values")):
        dm = RecDataModule(tasks=[TaskSpec("user_attribute", options={"attribute": attribute})],
                           root=str(movielens_slice), format="movielens", vocab_size=600, cache_dir=None)
        with pytest.raises(ValueError, match=message):
            dm.setup("fit")


def test_user_attribute_trains_and_reports_accuracy_through_the_cli(movielens_slice, tmp_path):
    from tests.test_cli import run

    tasks = json.dumps([{"name": "user_attribute", "options": {"attribute": "gender"}}])
    args = ["--data.format", "movielens", "--data.tasks", tasks, "--checkpoint.monitor", "val/user_attribute/accuracy"]
    run("fit", tmp_path, movielens_slice, *args)
    out = run("test", tmp_path, movielens_slice, *args[:4], "--ckpt_path", str(tmp_path / "ckpt" / "last.ckpt"))
    metrics = json.loads((out / "results.json").read_text())["metrics"]["user_attribute"]
    assert 0.0 <= metrics["accuracy"] <= 1.0 and 0.0 <= metrics["unseen/accuracy"] <= 1.0
