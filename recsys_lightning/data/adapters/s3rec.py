"""S3-Rec / P5 sequence folders: `<Name>.txt` (`user item item ...` in time order) and optional side files.

Files read, whatever `<Name>` is:
- the sequence file: the `<Name>.txt` that has a `<Name>_item2attributes.json` beside it, else the one `.txt`
  whose lines are integer sequences (P5's `sequential.txt` / `sequential_data.txt` count only when no
  other sequence file is there). The files carry no timestamps: the position in the line is the time.
- `<Name>_item2attributes.json` (`{item: [attribute id, ...]}`), with attribute names from
  `derived/*attribute_names.json`, else from `datamaps.json`'s `id2attribute` when its ids are exactly the
  ones used (Yelp; Beauty's datamaps vocabulary is the unfiltered one and is not used), else `attribute <id>`.
- `datamaps.json` (P5): `id2user` / `id2item` give the raw user ids and ASINs / business ids. It is numbered
  like P5's `sequential*.txt`; when such a file is present and differs from the sequence file (Toys),
  the maps belong to another numbering and are not used.
- item tables `derived/*.tsv` (or `*.tsv`) with a header naming `item_id` (or `s3rec_item_id`) and any of
  `asin` / `business_id` (raw id), `p5_item_id` (P5's numbering), `title` / `name`, and `|`-joined list
  columns `attributes` / `categories`; other columns become string features.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from recsys_lightning.data.adapters.files import describe, is_int, lines, read_json, read_text, table_rows
from recsys_lightning.data.schema import DataError, RecData

P5_SEQUENCE_FILES = ("sequential_data.txt", "sequential.txt")
SPACES = re.compile(r"[ \t]+")  # ASCII blanks only: `str.split()` would also split at a NEL or U+2028
ID_COLUMNS = ("item_id", "s3rec_item_id")
RAW_ID_COLUMNS = ("asin", "business_id")
LIST_COLUMNS = ("attributes", "categories")
UNKNOWN_VALUES = frozenset({"Unknown"})  # what S3-Rec writes for a missing brand
TEMPLATES = {
    "user": "{user}",
    "item": "item {item}[ is {title}][, in {categories}][, with attributes {attributes}]",
}


def _is_sequence_file(path: Path) -> bool:
    with path.open("rb") as f:
        first = f.readline().split()
    return len(first) >= 2 and all(token.isdigit() for token in first)


def sequence_file(root: Path) -> Path:
    """The S3-Rec `<Name>.txt` of `root` (see the module docstring for the choice)."""
    texts = sorted(root.glob("*.txt"))
    with_attributes = [p for p in texts if (root / f"{p.stem}_item2attributes.json").is_file()]
    if len(with_attributes) == 1:
        return with_attributes[0]
    sequences = [p for p in texts if _is_sequence_file(p)]
    named = [p for p in sequences if p.name not in P5_SEQUENCE_FILES] or sequences
    if len(named) != 1:
        raise DataError(f"{root}: expected one <Name>.txt sequence file (lines `user item item ...`), "
                        f"found {[p.name for p in named]}")
    return named[0]


def read_sequences(path: Path) -> dict[str, list[str]]:
    """{user number: [item numbers in time order]}; a non-integer token or a repeated user is an error."""
    sequences: dict[str, list[str]] = {}
    for lineno, line in lines(path):
        tokens = SPACES.split(line.strip(" \t"))
        bad = next((t for t in tokens if not is_int(t)), None)
        if bad is not None:
            raise DataError(f"{path}:{lineno}: expected `user item item ...` with integer ids (ASCII digits), found "
                            f"{describe(bad)} in {line[:80]!r}")
        if len(tokens) < 2:
            raise DataError(f"{path}:{lineno}: expected `user item item ...` with integer ids, got only a user id "
                            f"{line[:80]!r}")
        if tokens[0] in sequences:
            raise DataError(f"{path}:{lineno}: user {tokens[0]} already has a line")
        sequences[tokens[0]] = tokens[1:]
    if not sequences:
        raise DataError(f"{path}: no `user item item ...` lines; the dataset is empty")
    return sequences


def _datamaps(root: Path, seq_path: Path) -> dict[str, Any] | None:
    """P5's id maps when they are numbered like `seq_path` (see the module docstring)."""
    path = root / "datamaps.json"
    if not path.is_file():
        return None
    own = read_text(seq_path).replace("\r\n", "\n")
    for name in P5_SEQUENCE_FILES:
        other = root / name
        if other.is_file() and other != seq_path and read_text(other).replace("\r\n", "\n") != own:
            return None
    maps = read_json(path)
    if not isinstance(maps, dict):
        raise DataError(f"{path}: expected a JSON object with id2user / id2item maps")
    return maps


def _check_map(path: Path, key: str, mapping: Any, numbers: set[str]) -> dict[str, str]:
    """A datamaps id map that names exactly the numbers of the sequence file."""
    if not isinstance(mapping, dict):
        raise DataError(f"{path}: {key} must be an object of id -> raw id")
    unknown = next((k for k in mapping if k not in numbers), None)
    if unknown is not None:
        raise DataError(f"{path}: {key} names id {unknown!r}, which the sequence file does not have")
    absent = next((n for n in sorted(numbers, key=int) if n not in mapping), None)
    if absent is not None:
        raise DataError(f"{path}: {key} has no entry for id {absent!r} of the sequence file")
    return {k: str(v) for k, v in mapping.items()}


