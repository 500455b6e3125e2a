"""The MovieLens-100k adapter on the GroupLens files and on broken copies of them."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from recsys_lightning.data.adapters import load_dataset
from recsys_lightning.data.indexing import build_index
from recsys_lightning.data.schema import DataError
from recsys_lightning.data.textualize import describe_item, describe_user
from tests.conftest import SHARED_DATA

ROOT = SHARED_DATA / "ml-100k"
pytestmark = pytest.mark.skipif(not ROOT.is_dir(), reason="shared data absent")


@pytest.fixture(scope="module")
def ml():
    return load_dataset("movielens", ROOT, 0)


def test_statistics_ratings_and_time_order(ml):
    assert (ml.num_users, ml.num_items, len(ml.item)) == (943, 1682, 100000)
    assert np.bincount(ml.rating.astype(int))[1:].tolist() == [6110, 11370, 27145, 34174, 21201]
    for user in range(0, ml.num_users, 101):
        rows = ml.interactions_of(user)
        assert np.all(np.diff(ml.timestamp[rows.start:rows.stop]) >= 0)


def test_tabular_features_become_fluent_text_with_entities(ml):
    user = ml.users.index("1")
    text, entities = describe_user(ml, user)
    assert text == "user_1 is a 24-year-old male technician living in zip code 85711."
    assert [text[s:e] for s, e, _ in entities] == ["user_1", "24", "male", "technician", "85711"]
    assert describe_user(ml, ml.users.index("2")).text == "user_2 is a 53-year-old female living in zip code 94043."
    item = ml.items.index("1")
    text, entities = describe_item(ml, build_index("sequential", ml, 0), item)
    assert text.endswith(" is a movie titled Toy Story (1995) from 1995 in the genres Animation, Children's, Comedy.")
    assert {(text[s:e], kind) for s, e, kind in entities} >= {("Toy Story (1995)", "title"), ("Comedy", "genres")}
    titled = describe_item(ml, build_index("title", ml, 0), item)  # the title is the item id: not said twice
    assert titled.text == "item Toy Story (1995) is a movie from 1995 in the genres Animation, Children's, Comedy."
    assert titled.entities[0] == (5, 5 + len("Toy Story (1995)"), "item")


def copy(tmp_path: Path) -> Path:
    dst = tmp_path / "ml"
    shutil.copytree(ROOT, dst)
    for path in dst.iterdir():
        path.chmod(0o644)
    return dst


def append(path: Path, line: str) -> int:
    text = path.read_text(encoding="latin-1").rstrip("\n") + "\n" + line + "\n"
    path.write_text(text, encoding="latin-1")
    return text.count("\n")


def test_malformed_rating_line(tmp_path):
    root = copy(tmp_path)
    n = append(root / "u.data", "196\t242\tthree\t881250949")
    with pytest.raises(DataError, match=rf"u.data:{n}: expected `user<TAB>item<TAB>rating<TAB>timestamp`"):
        load_dataset("movielens", root, 0)


def test_bad_user_row_and_unknown_user(tmp_path):
    root = copy(tmp_path)
    n = append(root / "u.user", "944|33|X|writer|12345")
    with pytest.raises(DataError, match=rf"u.user:{n}: expected an integer age and gender M or F"):
        load_dataset("movielens", root, 0)
    shutil.copy(ROOT / "u.user", root / "u.user")
    (root / "u.user").chmod(0o644)
    append(root / "u.data", "944\t1\t3\t881250949")
    with pytest.raises(DataError, match=r"u.data: id '944' has no row in u.user"):
        load_dataset("movielens", root, 0)


def test_short_item_row_and_missing_file(tmp_path):
    root = copy(tmp_path)
    n = append(root / "u.item", "1683|A Movie (1999)|01-Jan-1999")
    with pytest.raises(DataError, match=rf"u.item:{n}: expected 24 '\|'-separated fields"):
        load_dataset("movielens", root, 0)
    (root / "u.item").unlink()
    with pytest.raises(DataError, match="missing u.item"):
        load_dataset("movielens", root, 0)
