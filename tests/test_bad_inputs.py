"""Bad inputs, table-driven: each one is refused with ONE line that names the file and line (or the config key)
and what was expected, before any work, and nothing that existed before (data, cache, checkpoints) changes.

Tiny corrupted copies of the real formats are built in tmp_path from the bundled demo data and slices of the shared
datasets (read-only, never edited). Reader cases call the adapters directly; setting, checkpoint and plugin cases go
through the CLI entry point in-process (`main([...])`), which must print `recsys-lightning: error: <one line>` and
exit with status 2.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from recsys_lightning.data.adapters import load_dataset
from recsys_lightning.data.schema import DataError

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"
DEMO_REVIEWS = REPO / "recsys_lightning" / "data" / "demo" / "reviews_Musical_Instruments_5.json.gz"


# --- tiny copies of each format ---------------------------------------------------------------------------------
def head(src: Path, dst: Path, n: int) -> list[str]:
    """The first `n` lines of `src` written to `dst` (bytes as they are); returns them without line ends."""
    with src.open("rb") as f:
        raw = [next(f) for _ in range(n)]
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(b"".join(raw))
    return [r.decode("latin-1").rstrip("\n") for r in raw]


def s3rec(tmp: Path) -> Path:
    """Beauty's first 40 users, with the attribute map of their items."""
    root = tmp / "beauty"
    rows = head(SHARED / "beauty" / "Beauty.txt", root / "Beauty.txt", 40)
    items = {t for row in rows for t in row.split()[1:]}
    table = json.loads((SHARED / "beauty" / "Beauty_item2attributes.json").read_text())
    (root / "Beauty_item2attributes.json").write_text(json.dumps({k: v for k, v in table.items() if k in items}))
    return root


def movielens(tmp: Path) -> Path:
    root = tmp / "ml"
    root.mkdir()
    head(SHARED / "ml-100k" / "u.data", root / "u.data", 300)
    for name in ("u.user", "u.item", "u.genre"):
        shutil.copyfile(SHARED / "ml-100k" / name, root / name)
    return root


def restaurant(tmp: Path) -> Path:
    root = tmp / "restaurant"
    head(SHARED / "uci_restaurant_consumer" / "rating_final.csv", root / "rating_final.csv", 60)
    return root


def amazon(tmp: Path, n: int = 200) -> Path:
    """The demo dump's first `n` reviews, re-compressed."""
    root = tmp / "amazon"
    root.mkdir()
    with gzip.open(DEMO_REVIEWS, "rb") as f:
        rows = [next(f) for _ in range(n)]
    with gzip.open(root / "reviews_Tiny_5.json.gz", "wb") as f:
        f.write(b"".join(rows))
    return root


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")[:-1]


def set_line(path: Path, lineno: int, text: bytes) -> None:
    rows = lines_of(path)
    rows[lineno - 1] = text
    path.write_bytes(b"\n".join(rows) + b"\n")


def append(path: Path, text: bytes, newline: bool = True) -> int:
    """Add a line; returns its number."""
    path.write_bytes(path.read_bytes() + text + (b"\n" if newline else b""))
    return len(lines_of(path)) + (0 if newline else 1)


def gz_rows(root: Path) -> list[bytes]:
    with gzip.open(root / "reviews_Tiny_5.json.gz", "rb") as f:
        return f.read().split(b"\n")[:-1]


def write_gz(root: Path, rows: list[bytes], end: bytes = b"\n") -> None:
    with gzip.open(root / "reviews_Tiny_5.json.gz", "wb") as f:
        f.write(b"\n".join(rows) + end)


# --- reader cases: (format, dataset builder, corruption returning the expected message pattern) ------------------
@dataclass(frozen=True)
class ReaderCase:
    id: str
    fmt: str
    make: Callable[[Path], Path]
    corrupt: Callable[[Path], str]  # edits the copy; returns a regex the error must match


def _cut_last_line(root: Path) -> str:
    path = root / "Beauty.txt"
    data = path.read_bytes()
    path.write_bytes(data + b"41 10607 10")  # a user's line cut mid-token: item 10 would be its test target
    n = len(lines_of(path)) + 1
    return rf"Beauty.txt:{n}: the last line does not end with a line break: the file looks truncated"


def _superscript(root: Path) -> str:
    set_line(root / "Beauty.txt", 3, "3 4 12 1095\u00b2 14".encode())
    return r"Beauty.txt:3: expected `user item item ...` with integer ids \(ASCII digits\), found '1095²' " \
           r"\(character U\+00B2 SUPERSCRIPT TWO\)"


