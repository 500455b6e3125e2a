"""The UCI Restaurant & consumer adapter on the archive's CSV files and on broken copies of them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from recsys_lightning.data.adapters import load_dataset
from recsys_lightning.data.indexing import build_index
from recsys_lightning.data.schema import DataError
from recsys_lightning.data.textualize import describe_item, describe_user
from tests.conftest import SHARED_DATA

ROOT = SHARED_DATA / "uci_restaurant_consumer"
pytestmark = pytest.mark.skipif(not ROOT.is_dir(), reason="shared data absent")


@pytest.fixture(scope="module")
def data():
    return load_dataset("restaurant", ROOT, 0)


def test_statistics_and_missing_values(data):
    assert (data.num_users, data.num_items, len(data.item)) == (138, 130, 1161)
    assert sorted(set(data.rating.tolist())) == [0.0, 1.0, 2.0]
    kiku = data.items.index("134999")  # geoplaces2: fax, zip are `?`; `No_Alcohol_Served`
    assert data.item_features["title"][kiku] == "Kiku Cuernavaca"
    assert data.item_features["alcohol"][kiku] == "No Alcohol Served"
    assert data.item_features["city"][data.items.index("132825")] == "s.l.p."
    missing = sum(v is None for v in data.user_features["smoker"])
    assert missing == 3  # userprofile.csv writes 3 unknown smokers as `?`


def test_users_and_restaurants_become_text_with_entities(data):
    text, entities = describe_user(data, data.users.index("U1001"))
    assert text.startswith("user_1 was born in 1989, is single, is a student, has a medium budget")
    assert text.endswith("likes American food, pays with cash.")
    assert ("American", "cuisines") in {(text[s:e], kind) for s, e, kind in entities}
    described = describe_item(data, build_index("sequential", data, 0), data.items.index("132583"))
    assert described.text.startswith("item ") and " is a restaurant named McDonalds Centro in Cuernavaca, " \
        "serving American food, low price, " in described.text
    assert described.text.endswith("accepts cash, VISA, MasterCard-Eurocard, bank debit cards.")


def copy(tmp_path: Path) -> Path:
    dst = tmp_path / "restaurant"
    shutil.copytree(ROOT, dst)
    for path in dst.iterdir():
        path.chmod(0o644)
    return dst


def test_bad_rating_and_short_row(tmp_path):
    root = copy(tmp_path)
    path = root / "rating_final.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([*lines[:4], "U1077,135085,3,2,2", *lines[4:]]) + "\n")
    with pytest.raises(DataError, match=r"rating_final.csv:5: expected userID, placeID and a rating 0, 1 or 2"):
        load_dataset("restaurant", root, 0)
    path.write_text("\n".join([*lines[:2], "U1077,135085", *lines[2:]]) + "\n")
    with pytest.raises(DataError, match=r"rating_final.csv:3: expected 5 separated cells"):
        load_dataset("restaurant", root, 0)


def test_profile_of_a_user_who_never_rated(tmp_path):
    root = copy(tmp_path)
    path = root / "userprofile.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([*lines, lines[1].replace("U1001", "U9999")]) + "\n")
    with pytest.raises(DataError, match=rf"userprofile.csv:{len(lines) + 1}: userID 'U9999' has no rating"):
        load_dataset("restaurant", root, 0)


def test_missing_ratings_file_and_empty_one(tmp_path):
    root = copy(tmp_path)
    (root / "rating_final.csv").write_text("userID,placeID,rating,food_rating,service_rating\n")
    with pytest.raises(DataError, match="no interactions"):
        load_dataset("restaurant", root, 0)
    (root / "rating_final.csv").unlink()
    with pytest.raises(DataError, match="missing rating_final.csv"):
        load_dataset("restaurant", root, 0)
