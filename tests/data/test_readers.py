"""Generic readers (RecBole atomic files, CSV/Parquet tables with a column mapping), readers registered through
entry points, and how `data.format` and the reader options reach the data module and its cache key."""

from __future__ import annotations

import json
import re
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys_lightning.data import adapters
from recsys_lightning.data.adapters import load_dataset, readers
from recsys_lightning.data.indexing import build_index
from recsys_lightning.data.schema import DataError, RecData
from recsys_lightning.data.textualize import describe_item, describe_user
from recsys_lightning.pipeline.datamodule import DEMO_ROOT, RecDataModule
from tests.conftest import REPO, SHARED_DATA

tomllib = pytest.importorskip("tomllib")
COLUMNS = {"user": "uid", "item": "iid", "rating": "stars", "timestamp": "ts", "review": "text", "summary": "title"}


@pytest.fixture(scope="module")
def demo() -> RecData:
    return load_dataset("amazon_reviews", DEMO_ROOT, 0)


def demo_rows(demo: RecData) -> list[dict]:
    """The demo's interactions as table rows, in a shuffled order (a reader must not rely on the file's order)."""
    order = np.random.default_rng(0).permutation(len(demo.item))
    return [{"uid": demo.users[demo.user[i]], "iid": demo.items[demo.item[i]], "stars": float(demo.rating[i]),
             "ts": int(demo.timestamp[i]), "text": demo.review[i], "title": demo.summary[i]} for i in order]


def same_interactions(a: RecData, b: RecData) -> None:
    assert a.users == b.users and a.items == b.items
    for column in ("user", "item", "timestamp", "rating", "offsets"):
        np.testing.assert_array_equal(getattr(a, column), getattr(b, column))
    assert a.review == b.review and a.summary == b.summary


def test_a_parquet_table_of_the_demo_reads_as_the_amazon_reader_does(demo, tmp_path):
    pq.write_table(pa.Table.from_pylist(demo_rows(demo)), tmp_path / "reviews.parquet")
    data = load_dataset("table", tmp_path, 0, {"interactions": "reviews.parquet", "columns": COLUMNS})
    same_interactions(data, demo)
    assert data.name == tmp_path.name


def test_a_csv_table_with_iso_dates_and_an_item_table_gives_features_and_descriptions(demo, tmp_path):
    rows = demo_rows(demo)[:300]
    lines = ["uid,iid,stars,ts"] + [f"{r['uid']},{r['iid']},{r['stars']},{_iso(r['ts'])}" for r in rows]
    (tmp_path / "ratings.csv").write_text("\n".join(lines) + "\n")
    items = sorted({r["iid"] for r in rows})
    (tmp_path / "items.tsv").write_text("asin\tname\ttags\n" + "".join(
        f"{asin}\tProduct {i}\t{'strings|picks' if i % 2 else ''}\n" for i, asin in enumerate(items + ["UNRATED"])))
    options = {"interactions": "ratings.csv", "columns": {k: COLUMNS[k] for k in ("user", "item", "rating", "timestamp")},
               "items": {"file": "items.tsv", "columns": {"item": "asin", "title": "name", "tags": "tags"},
                         "lists": {"tags": "|"}}}
    data = load_dataset("table", tmp_path, 0, options)
    assert data.num_items == len(items) and data.num_users == len({r["uid"] for r in rows})
    times = {(r["uid"], r["iid"]): r["ts"] for r in rows}  # dates at midnight UTC are the unix days as written
    assert all(times[data.users[u], data.items[i]] == t for u, i, t in zip(data.user, data.item, data.timestamp))
    assert data.item_features["tags"][items.index(items[1])] == ["strings", "picks"]
    index = build_index("sequential", data, 0)
    first = index.render(0)
    text = describe_item(data, index, 0).text
    assert text.startswith(f"item {first} titled Product ") and describe_user(data, 0).text == "user_1"
    assert ", tags: strings, picks." in describe_item(data, index, data.items.index(items[1])).text


def _iso(ts: int) -> str:
    import datetime as dt
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d")


def write_atomic(path: Path, header: list[str], rows: list[list[str]]) -> None:
    path.write_text("\t".join(header) + "\n" + "".join("\t".join(r) + "\n" for r in rows))