def _nel_utf8(root: Path) -> str:
    set_line(root / "Beauty.txt", 5, "5 4 12\u008513 14".encode())  # NEL must neither split the line nor the token
    return r"Beauty.txt:5: .*found '12\\x8513' \(character U\+0085"


def _nel_byte(root: Path) -> str:
    set_line(root / "Beauty.txt", 6, b"6 4 12\x8513 14")  # a bare 0x85 byte (NEL in Latin-1)
    return r"Beauty.txt:6: .*found '12\\x8513' \(character U\+0085"


def _line_separator(root: Path) -> str:
    set_line(root / "Beauty.txt", 7, "7 4 12\u2028 13 14".encode())
    return r"Beauty.txt:7: .*U\+2028 LINE SEPARATOR"


def _negative(root: Path) -> str:
    set_line(root / "Beauty.txt", 8, b"8 4 -12 13")
    return r"Beauty.txt:8: .*found '-12'"


def _user_only(root: Path) -> str:
    set_line(root / "Beauty.txt", 9, b"9")
    return r"Beauty.txt:9: .*got only a user id"


def _user_twice(root: Path) -> str:
    n = append(root / "Beauty.txt", b"3 4 5")
    return rf"Beauty.txt:{n}: user 3 already has a line"


def _empty_sequences(root: Path) -> str:
    (root / "Beauty.txt").write_bytes(b"")
    return r"Beauty.txt: no `user item item ...` lines; the dataset is empty"


def _no_sequence_file(root: Path) -> str:
    (root / "Beauty.txt").unlink()
    return r"beauty: expected one <Name>.txt sequence file"


def _no_attributes_two_sequences(root: Path) -> str:
    (root / "Beauty_item2attributes.json").unlink()  # which .txt is the dataset is then ambiguous
    shutil.copyfile(root / "Beauty.txt", root / "Beauty_old.txt")
    return r"beauty: expected one <Name>.txt sequence file .*found \['Beauty.txt', 'Beauty_old.txt'\]"


def _attributes_truncated(root: Path) -> str:
    path = root / "Beauty_item2attributes.json"
    path.write_bytes(path.read_bytes()[:-7])
    return r"Beauty_item2attributes.json:1: not valid JSON"


def _attributes_unknown_item(root: Path) -> str:
    path = root / "Beauty_item2attributes.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "99999": [1]}))
    return r"Beauty_item2attributes.json: item id '99999' is not in the sequence file"


def _ml_columns(root: Path) -> str:
    set_line(root / "u.data", 4, b"196\t242\t3")
    return r"u.data:4: expected `user<TAB>item<TAB>rating<TAB>timestamp` integers, found 3 fields"


def _ml_rating(root: Path) -> str:
    set_line(root / "u.data", 7, b"196\t242\t3.5\t881250949")
    return r"u.data:7: .*found '3.5'"


def _ml_rating_range(root: Path) -> str:
    set_line(root / "u.data", 8, b"196\t242\t9\t881250949")
    return r"u.data:8: expected a rating from 1 to 5, got 9"


def _ml_cut(root: Path) -> str:
    n = append(root / "u.data", b"196\t242\t3\t8812", newline=False)  # the timestamp cut: still four integers
    return rf"u.data:{n}: the last line does not end with a line break"


def _ml_superscript_user(root: Path) -> str:
    set_line(root / "u.data", 2, "1\u00b9\t242\t3\t881250949".encode())
    return r"u.data:2: .*SUPERSCRIPT ONE"


def _ml_missing_user_table(root: Path) -> str:
    (root / "u.user").unlink()
    return r"ml: missing u.user"


def _ml_unknown_user(root: Path) -> str:
    append(root / "u.data", b"944\t242\t3\t881250949")
    return r"u.data: id '944' has no row in u.user"


def _ml_user_row(root: Path) -> str:
    set_line(root / "u.user", 10, b"10|old|M|lawyer|90703")
    return r"u.user:10: expected an integer age and gender M or F, got 'old'"


def _csv_rating(root: Path) -> str:
    set_line(root / "rating_final.csv", 5, b"U1077,135085,x,2,2")
    return r"rating_final.csv:5: expected userID, placeID and a rating 0, 1 or 2"


def _csv_columns(root: Path) -> str:
    set_line(root / "rating_final.csv", 3, b"U1077,135085")
    return r"rating_final.csv:3: expected 5 separated cells"


def _csv_header_twice(root: Path) -> str:
    set_line(root / "rating_final.csv", 2, b"userID,placeID,rating,food_rating,service_rating")
    return r"rating_final.csv:2: the header line appears again"


