"""The S3-Rec / P5 adapter on the real Beauty, Toys and Yelp folders and on broken copies of them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from recsys_lightning.data.adapters import load_dataset
from recsys_lightning.data.schema import DataError
from tests.conftest import SHARED_DATA

PUBLISHED = {"beauty": (22363, 12101, 198502), "toys": (19412, 11924, 167597), "yelp": (30431, 20033, 316354)}


def shared(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip("shared data absent")
    return path


@pytest.fixture(scope="module")
def beauty():
    return load_dataset("s3rec", shared("beauty"), 0)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_statistics_are_reproduced(name):
    data = load_dataset("s3rec", shared(name), 0)
    assert (data.num_users, data.num_items, len(data.item)) == PUBLISHED[name]


def test_beauty_raw_ids_titles_attributes_and_p5_numbers(beauty):
    user = beauty.users.index("A1YJEY40YUW4SE")  # datamaps: user 1, line `1 1 2 3 4 5`
    first = beauty.items.index("B004756YJA")  # datamaps: item 1
    assert beauty.sequence(user)[0] == first
    assert beauty.item_features["title"][first] == "OPI Nail Lacquer, Simmer and Shimmer, 0.5-Fluid Ounce"
    assert beauty.item_features["attributes"][first] == ["OPI", "Makeup", "Nails", "Nail Polish"]
    assert beauty.item_features["p5_id"][first] == "1"
    titles = beauty.item_features["title"]
    assert sum(t is None for t in titles) == 7  # the 7 empty titles of the derived table


def test_line_order_is_time_order_whatever_the_seed():
    root = shared("beauty")
    lines = (root / "Beauty.txt").read_text().splitlines()[:50]
    for seed in (0, 1):
        data = load_dataset("s3rec", root, seed)
        p5 = {n: i for i, n in enumerate(data.item_features["p5_id"])}
        maps = json.loads((root / "datamaps.json").read_text())["id2user"]
        for line in lines:
            user, *items = line.split()
            assert data.sequence(data.users.index(maps[user])).tolist() == [p5[i] for i in items]


def test_toys_uses_the_s3rec_numbering_not_the_p5_datamaps():
    data = load_dataset("s3rec", shared("toys"), 0)
    assert data.name == "Toys_and_Games"  # the file with item2attributes, not P5's sequential.txt
    item = data.items.index("B005E7BDXW")  # derived map: S3-Rec item 1 = P5 item 6937
    assert data.item_features["p5_id"][item] == "6937"
    assert data.users[0] == "1"  # the P5 datamaps' user ids belong to sequential.txt, so they are not used
    assert data.item_features["attributes"][item][0].startswith("attribute ")  # Toys has no attribute names


def test_yelp_keeps_repeat_visits_and_names_categories():
    data = load_dataset("s3rec", shared("yelp"), 0)
    seq = data.sequence(data.users.index(json.loads((shared("yelp") / "datamaps.json").read_text())["id2user"]["1"]))
    assert len(seq) == 69 and len(set(seq.tolist())) < len(seq)  # line 1 holds 69 visits
    first = data.items.index("5eV8oUGdBXylwB7HeaDFOA")
    assert data.item_features["title"][first] == "The Great Greek"
    assert data.item_features["categories"][first] == ["Diners", "Greek", "Mediterranean", "Restaurants"]
    assert "attributes" not in data.item_features  # the same categories, already named by the item table


# --- broken copies ----------------------------------------------------------------------------------------------
@pytest.fixture
def copy(tmp_path):
    def make(name: str = "beauty") -> Path:
        dst = tmp_path / name
        shutil.copytree(shared(name), dst)
        for path in dst.rglob("*"):
            path.chmod(0o644 if path.is_file() else 0o755)
        return dst
    return make


def edit_line(path: Path, lineno: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[lineno - 1] = text
    path.write_text("\n".join(lines) + "\n")


def test_any_name_works(copy):
    root = copy()
    (root / "Beauty.txt").rename(root / "Cosmetics.txt")
    (root / "Beauty_item2attributes.json").rename(root / "Cosmetics_item2attributes.json")
    data = load_dataset("s3rec", root, 0)
    assert data.name == "Cosmetics" and (data.num_users, data.num_items, len(data.item)) == PUBLISHED["beauty"]


def test_malformed_sequence_line(copy):
    root = copy()
    edit_line(root / "Beauty.txt", 3, "3 4 twelve 13")
    with pytest.raises(DataError, match=r"Beauty.txt:3: expected `user item item ...` with integer ids"):
        load_dataset("s3rec", root, 0)


def test_unknown_item_in_attribute_map(copy):
    root = copy()
    table = json.loads((root / "Beauty_item2attributes.json").read_text())
    table["99999"] = [1]
    (root / "Beauty_item2attributes.json").write_text(json.dumps(table))
    (root / "derived" / "beauty_items.tsv").unlink()  # so the attribute map is read
    with pytest.raises(DataError, match=r"Beauty_item2attributes.json: item id '99999' is not in the sequence file"):
        load_dataset("s3rec", root, 0)


def test_unknown_item_in_datamaps(copy):
    root = copy()
    maps = json.loads((root / "datamaps.json").read_text())
    maps["id2item"]["12102"] = "B000NOTREAL"
    (root / "datamaps.json").write_text(json.dumps(maps))
    with pytest.raises(DataError, match=r"datamaps.json: id2item names id '12102'"):
        load_dataset("s3rec", root, 0)


def test_item_table_with_a_short_row_and_an_unknown_id(copy):
    root = copy()
    table = root / "derived" / "beauty_items.tsv"
    edit_line(table, 5, "4\t7806397051")
    with pytest.raises(DataError, match=r"beauty_items.tsv:5: expected 4 tab-separated cells"):
        load_dataset("s3rec", root, 0)
    shutil.copy(shared("beauty") / "derived" / "beauty_items.tsv", table)
    table.chmod(0o644)
    edit_line(table, 7, "123456\tB0000\tA title\tMakeup")
    with pytest.raises(DataError, match=r"beauty_items.tsv:7: item id '123456' is not in the sequence file"):
        load_dataset("s3rec", root, 0)


def test_item_table_disagreeing_with_datamaps(copy):
    root = copy()
    edit_line(root / "derived" / "beauty_items.tsv", 2, "1\tB00WRONG00\tOPI Nail Lacquer\tOPI")
    with pytest.raises(DataError, match=r"item 1 is 'B00WRONG00' in the item table but 'B004756YJA'"):
        load_dataset("s3rec", root, 0)


def test_missing_and_empty_sequence_file(copy):
    root = copy()
    (root / "Beauty.txt").write_text("")
    with pytest.raises(DataError, match="Beauty.txt: no `user item item ...` lines"):
        load_dataset("s3rec", root, 0)
    (root / "Beauty.txt").unlink()
    (root / "Beauty_item2attributes.json").unlink()
    with pytest.raises(DataError, match="expected one <Name>.txt sequence file"):
        load_dataset("s3rec", root, 0)


def test_a_bare_sequence_file_is_enough(tmp_path):
    (tmp_path / "Mine.txt").write_text("1 3 1 2\n2 2 3\n")
    data = load_dataset("s3rec", tmp_path, 0)
    assert data.users == ["1", "2"] and data.items == ["1", "2", "3"]
    assert data.sequence(0).tolist() == [2, 0, 1] and data.sequence(1).tolist() == [1, 2]
    assert np.all(np.isnan(data.rating))