def test_recbole_atomic_files_give_typed_features_and_fractional_times_keep_their_order(tmp_path):
    write_atomic(tmp_path / "toy.inter", ["user_id:token", "item_id:token", "rating:float", "timestamp:float"],
                 [["a", "x", "4", "10.5"], ["a", "y", "", "10.25"], ["b", "x", "2", "3"], ["a", "z", "5", "11"]])
    write_atomic(tmp_path / "toy.item", ["item_id:token", "movie_title:token_seq", "class:token_seq", "price:float"],
                 [["x", "Toy Story", "Animation Comedy", "9.5"], ["y", "Heat", "", ""], ["z", "Up", "Family", "3"],
                  ["w", "Never Rated", "Drama", "1"]])
    write_atomic(tmp_path / "toy.user", ["user_id:token", "age:float", "occupation:token"], [["a", "24", "writer"]])
    data = load_dataset("recbole", tmp_path, 0)
    assert (data.name, data.users, data.items) == ("toy", ["a", "b"], ["x", "y", "z"])
    assert [data.items[i] for i in data.sequence(0)] == ["y", "x", "z"]  # 10.25 < 10.5 < 11
    assert np.isnan(data.rating[0]) and data.rating[1:3].tolist() == [4.0, 5.0]
    assert data.item_features["movie_title"] == ["Toy Story", "Heat", "Up"]  # a title-like token_seq is text
    assert data.item_features["class"] == [["Animation", "Comedy"], None, ["Family"]]
    assert data.item_features["price"] == [9.5, None, 3.0] and data.user_features["age"] == [24.0, None]
    index = build_index("sequential", data, 0)
    text = describe_item(data, index, data.items.index("x")).text
    assert text.endswith("titled Toy Story, class: Animation, Comedy, price: 9.5.")
    assert describe_user(data, 0).text == "user_1, age: 24.0, occupation: writer."


ML = SHARED_DATA / "ml-100k"


@pytest.mark.skipif(not ML.is_dir(), reason="shared data absent")
def test_movielens_as_recbole_atomic_files_reads_as_the_movielens_reader_does(tmp_path):
    ml = load_dataset("movielens", ML, 0)
    inter = [line.split("\t") for line in (ML / "u.data").read_text().splitlines()]
    write_atomic(tmp_path / "ml-100k.inter", ["user_id:token", "item_id:token", "rating:float", "timestamp:float"],
                 inter)
    items = [line.split("|") for line in (ML / "u.item").read_bytes().decode("latin-1").splitlines()]
    write_atomic(tmp_path / "ml-100k.item", ["item_id:token", "movie_title:token_seq", "release_year:token"],
                 [[cells[0], cells[1], cells[2][-4:]] for cells in items])
    data = load_dataset("recbole", tmp_path, 0)
    same_interactions(data, ml)
    assert data.item_features["movie_title"][0] == "Toy Story (1995)" and data.item_features["release_year"][0] == "1995"


def test_unknown_format_lists_every_registered_reader(tmp_path):
    with pytest.raises(DataError, match=r"data.format: unknown dataset format 'xlsx'; expected one of "
                                        r"\['amazon_reviews', 'movielens', 'recbole', 'restaurant', 's3rec', 'table'"):
        load_dataset("xlsx", tmp_path, 0)


def test_the_installed_entry_points_are_the_readers_pyproject_registers():
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]
    declared = declared[adapters.ENTRY_POINT_GROUP]
    assert {name: ep.value for name, ep in readers().items() if name in declared} == declared
    assert {"amazon_reviews", "s3rec", "movielens", "restaurant", "recbole", "table"} <= set(declared)


PLUGIN = textwrap.dedent('''
    from recsys_lightning.data.schema import RecData

    def read_pairs(root, seed=0, separator=","):
        """`user<sep>item` lines, in time order."""
        pairs = [line.split(separator) for line in (root / "pairs.txt").read_text().splitlines()]
        return RecData.build("pairs", [u for u, _ in pairs], [i for _, i in pairs], list(range(len(pairs))),
                             seed=seed, source=str(root / "pairs.txt"))
''')


@pytest.fixture
def plugin_reader(tmp_path, monkeypatch) -> Path:
    """A reader `pairs` registered by a fake installed distribution (a `*.dist-info` with entry_points.txt)."""
    site = tmp_path / "site"
    (site / "pairs_reader-0.1.dist-info").mkdir(parents=True)
    (site / "pairs_reader.py").write_text(PLUGIN)
    (site / "pairs_reader-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: pairs-reader\n"
                                                                   "Version: 0.1\n")
    (site / "pairs_reader-0.1.dist-info" / "entry_points.txt").write_text(
        f"[{adapters.ENTRY_POINT_GROUP}]\npairs = pairs_reader:read_pairs\n")
    monkeypatch.syspath_prepend(str(site))
    yield site
    sys.modules.pop("pairs_reader", None)