def _header(path: Path) -> list[str]:
    return read_text(path).split("\n", 1)[0].rstrip("\r").split("\t")


def _item_tables(root: Path) -> list[Path]:
    """The `.tsv` files (in `derived/` or the folder) whose header names an item id column."""
    paths = sorted([*root.glob("derived/*.tsv"), *root.glob("*.tsv")])
    return [p for p in paths if any(c in _header(p) for c in ID_COLUMNS)]


def _read_item_table(path: Path, items: set[str], features: dict[str, dict[str, Any]],
                     raw: dict[str, str]) -> None:
    """Add one item table's columns to `features` (by item number) and its raw ids to `raw`."""
    id_column = next(c for c in ID_COLUMNS if c in _header(path))
    for lineno, row in table_rows(path, (id_column,), delimiter="\t"):
        number = row.pop(id_column)
        if number not in items:
            raise DataError(f"{path}:{lineno}: item id {number!r} is not in the sequence file")
        for column, value in row.items():
            if column in RAW_ID_COLUMNS:
                if value is not None:
                    raw[number] = value
            elif column == "p5_item_id":
                features.setdefault("p5_id", {})[number] = value
            elif column in LIST_COLUMNS:
                values = [v.strip() for v in (value or "").split("|")]
                features.setdefault(column, {})[number] = [v for v in values if v and v not in UNKNOWN_VALUES] or None
            else:
                features.setdefault("title" if column == "name" else column, {})[number] = value


def _int_keys(path: Path, table: Any, what: str) -> dict[int, str]:
    if not isinstance(table, dict) or not all(is_int(str(k)) for k in table):
        raise DataError(f"{path}: {what} must be an object of integer attribute id -> name")
    return {int(k): str(v) for k, v in table.items()}


def _attribute_names(root: Path, maps: dict[str, Any] | None, used: set[int]) -> dict[int, str]:
    """Attribute names from `derived/*attribute_names.json`, else from datamaps when its ids are the ones used."""
    named = sorted(root.glob("derived/*attribute_names.json"))
    if named:
        return _int_keys(named[0], read_json(named[0]), "the attribute name table")
    if maps is not None and "id2attribute" in maps:
        names = _int_keys(root / "datamaps.json", maps["id2attribute"], "id2attribute")
        return names if set(names) == used else {}
    return {}


def _read_attributes(path: Path, root: Path, maps: dict[str, Any] | None, items: set[str]) -> dict[str, list[str]]:
    table = read_json(path)
    if not isinstance(table, dict):
        raise DataError(f"{path}: expected an object of item id -> [attribute id, ...]")
    for item, ids in table.items():
        if item not in items:
            raise DataError(f"{path}: item id {item!r} is not in the sequence file")
        if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
            raise DataError(f"{path}: item {item!r}: expected a list of integer attribute ids, got {ids!r}")
    names = _attribute_names(root, maps, {i for ids in table.values() for i in ids})
    return {item: [names.get(i, f"attribute {i}") for i in ids] for item, ids in table.items() if ids}


def read_s3rec(root: Path, seed: int = 0) -> RecData:
    """Sequences, raw ids, titles and attributes of an S3-Rec / P5 folder."""
    seq_path = sequence_file(root)
    sequences = read_sequences(seq_path)
    items = {i for seq in sequences.values() for i in seq}
    maps = _datamaps(root, seq_path)
    raw_items: dict[str, str] = {}
    raw_users = {u: u for u in sequences}
    if maps is not None:
        if "id2item" in maps:
            raw_items = _check_map(root / "datamaps.json", "id2item", maps["id2item"], items)
        if "id2user" in maps:
            raw_users = _check_map(root / "datamaps.json", "id2user", maps["id2user"], set(sequences))
    features: dict[str, dict[str, Any]] = {}
    table_raw: dict[str, str] = {}
    for table in _item_tables(root):
        _read_item_table(table, items, features, table_raw)
    for number, key in table_raw.items():
        if raw_items.get(number, key) != key:
            raise DataError(f"{root}: item {number} is {key!r} in the item table but {raw_items[number]!r} "
                            f"in datamaps.json")
    raw_items = {**{i: i for i in items}, **raw_items, **table_raw}
    for kind, mapping in (("item", raw_items), ("user", raw_users)):
        if len(set(mapping.values())) != len(mapping):
            raise DataError(f"{root}: two {kind} ids of {seq_path.name} map to the same raw {kind} id")
    attributes_path = root / f"{seq_path.stem}_item2attributes.json"
    if attributes_path.is_file() and not any(c in features for c in LIST_COLUMNS):
        features["attributes"] = _read_attributes(attributes_path, root, maps, items)
    features.setdefault("p5_id", {i: i for i in items})
    keyed = {name: {raw_items[n]: v for n, v in column.items()} for name, column in features.items()}
    user_keys, item_keys, times = [], [], []
    for user, seq in sequences.items():
        user_keys += [raw_users[user]] * len(seq)
        item_keys += [raw_items[i] for i in seq]
        times += range(len(seq))
    return RecData.build(seq_path.stem, user_keys, item_keys, times, seed=seed, source=str(seq_path),
                         item_features=keyed, templates=TEMPLATES)
