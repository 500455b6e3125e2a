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


# --- settings and checkpoints, checked before any work ----------------------------------------------------------
def fake_checkpoint(path: Path, **extra) -> Path:
    """A checkpoint file as `fit` writes one, without weights: enough for every check made before examples."""
    import torch

    torch.save({"hyper_parameters": {"beam_size": 10}, "state_dict": {}, **extra}, path)
    return path


@pytest.mark.parametrize("damage", ["truncated", "not-a-zip", "empty", "a-list"])
def test_a_damaged_checkpoint_is_named(damage, tmp_path):
    from recsys_lightning.errors import CheckpointError, read_checkpoint

    path = fake_checkpoint(tmp_path / "best.ckpt", dataset={"dataset": "Tiny_5"})
    good = path.read_bytes()
    damaged = {"truncated": good[: len(good) // 2], "not-a-zip": b"not a checkpoint", "empty": b""}.get(damage)
    if damaged is None:
        import torch

        torch.save([1, 2], path)
    else:
        path.write_bytes(damaged)
    before = path.read_bytes()
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    assert_one_line(str(err.value))
    assert str(path) in str(err.value) and path.read_bytes() == before
    assert re.search(r"not a (readable|training) checkpoint", str(err.value))


# --- the CLI: one line, exit status 2, before any work ----------------------------------------------------------
CONFIG = REPO / "lightning_configs" / "demo.yaml"
TINY = ["--model.backbone.init_args.hidden_size", "32", "--model.backbone.init_args.num_layers", "1",
        "--model.backbone.init_args.num_attention_heads", "2", "--data.vocab_size", "300",
        "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.enable_progress_bar", "false",
        "--data.tasks", '[{"name": "sequential"}]', "--checkpoint.monitor", "val/sequential/ndcg@10"]
TOKENIZER_CORPUS = ["user item bought next " + " ".join(map(str, range(50)))] * 10


@dataclass(frozen=True)
class CliCase:
    id: str
    args: Callable[[Path, Path], list[str]]  # (tmp_path, data root) -> argv
    pattern: str


def _run_args(sub: str, *extra: str) -> Callable[[Path, Path], list[str]]:
    def make(tmp: Path, root: Path) -> list[str]:
        ckpt = ["--checkpoint.dirpath", str(tmp / "ckpt")] if sub == "fit" else []
        words = [w.replace("{tmp}", str(tmp)) for w in extra]
        return [sub, "--config", str(CONFIG), *TINY, "--data.root", str(root), "--data.cache_dir", str(tmp / "cache"),
                "--trainer.default_root_dir", str(tmp / "runs"), *ckpt, *words]
    return make


def _prepare_args(*extra: str) -> Callable[[Path, Path], list[str]]:
    def make(tmp: Path, root: Path) -> list[str]:
        words = [w.replace("{tmp}", str(tmp)).replace("{root}", str(root)) for w in extra]
        return ["prepare", "--config", str(CONFIG), "--data.root", str(root), "--data.cache_dir", str(tmp / "cache"),
                "--data.tasks", '[{"name": "sequential"}]', *words]
    return make


def _plain(*extra: str) -> Callable[[Path, Path], list[str]]:
    return lambda tmp, root: [w.replace("{tmp}", str(tmp)) for w in extra]


CLI_CASES = [
    CliCase("fit-unknown-task", _run_args("fit", "--data.tasks", '[{"name": "sequentail"}]'), r"sequentail"),
    CliCase("fit-bad-weight", _run_args("fit", "--data.tasks", '[{"name": "sequential", "weight": -1}]'),
            r"weight must be > 0, got -1"),
    CliCase("fit-bad-option", _run_args("fit", "--data.tasks", '[{"name": "sequential", "options": {"colour": 1}}]'),
            r"data.tasks\[0\] \(sequential\): bad options"),
    CliCase("fit-bad-template", _run_args("fit", "--data.tasks",
                                          '[{"name": "sequential", "prompts": "{tmp}/bad_prompts.yaml"}]'),
            r"bad_prompts.yaml"),
    CliCase("fit-beam-size-0", _run_args("fit", "--model.beam_size", "0"), r"model.beam_size must be at least 1, got 0"),
    CliCase("fit-max-length-past-positions", _run_args("fit", "--data.max_length", "5000", "--data.pack_length", "6000"),
            r"data.max_length \(5000\) exceeds the 640 positions of model.backbone"),
    CliCase("fit-placeholder-checkpoint", _run_args("fit", "--config", str(CONFIG.parent / "backbones" / "glm_10b.yaml")),
            r"model.backbone.checkpoint '/path/to/glm-10b': no such folder"),
    CliCase("fit-max-length-past-block-positions",
            _run_args("fit", "--config", str(CONFIG.parent / "backbones" / "llama_tiny.yaml"), "--trainer.precision",
                      "32", "--model.backbone.init_args.max_block_positions", "64", "--data.max_length", "128"),
            r"data.max_length \(128\) allows blanks longer than the 64 block positions of model.backbone "
            r"\(HFCausalLM\); set model.backbone.init_args.max_block_positions to at least 127"),
    CliCase("fit-label-smoothing", _run_args("fit", "--model.label_smoothing", "1.5"), r"model.label_smoothing"),
    CliCase("fit-missing-data-root", _run_args("fit", "--data.root", "{tmp}/nowhere"),
            r"data.root: dataset folder .*nowhere does not exist"),
    CliCase("fit-missing-resume-checkpoint", _run_args("fit", "--ckpt_path", "{tmp}/gone.ckpt"),
            r"--ckpt_path .*gone.ckpt: no such checkpoint file"),
    CliCase("test-mismatched-checkpoint", _run_args("test", "--ckpt_path", "{tmp}/beauty.ckpt"),
            r"--ckpt_path .*beauty.ckpt was trained on other data \(dataset 'Beauty', format 's3rec', items 12101"),
    CliCase("validate-mismatched-checkpoint", _run_args("validate", "--ckpt_path", "{tmp}/beauty.ckpt"),
            r"beauty.ckpt was trained on other data"),
    CliCase("test-truncated-checkpoint", _run_args("test", "--ckpt_path", "{tmp}/truncated.ckpt"),
            r"truncated.ckpt: not a readable checkpoint, truncated or corrupt"),
    CliCase("predict-corrupt-checkpoint", _run_args("predict", "--ckpt_path", "{tmp}/corrupt.ckpt"),
            r"corrupt.ckpt: not a readable checkpoint"),
    CliCase("test-missing-checkpoint", _run_args("test", "--ckpt_path", "{tmp}/gone.ckpt"),
            r"gone.ckpt: no such checkpoint file"),
    CliCase("prepare-truncated-gzip", _prepare_args("--data.root", "{tmp}/truncated_gz"),
            r"reviews_Tiny_5.json.gz:\d+: the gzip stream is truncated or corrupt"),
    CliCase("prepare-unknown-format", _prepare_args("--data.format", "parquet"),
            r"data.format: unknown dataset format 'parquet'"),
    CliCase("prepare-unknown-task", _prepare_args("--data.tasks", '[{"name": "nope"}]'), r"'nope'"),
    CliCase("prepare-beam-size-0", _prepare_args("--model.beam_size", "0"), r"model.beam_size must be at least 1"),
    CliCase("tasks-missing-task-dir", _plain("tasks", "--task_dirs", "{tmp}/no_such_dir"), r"no_such_dir"),
    CliCase("export-truncated-checkpoint", _plain("export", "--ckpt_path", "{tmp}/truncated.ckpt", "--out",
                                                  "{tmp}/exported"), r"truncated.ckpt: not a readable checkpoint"),
    CliCase("export-missing-checkpoint", _plain("export", "--ckpt_path", "{tmp}/gone.ckpt", "--out", "{tmp}/exported"),
            r"gone.ckpt"),
]


@pytest.fixture(scope="module")
def cli_world(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny review folder, its truncated copy, bad prompts, fake/damaged checkpoints, an existing cache entry."""
    import torch

    from recsys_lightning.infilling.tokenizer import tokenizer_identity, train_tokenizer

    tmp = tmp_path_factory.mktemp("cli")
    root = amazon(tmp, n=300)
    broken = tmp / "truncated_gz"
    shutil.copytree(root, broken)
    gz = broken / "reviews_Tiny_5.json.gz"
    gz.write_bytes(gz.read_bytes()[:-200])
    (tmp / "bad_prompts.yaml").write_text("templates:\n  - {id: s-1, text: 'Which {colour} next?', target: item}\n")
    tokenizer = tokenizer_identity(train_tokenizer(TOKENIZER_CORPUS, vocab_size=100))
    fake_checkpoint(tmp / "beauty.ckpt", tokenizer=tokenizer,
                    dataset={"dataset": "Beauty", "format": "s3rec", "users": 22363, "items": 12101,
                             "item_index": "sequential", "tokenizer": "0" * 16})
    good = (tmp / "beauty.ckpt").read_bytes()
    (tmp / "truncated.ckpt").write_bytes(good[: len(good) // 2])
    (tmp / "corrupt.ckpt").write_bytes(bytes(len(good)))
    (tmp / "cache" / "Tiny_5-0123456789abcdef").mkdir(parents=True)  # an earlier run's cache entry
    (tmp / "cache" / "Tiny_5-0123456789abcdef" / "key.json").write_text("{}")
    torch.save({"state_dict": {}}, tmp / "cache" / "unrelated.pt")
    return tmp, root


@pytest.mark.parametrize("case", CLI_CASES, ids=lambda c: c.id)
def test_the_cli_refuses_with_one_line_and_status_2(case: CliCase, cli_world, capsys, monkeypatch):
    from recsys_lightning.cli import main

    monkeypatch.delenv("RECSYS_LIGHTNING_DEBUG", raising=False)
    tmp, root = cli_world
    before = snapshot(tmp)
    with pytest.raises(SystemExit) as stop:
        main(case.args(tmp, root))
    err = capsys.readouterr().err
    assert stop.value.code == 2, err
    errors = [line for line in err.splitlines() if "error" in line.lower() or "Traceback" in line]
    assert len(errors) == 1 and errors[0].startswith("recsys-lightning: error: "), err
    assert re.search(case.pattern, errors[0]), (case.pattern, errors[0])
    after = snapshot(tmp)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing existing changed
    assert not [k for k in after if k not in before and ("examples-" in k or k.endswith(".ckpt"))]  # no work done


def test_end_to_end_one_line_and_the_debug_traceback(cli_world):
    """The installed entry point as a user runs it: one line and status 2; RECSYS_LIGHTNING_DEBUG=1 shows the
    traceback of the same error."""
    import os
    import subprocess
    import sys

    tmp, root = cli_world
    argv = [sys.executable, "-m", "recsys_lightning.cli", *_run_args("fit", "--model.beam_size", "0")(tmp, root)]
    env = {k: v for k, v in os.environ.items() if k != "RECSYS_LIGHTNING_DEBUG"}
    plain = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert plain.returncode == 2, plain.stderr
    assert plain.stderr.strip().splitlines()[-1] == "recsys-lightning: error: model.beam_size must be at least 1, got 0"
    assert "Traceback" not in plain.stderr and plain.stdout == ""
    debug = subprocess.run(argv, capture_output=True, text=True, env={**env, "RECSYS_LIGHTNING_DEBUG": "1"}, cwd=REPO,
                           timeout=300)
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1] == "ValueError: model.beam_size must be at least 1, got 0"