def _csv_column_twice(root: Path) -> str:
    set_line(root / "rating_final.csv", 1, b"userID,placeID,rating,rating,service_rating")
    return r"rating_final.csv:1: column 'rating' appears twice"


def _csv_cut(root: Path) -> str:
    n = append(root / "rating_final.csv", b"U1077,135085,2,2", newline=False)
    return rf"rating_final.csv:{n}: the last line does not end with a line break"


def _csv_place_superscript(root: Path) -> str:
    set_line(root / "rating_final.csv", 4, "U1077,13508\u2075,2,2,2".encode())
    return r"rating_final.csv:4: expected an integer placeID, got '13508⁵' \(character U\+2075 SUPERSCRIPT FIVE\)"


def _csv_missing(root: Path) -> str:
    (root / "rating_final.csv").unlink()
    return r"restaurant: missing rating_final.csv"


def _gz_truncated(root: Path) -> str:
    path = root / "reviews_Tiny_5.json.gz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return r"reviews_Tiny_5.json.gz:\d+: the gzip stream is truncated or corrupt \(EOFError"


def _gz_not_gzip(root: Path) -> str:
    path = root / "reviews_Tiny_5.json.gz"
    path.write_bytes(b'{"reviewerID": "A1"}\n')
    return r"reviews_Tiny_5.json.gz:1: the gzip stream is truncated or corrupt \(BadGzipFile"


def _gz_corrupt(root: Path) -> str:
    path = root / "reviews_Tiny_5.json.gz"
    data = bytearray(path.read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = bytes(64)  # zeroed deflate block
    path.write_bytes(bytes(data))
    return r"reviews_Tiny_5.json.gz:\d+: the gzip stream is truncated or corrupt"


def _not_utf8(root: Path) -> str:
    rows = gz_rows(root)
    rows[11] = rows[11].replace(b"reviewText\": \"", b"reviewText\": \"caf\xe9 ")  # Latin-1 e-acute
    write_gz(root, rows)
    return r"reviews_Tiny_5.json.gz:12: not UTF-8 text \(byte 0xe9 at column \d+\)"


def _json_line(root: Path) -> str:
    rows = gz_rows(root)
    rows[20] = rows[20][:-5]
    write_gz(root, rows)
    return r"reviews_Tiny_5.json.gz:21: not a JSON object"


def _json_cut_last(root: Path) -> str:
    rows = gz_rows(root)
    write_gz(root, [*rows[:-1], rows[-1][:40]], end=b"")
    return rf"reviews_Tiny_5.json.gz:{len(rows)}: the last line does not end with a line break"


def _json_rating(root: Path) -> str:
    rows = gz_rows(root)
    row = json.loads(rows[30])
    rows[30] = json.dumps({**row, "overall": True}).encode()
    write_gz(root, rows)
    return r"reviews_Tiny_5.json.gz:31: key 'overall' missing or not"


def _json_array(root: Path) -> str:
    rows = gz_rows(root)
    rows[2] = b"[1, 2]"
    write_gz(root, rows)
    return r"reviews_Tiny_5.json.gz:3: expected a JSON object, got list"


def _empty_dump(root: Path) -> str:
    write_gz(root, [], end=b"")
    return r"reviews_Tiny_5.json.gz: the dataset has no interactions"


def _two_dumps(root: Path) -> str:
    shutil.copyfile(root / "reviews_Tiny_5.json.gz", root / "reviews_Other_5.json.gz")
    return r"amazon: expected exactly one reviews_<Category>_5.json\(.gz\) file, found 2"


def _missing_root(root: Path) -> str:
    shutil.rmtree(root)
    return r"data.root: dataset folder .*amazon does not exist"


READER_CASES = [
    ReaderCase("s3rec-cut-last-line", "s3rec", s3rec, _cut_last_line),
    ReaderCase("s3rec-superscript-digit", "s3rec", s3rec, _superscript),
    ReaderCase("s3rec-NEL-character", "s3rec", s3rec, _nel_utf8),
    ReaderCase("s3rec-NEL-byte", "s3rec", s3rec, _nel_byte),
    ReaderCase("s3rec-line-separator", "s3rec", s3rec, _line_separator),
    ReaderCase("s3rec-negative-id", "s3rec", s3rec, _negative),
    ReaderCase("s3rec-user-without-items", "s3rec", s3rec, _user_only),
    ReaderCase("s3rec-user-twice", "s3rec", s3rec, _user_twice),
    ReaderCase("s3rec-empty-file", "s3rec", s3rec, _empty_sequences),
    ReaderCase("s3rec-missing-file", "s3rec", s3rec, _no_sequence_file),
    ReaderCase("s3rec-missing-item2attributes", "s3rec", s3rec, _no_attributes_two_sequences),
    ReaderCase("s3rec-truncated-item2attributes", "s3rec", s3rec, _attributes_truncated),
    ReaderCase("s3rec-unknown-item-in-attributes", "s3rec", s3rec, _attributes_unknown_item),
    ReaderCase("movielens-wrong-column-count", "movielens", movielens, _ml_columns),
    ReaderCase("movielens-non-integer-rating", "movielens", movielens, _ml_rating),
    ReaderCase("movielens-rating-out-of-range", "movielens", movielens, _ml_rating_range),
    ReaderCase("movielens-cut-last-line", "movielens", movielens, _ml_cut),
    ReaderCase("movielens-superscript-user", "movielens", movielens, _ml_superscript_user),
    ReaderCase("movielens-missing-u.user", "movielens", movielens, _ml_missing_user_table),
    ReaderCase("movielens-unknown-user", "movielens", movielens, _ml_unknown_user),
    ReaderCase("movielens-bad-user-row", "movielens", movielens, _ml_user_row),
    ReaderCase("csv-non-integer-rating", "restaurant", restaurant, _csv_rating),
    ReaderCase("csv-wrong-column-count", "restaurant", restaurant, _csv_columns),
    ReaderCase("csv-duplicate-header-line", "restaurant", restaurant, _csv_header_twice),
    ReaderCase("csv-duplicate-header-column", "restaurant", restaurant, _csv_column_twice),
    ReaderCase("csv-cut-last-line", "restaurant", restaurant, _csv_cut),
    ReaderCase("csv-superscript-id", "restaurant", restaurant, _csv_place_superscript),
    ReaderCase("csv-missing-file", "restaurant", restaurant, _csv_missing),
    ReaderCase("gzip-truncated", "amazon_reviews", amazon, _gz_truncated),
    ReaderCase("gzip-not-gzip", "amazon_reviews", amazon, _gz_not_gzip),
    ReaderCase("gzip-corrupt-block", "amazon_reviews", amazon, _gz_corrupt),
    ReaderCase("reviews-not-utf8", "amazon_reviews", amazon, _not_utf8),
    ReaderCase("reviews-malformed-json-line", "amazon_reviews", amazon, _json_line),
    ReaderCase("reviews-cut-last-line", "amazon_reviews", amazon, _json_cut_last),
    ReaderCase("reviews-boolean-rating", "amazon_reviews", amazon, _json_rating),
    ReaderCase("reviews-not-an-object", "amazon_reviews", amazon, _json_array),
    ReaderCase("reviews-empty-file", "amazon_reviews", amazon, _empty_dump),
    ReaderCase("reviews-two-dumps", "amazon_reviews", amazon, _two_dumps),
    ReaderCase("missing-data-root", "amazon_reviews", amazon, _missing_root),
]


def snapshot(folder: Path) -> dict[str, str]:
    """{relative path: content hash} of every file under `folder`."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_one_line(message: str) -> None:
    assert message and "\n" not in message.strip() and "Traceback" not in message, message


@pytest.mark.parametrize("case", READER_CASES, ids=lambda c: c.id)
def test_a_bad_data_file_is_refused_with_its_file_and_line(case: ReaderCase, tmp_path):
    root = case.make(tmp_path)
    load_dataset(case.fmt, root, 0)  # the copy itself is good
    pattern = case.corrupt(root)
    before = snapshot(tmp_path)
    with pytest.raises(DataError) as err:
        load_dataset(case.fmt, root, 0)
    assert_one_line(str(err.value))
    assert re.search(pattern, str(err.value)), (pattern, str(err.value))
    assert snapshot(tmp_path) == before


def test_line_breaks_inside_a_line_are_data_not_line_ends(tmp_path):
    """NEL and U+2028 inside a review's text (JSON allows them raw) keep the line whole and the numbering right."""
    root = amazon(tmp_path, n=20)
    rows = gz_rows(root)
    row = json.loads(rows[3])
    rows[3] = json.dumps({**row, "reviewText": "one\u0085two\u2028three"}, ensure_ascii=False).encode()
    rows[9] = rows[9][:-3]
    write_gz(root, rows)
    with pytest.raises(DataError, match=r"reviews_Tiny_5.json.gz:10: not a JSON object"):
        load_dataset("amazon_reviews", root, 0)
    write_gz(root, [*rows[:9], *rows[10:]])
    data = load_dataset("amazon_reviews", root, 0)
    assert "one\u0085two\u2028three" in data.review and len(data.item) == 19
