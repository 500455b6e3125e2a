import gzip
import json

import numpy as np
import pytest

from recsys_lightning.data.adapters import load_dataset
from recsys_lightning.pipeline.datamodule import DEMO_ROOT
from recsys_lightning.data.schema import DataError
from tests.conftest import SHARED_DATA


def test_demo_data_matches_the_published_musical_instruments_statistics():
    data = load_dataset("amazon_reviews", DEMO_ROOT, seed=0)
    assert (data.num_users, data.num_items, len(data.item)) == (1429, 900, 10261)
    assert np.all(np.diff(data.offsets) >= 5)  # 5-core
    for u in range(0, data.num_users, 97):  # time order within each user
        rows = data.interactions_of(u)
        assert np.all(np.diff(data.timestamp[rows.start:rows.stop]) >= 0)


@pytest.mark.skipif(not (SHARED_DATA / "amazon_musical_instruments_5core").is_dir(), reason="shared data absent")
def test_the_raw_upstream_file_reads_unchanged():
    data = load_dataset("amazon_reviews", SHARED_DATA / "amazon_musical_instruments_5core", seed=0)
    assert (data.num_users, data.num_items, len(data.item)) == (1429, 900, 10261)
    assert sorted(np.unique(data.rating).tolist()) == [1.0, 2.0, 3.0, 4.0, 5.0]


def write(tmp_path, lines):
    tmp_path.mkdir(parents=True, exist_ok=True)
    with gzip.open(tmp_path / "reviews_Bad_5.json.gz", "wt") as f:
        f.write("\n".join(lines) + "\n")
    return tmp_path


GOOD = json.dumps({"reviewerID": "u", "asin": "i", "overall": 4.0, "unixReviewTime": 1})


def test_malformed_line_names_file_and_line(tmp_path):
    with pytest.raises(DataError, match=r"reviews_Bad_5.json.gz:2: not a JSON object"):
        load_dataset("amazon_reviews", write(tmp_path, [GOOD, "{broken"]), 0)


def test_missing_key_names_the_key(tmp_path):
    bad = json.dumps({"reviewerID": "u", "asin": "i", "unixReviewTime": 1})
    with pytest.raises(DataError, match=r":1: key 'overall' missing"):
        load_dataset("amazon_reviews", write(tmp_path, [bad]), 0)


def test_missing_folder_and_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("amazon_reviews", tmp_path / "nope", 0)
    with pytest.raises(DataError, match="expected exactly one reviews_"):
        load_dataset("amazon_reviews", tmp_path, 0)
    with pytest.raises(DataError, match="unknown dataset format"):
        load_dataset("csv", tmp_path, 0)


def test_empty_dataset(tmp_path):
    with pytest.raises(DataError, match="no interactions"):
        load_dataset("amazon_reviews", write(tmp_path, [""]), 0)


def write_meta(root, lines):
    with gzip.open(root / "meta_Tiny.json.gz", "wt") as f:
        f.write("\n".join(lines) + "\n")


def test_meta_file_adds_titles_brands_categories_and_prices(tiny_reviews, tmp_path):
    import shutil

    root = tmp_path / "tiny"
    shutil.copytree(tiny_reviews, root)
    asins = sorted({json.loads(line)["asin"] for line in gzip.open(root / "reviews_Tiny_5.json.gz", "rt")})
    write_meta(root, [
        repr({"asin": asins[0], "title": "Fender Picks &amp; Strings", "brand": "Fender", "price": 7.5,
              "categories": [["Musical Instruments", "Instrument Accessories"], ["Musical Instruments", "Picks"]]}),
        json.dumps({"asin": asins[1], "title": "A Tuner"}),
        repr({"asin": "B0NOTREVIEWED", "title": "never reviewed"}),
        "{'asin': 'B0NOTREVIEWED2', broken",
    ])
    data = load_dataset("amazon_reviews", root, 0)
    first = data.items.index(asins[0])
    assert data.item_features["title"][first] == "Fender Picks & Strings"
    assert data.item_features["categories"][first] == ["Musical Instruments", "Instrument Accessories", "Picks"]
    assert data.item_features["price"][first] == "7.50" and data.item_features["brand"][first] == "Fender"
    assert data.item_features["title"][data.items.index(asins[1])] == "A Tuner"
    assert data.item_features["title"][data.items.index(asins[2])] is None

    from recsys_lightning.data.indexing import build_index
    from recsys_lightning.data.textualize import describe_item

    text = describe_item(data, build_index("sequential", data, 0), first).text
    assert text.endswith(" is Fender Picks & Strings by Fender, in Musical Instruments, Instrument Accessories, "
                         "Picks, priced at $7.50")
    write_meta(root, [json.dumps({"asin": asins[1], "title": "ok"}), "{'asin': '%s', 'title': broken" % asins[0]])
    with pytest.raises(DataError, match=r"meta_Tiny.json.gz:2: expected a JSON or python-literal object"):
        load_dataset("amazon_reviews", root, 0)


@pytest.mark.skipif(not (SHARED_DATA / "amazon_musical_instruments_5core").is_dir(), reason="shared data absent")
def test_a_broken_copy_of_the_raw_file_names_the_line(tmp_path):
    source = SHARED_DATA / "amazon_musical_instruments_5core" / "reviews_Musical_Instruments_5.json.gz"
    lines = gzip.open(source, "rt").read().splitlines()
    row = json.loads(lines[4999])
    del row["unixReviewTime"]
    lines[4999] = json.dumps(row)
    tmp_path.mkdir(exist_ok=True)
    with gzip.open(tmp_path / source.name, "wt") as f:
        f.write("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"reviews_Musical_Instruments_5.json.gz:5000: key 'unixReviewTime' missing"):
        load_dataset("amazon_reviews", tmp_path, 0)