def test_a_reader_registered_by_another_distribution_reads_with_its_options(plugin_reader, tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (root / "pairs.txt").write_text("u1;a\nu1;b\nu2;a\n")
    assert readers()["pairs"].dist.name == "pairs-reader"
    data = load_dataset("pairs", root, 0, {"separator": ";"})
    assert (data.users, data.items, data.sequence(0).tolist()) == (["u1", "u2"], ["a", "b"], [0, 1])
    with pytest.raises(DataError, match=r"data.reader_options: reader 'pairs' does not take \['sep'\] .*its options: "
                                        r"\['separator'\]"):
        load_dataset("pairs", root, 0, {"sep": ";"})


def test_one_name_registered_twice_is_named(plugin_reader):
    dist = plugin_reader / "pairs_reader-0.1.dist-info" / "entry_points.txt"
    dist.write_text(dist.read_text() + "table = pairs_reader:read_pairs\n")
    with pytest.raises(DataError, match=r"dataset reader 'table' is registered twice .*: pairs_reader:read_pairs "
                                        r"\(pairs-reader\) and recsys_lightning.data.adapters.table:read_table "
                                        r"\(recsys-lightning\)"):
        readers()


def cache_folder(root: Path, cache: Path, fmt: str, options: dict | None) -> Path:
    module = RecDataModule(root=str(root), format=fmt, reader_options=options, cache_dir=str(cache), vocab_size=300)
    module.load()
    return module.cache.folder


def test_the_cache_key_holds_the_format_its_options_and_a_plugin_readers_code(plugin_reader, demo, tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (root / "pairs.txt").write_text("".join(f"u{u};i{(u * 7 + k) % 13}\n" for u in range(8) for k in range(6)))
    cache = tmp_path / "cache"
    first = cache_folder(root, cache, "pairs", {"separator": ";"})
    assert cache_folder(root, cache, "pairs", {"separator": ";"}) == first
    (plugin_reader / "pairs_reader.py").write_text(PLUGIN + "\n# the reader changed\n")
    assert cache_folder(root, cache, "pairs", {"separator": ";"}) != first
    rows = [f"{r['uid']},{r['iid']}" for r in demo_rows(demo)[:200]]
    (root / "ratings.csv").write_text("u,i\n" + "\n".join(rows) + "\n")
    by_table = [cache_folder(root, cache, "table", {"interactions": "ratings.csv", "columns": {"user": "u", "item": c}})
                for c in ("i", "u")]  # another column mapping: another dataset, another key
    assert len({first, *by_table}) == 3


# --- bad input: one error naming the file and line (or the option) and what was expected ----------------------------
def csv(tmp_path: Path, text: str) -> Path:
    (tmp_path / "ratings.csv").write_text(textwrap.dedent(text))
    return tmp_path


TABLE = {"interactions": "ratings.csv", "columns": {"user": "uid", "item": "iid", "rating": "stars"}}
BAD_TABLES = [
    ("uid,iid\nu,i\n", TABLE, r"ratings.csv:1: header lacks columns \['stars'\]; found \['uid', 'iid'\]"),
    ("uid,iid,stars\nu,i,5\nu,j,five\n", TABLE,
     r"ratings.csv:3: column 'stars' \(rating\): expected a number, got 'five'"),
    ("uid,iid,stars\nu,,5\n", TABLE, r"ratings.csv:2: column 'iid' \(item id\): expected a string or integer id"),
    ("uid,iid\nu,i\n", {"columns": {"user": "uid", "item": "iid", "stars": "x"}},
     r"data.reader_options.columns: unknown role\(s\) \['stars'\]; expected some of \['user', 'item', 'rating'"),
    ("uid,iid\nu,i\n", {"interactions": "ratings.csv", "columns": {"user": "uid"}},
     r"data.reader_options.columns: name the item column\(s\)"),
    ("uid,iid,ts\nu,i,yesterday\n", {"interactions": "ratings.csv", "columns": {"user": "uid", "item": "iid",
                                                                               "timestamp": "ts"}},
     r"ratings.csv:2: column 'ts' \(timestamp\): expected a number or an ISO 8601 date, got 'yesterday'"),
    ("uid,iid\nu,i\n", {"interactions": "ratings.xlsx", "columns": {"user": "uid", "item": "iid"}},
     r"data.reader_options.columns: ratings.xlsx: expected a .csv, .tsv or .parquet file"),
    ("uid,iid\nu,i\n", {**TABLE, "columns": {"user": "uid", "item": "iid"}, "items": {"file": "items.csv"}},
     r"data.reader_options.items.columns: name the item id column"),
]


@pytest.mark.parametrize("text,options,message", BAD_TABLES)
def test_bad_tables_are_refused_with_the_file_line_or_option(tmp_path, text, options, message):
    with pytest.raises(DataError, match=message):
        load_dataset("table", csv(tmp_path, text), 0, options)


def test_a_parquet_file_without_a_mapped_column_is_named(tmp_path):
    pq.write_table(pa.table({"uid": ["u"], "iid": ["i"]}), tmp_path / "r.parquet")
    with pytest.raises(DataError, match=r"r.parquet: no column\(s\) \['stars'\] \(asked for by "
                                        r"data.reader_options.columns\); found \['uid', 'iid'\]"):
        load_dataset("table", tmp_path, 0, {**TABLE, "interactions": "r.parquet"})
    pq.write_table(pa.table({"uid": ["u"], "iid": ["i"], "stars": ["five"]}), tmp_path / "r.parquet")
    with pytest.raises(DataError, match=r"r.parquet: row 1: column 'stars' \(rating\): expected a number"):
        load_dataset("table", tmp_path, 0, {**TABLE, "interactions": "r.parquet"})


BAD_ATOMIC = [
    (["user_id:token", "item_id:token", "rating:double"], [["u", "i", "5"]],
     r"toy.inter:1: field 'rating': unknown type 'double'; expected one of token, token_seq, float, float_seq"),
    (["user_id:token", "item_id:token", "rating:float"], [["u", "i", "5"], ["u", "j", "high"]],
     r"toy.inter:3: field 'rating' \(float\): expected a number, got 'high'"),
    (["user_id:token", "item_id", "rating:float"], [["u", "i", "5"]],
     r"toy.inter:1: header field 'item_id': expected name:type"),
    (["user:token", "item_id:token"], [["u", "i"]], r"toy.inter:1: expected the fields 'user_id' and 'item_id'"),
    (["user_id:token", "item_id:token", "timestamp:token"], [["u", "i", "5"]],
     r"toy.inter:1: field 'timestamp' \(time_field\) is a token; expected float"),
    (["user_id:token", "item_id:token"], [["u", "i", "x"]], r"toy.inter:2: expected 2 tab-separated fields"),
]


@pytest.mark.parametrize("header,rows,message", BAD_ATOMIC)
def test_bad_atomic_files_are_refused_with_the_file_and_line(tmp_path, header, rows, message):
    write_atomic(tmp_path / "toy.inter", header, rows)
    with pytest.raises(DataError, match=message):
        load_dataset("recbole", tmp_path, 0)


def test_an_unknown_reader_option_lists_the_readers_options(tmp_path):
    write_atomic(tmp_path / "toy.inter", ["user_id:token", "item_id:token"], [["u", "i"]])
    with pytest.raises(DataError, match=re.escape("data.reader_options: reader 'recbole' does not take ['user']")):
        load_dataset("recbole", tmp_path, 0, {"user": "uid"})


def test_prepare_reads_a_table_through_the_command_line(demo, tmp_path, capsys):
    from recsys_lightning.cli import main

    rows = [r for r in demo_rows(demo) if r["uid"] in demo.users[:40]]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "reviews.parquet")
    options = {"interactions": "reviews.parquet", "columns": {k: COLUMNS[k] for k in ("user", "item", "timestamp")}}
    main(["prepare", "--config", str(REPO / "lightning_configs" / "demo.yaml"), "--data.root", str(tmp_path),
          "--data.format", "table", "--data.reader_options", json.dumps(options), "--data.tasks",
          '[{"name": "sequential"}]', "--data.vocab_size", "300", "--data.cache_dir", str(tmp_path / "cache")])
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (stats["users"], stats["items"]) == (40, len({r["iid"] for r in rows}))
    assert stats["interactions"] == len(rows) and stats["examples"]["sequential"]["test-seen-item"] == 40
