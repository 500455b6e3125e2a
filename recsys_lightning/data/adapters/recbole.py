"""RecBole atomic files: `<name>.inter`, optional `<name>.item` and `<name>.user`, as RecBole's dataset list ships them.

Each is tab-separated UTF-8 with a typed header, `user_id:token	item_id:token	rating:float	timestamp:float`; a field
is a `token` (a string), `token_seq` (tokens separated by `seq_separator`, a space), `float` or `float_seq`. The
interaction file's user and item fields are tokens; its rating and timestamp fields (when present) floats; a review
field is text. The item and user files' other fields become features; a `token_seq` field whose name ends in title,
name, text, review, summary or description (or one listed in `text_fields`) is a text, joined back with spaces. Rows
of the item/user file for ids with no interaction are skipped.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterator, Sequence

from recsys_lightning.data.adapters.files import lines
from recsys_lightning.data.adapters.table import generic_templates, integer_times
from recsys_lightning.data.schema import DataError, RecData

TYPES = ("token", "token_seq", "float", "float_seq")
TEXT_SUFFIXES = ("title", "name", "text", "review", "summary", "description")
Field = tuple[str, str]


def atomic_rows(path: Path, separator: str) -> tuple[list[Field], Iterator[tuple[int, list[Any]]]]:
    """The typed header of an atomic file and its rows as (line number, typed values; None where empty)."""
    numbered = lines(path, fallback=None)
    first = next(numbered, None)
    if first is None:
        raise DataError(f"{path}: the file is empty; expected a header like `user_id:token\titem_id:token`")
    fields = [_field(path, cell) for cell in first[1].split("\t")]
    names = [name for name, _ in fields]
    twice = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if twice is not None:
        raise DataError(f"{path}:1: field {twice!r} appears twice in the header")

    def rows() -> Iterator[tuple[int, list[Any]]]:
        for lineno, line in numbered:
            cells = line.split("\t")
            if len(cells) != len(fields):
                raise DataError(f"{path}:{lineno}: expected {len(fields)} tab-separated fields "
                                f"({', '.join(names)}), found {len(cells)}")
            yield lineno, [_value(path, lineno, f, c.strip(), separator) for f, c in zip(fields, cells)]

    return fields, rows()


def _field(path: Path, cell: str) -> Field:
    name, _, kind = cell.strip().rpartition(":")
    if not name:
        raise DataError(f"{path}:1: header field {cell!r}: expected name:type, type one of {', '.join(TYPES)}")
    if kind not in TYPES:
        raise DataError(f"{path}:1: field {name!r}: unknown type {kind!r}; expected one of {', '.join(TYPES)}")
    return name, kind


def _value(path: Path, lineno: int, field: Field, cell: str, separator: str) -> Any:
    name, kind = field
    if cell == "":
        return None
    parts = [p for p in cell.split(separator) if p] if kind.endswith("_seq") else [cell]
    if not kind.startswith("float"):
        return parts if kind == "token_seq" else cell
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise DataError(f"{path}:{lineno}: field {name!r} ({kind}): expected {'numbers' if kind == 'float_seq' else 'a number'}"
                        f", got {cell!r}") from None
    return values if kind == "float_seq" else values[0]


def _require(path: Path, fields: Sequence[Field], name: str, kinds: tuple[str, ...], option: str) -> int | None:
    """The column of field `name` (None when absent), refusing one of another type."""
    found = next((i for i, (n, _) in enumerate(fields) if n == name), None)
    if found is not None and fields[found][1] not in kinds:
        raise DataError(f"{path}:1: field {name!r} ({option}) is a {fields[found][1]}; expected {' or '.join(kinds)}")
    return found


def inter_file(root: Path, name: str | None) -> Path:
    """`root/<name>.inter`, or the one `.inter` file in `root`."""
    if name is not None:
        return root / f"{name}.inter"
    found = sorted(root.glob("*.inter"))
    if len(found) != 1:
        raise DataError(f"{root}: expected exactly one <name>.inter file (RecBole atomic files), found "
                        f"{[p.name for p in found]}; set data.reader_options.name")
    return found[0]


def read_side(path: Path, id_field: str, known: set[str], separator: str,
              text_fields: Sequence[str] | None) -> dict[str, dict[str, Any]]:
    """{feature: {id: value}} of a `.item` or `.user` file."""
    fields, rows = atomic_rows(path, separator)
    key = _require(path, fields, id_field, ("token",), "the id field")
    if key is None:
        raise DataError(f"{path}:1: no field {id_field!r}; found {[n for n, _ in fields]}")
    texts = {n for n, k in fields if k == "token_seq" and (n in text_fields if text_fields is not None
                                                            else n.endswith(TEXT_SUFFIXES))}
    features: dict[str, dict[str, Any]] = {n: {} for i, (n, _) in enumerate(fields) if i != key}
    first: dict[str, int] = {}
    for lineno, values in rows:
        uid = values[key]
        if uid is None:
            raise DataError(f"{path}:{lineno}: field {id_field!r} is empty; expected an id")
        if uid in first:
            raise DataError(f"{path}:{lineno}: id {uid!r} appears twice (first at line {first[uid]})")
        first[uid] = lineno
        if uid in known:
            for (name, _), value in zip(fields, values):
                if name in features:
                    features[name][uid] = " ".join(value) if name in texts and value else value
    return features


def read_recbole(root: Path, seed: int = 0, name: str | None = None, user_field: str = "user_id",
                 item_field: str = "item_id", rating_field: str = "rating", time_field: str = "timestamp",
                 review_field: str = "review", text_fields: list[str] | None = None,
                 seq_separator: str = " ") -> RecData:
    """Interactions of `<name>.inter` with the features of `<name>.item` and `<name>.user` when they exist."""
    path = inter_file(root, name)
    fields, rows = atomic_rows(path, seq_separator)
    user = _require(path, fields, user_field, ("token",), "user_field")
    item = _require(path, fields, item_field, ("token",), "item_field")
    if user is None or item is None:
        raise DataError(f"{path}:1: expected the fields {user_field!r} and {item_field!r} (tokens; "
                        f"data.reader_options user_field/item_field), found {[n for n, _ in fields]}")
    rating = _require(path, fields, rating_field, ("float",), "rating_field")
    time = _require(path, fields, time_field, ("float",), "time_field")
    review = _require(path, fields, review_field, ("token", "token_seq"), "review_field")
    users, items, ratings, times, reviews = [], [], [], [], []
    for lineno, values in rows:
        if values[user] is None or values[item] is None:
            raise DataError(f"{path}:{lineno}: empty {user_field!r} or {item_field!r}; expected both ids")
        if time is not None and values[time] is None:
            raise DataError(f"{path}:{lineno}: empty {time_field!r}; expected a number")
        users.append(values[user])
        items.append(values[item])
        ratings.append(math.nan if rating is None or values[rating] is None else values[rating])
        times.append(0.0 if time is None else values[time])
        text = values[review] if review is not None else None
        reviews.append(" ".join(text) if isinstance(text, list) else text or "")
    stem = path.name.removesuffix(".inter")
    sides = {}
    for kind, id_field, keys in (("item", item_field, set(items)), ("user", user_field, set(users))):
        side = root / f"{stem}.{kind}"
        sides[kind] = read_side(side, id_field, keys, seq_separator, text_fields) if side.is_file() else {}
    title = next((f for f in sides["item"] if f.endswith(("title", "name"))), None)
    return RecData.build(stem, users, items, integer_times(times), ratings, reviews if review is not None else None,
                         seed=seed, source=str(path), item_features=sides["item"], user_features=sides["user"],
                         templates=generic_templates(list(sides["item"]), list(sides["user"]), title))
