"""Any interaction table: CSV, TSV or Parquet files whose columns a config maps to the schema's roles.

`data.format: table` with `data.reader_options: {interactions: ratings.csv, columns: {user: uid, item: iid,
rating: stars, timestamp: ts, review: text}, items: {file: items.parquet, columns: {item: iid, title: name,
genres: tags}, lists: {genres: "|"}}, users: {...}}`. `user` and `item` are required; every column named must exist.
Ids are strings (integers as written); ratings numbers; timestamps integers, decimals or ISO 8601 dates (decimals and
dates keep their order); an item or user table's other columns are features, a `lists` column split by its
separator. Rows of item/user tables for ids with no interaction are skipped; an id listed twice is an error.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from recsys_lightning.data.adapters.files import table_rows
from recsys_lightning.data.schema import DataError, RecData

ROLES = ("user", "item", "rating", "timestamp", "review", "summary")
SUFFIXES = {".csv": ",", ".tsv": "\t", ".parquet": None}
FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
Row = Mapping[str, Any]


def _option(key: str) -> str:
    return f"data.reader_options.{key}"


def read_rows(path: Path, columns: Sequence[str], key: str) -> Iterator[tuple[str, Row]]:
    """(where, row) of every row of a CSV/TSV (by suffix) or Parquet file: `where` is `file:line` or `file: row N`.
    Every one of `columns` must exist; `key` names the config entry that asked for them."""
    suffix = next((s for s in SUFFIXES if path.name.endswith(s) or path.name.endswith(s + ".gz")), None)
    if suffix is None:
        raise DataError(f"{_option(key)}: {path.name}: expected a .csv, .tsv or .parquet file")
    if not path.is_file():
        raise DataError(f"{path}: the file does not exist ({_option(key)})")
    if suffix != ".parquet":
        for lineno, row in table_rows(path, tuple(columns), delimiter=SUFFIXES[suffix] or ","):
            yield f"{path}:{lineno}", row
        return
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
    except Exception as err:  # pyarrow raises its own ArrowInvalid/OSError for a damaged file
        raise DataError(f"{path}: not a readable Parquet file ({type(err).__name__}: {err})") from None
    missing = [c for c in columns if c not in names]
    if missing:
        raise DataError(f"{path}: no column(s) {missing} (asked for by {_option(key)}); found {names}")
    for i, row in enumerate(pq.read_table(path, columns=list(dict.fromkeys(columns))).to_pylist()):
        yield f"{path}: row {i + 1}", row


def identifier(where: str, column: str, role: str, value: Any) -> str:
    """An id cell as a string: text, or an integer (a float that is one, as pandas writes ids with gaps)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise DataError(f"{where}: column {column!r} ({role} id): expected a string or integer id, got {value!r}")
    return str(value)


def number(where: str, column: str, role: str, value: Any) -> float:
    """A numeric cell (a number, or text that parses as one); missing is NaN."""
    if value is None:
        return math.nan
    try:
        if isinstance(value, bool):
            raise ValueError
        return float(value)
    except (TypeError, ValueError):
        raise DataError(f"{where}: column {column!r} ({role}): expected a number, got {value!r}") from None


def moment(where: str, column: str, value: Any) -> float:
    """A time cell in seconds: a number, numeric text or an ISO 8601 date/time (UTC unless it names its zone)."""
    if isinstance(value, (dt.datetime, dt.date)) or (isinstance(value, str) and not _numeric(value)):
        try:
            when = value if isinstance(value, (dt.datetime, dt.date)) else dt.datetime.fromisoformat(value)
        except ValueError:
            raise DataError(f"{where}: column {column!r} (timestamp): expected a number or an ISO 8601 date, got "
                            f"{value!r}") from None
        if not isinstance(when, dt.datetime):
            when = dt.datetime(when.year, when.month, when.day)
        return (when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)).timestamp()
    if value is None:
        raise DataError(f"{where}: column {column!r} (timestamp): missing; expected a number or an ISO 8601 date")
    return number(where, column, "timestamp", value)


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def integer_times(times: Sequence[float]) -> list[int]:
    """Whole-second times as they are; fractional ones replaced by their rank, which keeps their order exactly."""
    values = np.asarray(times, dtype=np.float64)
    if np.all(values == np.round(values)) and np.all(np.abs(values) < 2**62):
        return values.astype(np.int64).tolist()
    return np.unique(values, return_inverse=True)[1].astype(np.int64).tolist()


def text(value: Any) -> str:
    return "" if value is None else str(value)


def mapping(value: Any, key: str, roles: Sequence[str] | None = None) -> dict[str, str]:
    """A `{name: column}` option: strings only; with `roles`, only those names."""
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise DataError(f"{_option(key)}: expected a mapping of names to column names, got {value!r}")
    unknown = [k for k in value if roles is not None and k not in roles]
    if unknown:
        raise DataError(f"{_option(key)}: unknown role(s) {unknown}; expected some of {list(roles)}")
    return dict(value)


def generic_templates(item_fields: Sequence[str], user_fields: Sequence[str],
                      title: str | None = None) -> dict[str, str]:
    """Descriptions naming each feature: `item {item}[ titled {title}][, genres: {genres}].`"""
    def described(head: str, fields: Sequence[str]) -> str:
        parts = "".join(f"[, {f.replace('_', ' ')}: {{{f}}}]" for f in fields if f != title)
        return f"{head}{parts}." if fields else head
    item_head = "item {item}" + (f"[ titled {{{title}}}]" if title else "")
    return {"user": described("{user}", user_fields), "item": described(item_head, item_fields)}


def read_features(spec: Any, kind: str, known: set[str], root: Path) -> dict[str, dict[str, Any]]:
    """{feature: {id: value}} of an item or user table: `{file, columns: {<kind>: id column, feature: column},
    lists: {feature: separator}}`."""
    key = f"{kind}s"
    if not isinstance(spec, Mapping) or not isinstance(spec.get("file"), str):
        raise DataError(f"{_option(key)}: expected {{file: ..., columns: {{{kind}: <id column>, <feature>: "
                        f"<column>, ...}}}}, got {spec!r}")
    unknown = sorted(set(spec) - {"file", "columns", "lists"})
    if unknown:
        raise DataError(f"{_option(key)}: unknown key(s) {unknown}; expected file, columns, lists")
    columns = mapping(spec.get("columns", {}), f"{key}.columns")
    if kind not in columns:
        raise DataError(f"{_option(key)}.columns: name the {kind} id column ({kind}: <column>)")
    lists = spec.get("lists") or {}
    bad = [f for f in {**columns, **lists} if f != kind and not FIELD_NAME.fullmatch(f)]
    if bad or not set(lists) <= set(columns) - {kind}:
        raise DataError(f"{_option(key)}: feature names must be identifiers and `lists` must name features; got "
                        f"{bad or sorted(set(lists) - set(columns))}")
    path = root / spec["file"]
    features: dict[str, dict[str, Any]] = {f: {} for f in columns if f != kind}
    first: dict[str, str] = {}
    for where, row in read_rows(path, list(columns.values()), f"{key}.columns"):
        uid = identifier(where, columns[kind], kind, row[columns[kind]])
        if uid in first:
            raise DataError(f"{where}: {kind} {uid!r} appears twice (first at {first[uid]}); expected one row each")
        first[uid] = where
        if uid not in known:
            continue
        for feature in features:
            features[feature][uid] = _feature(row[columns[feature]], lists.get(feature))
    return features


def _feature(value: Any, separator: str | None) -> Any:
    """A feature value: None when missing, a list split at `separator`, else the value (text or a number)."""
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value if v is not None and str(v).strip()] or None
    if separator is not None:
        return [v.strip() for v in str(value).split(separator) if v.strip()] or None
    return value


def read_table(root: Path, seed: int = 0, interactions: str = "interactions.csv",
               columns: Mapping[str, str] | None = None, items: Mapping[str, Any] | None = None,
               users: Mapping[str, Any] | None = None, name: str | None = None) -> RecData:
    """Interactions from `root/interactions` with `columns` mapping roles (user, item, rating, timestamp, review,
    summary) to column names (default `{user: user_id, item: item_id}`), optional item and user feature tables."""
    cols = mapping(columns if columns is not None else {"user": "user_id", "item": "item_id"}, "columns", ROLES)
    missing = [r for r in ("user", "item") if r not in cols]
    if missing:
        raise DataError(f"{_option('columns')}: name the {' and '.join(missing)} column(s); got {cols}")
    path = root / interactions
    got: dict[str, list[Any]] = {role: [] for role in cols}
    for where, row in read_rows(path, list(cols.values()), "columns"):
        got["user"].append(identifier(where, cols["user"], "user", row[cols["user"]]))
        got["item"].append(identifier(where, cols["item"], "item", row[cols["item"]]))
        if "rating" in cols:
            got["rating"].append(number(where, cols["rating"], "rating", row[cols["rating"]]))
        if "timestamp" in cols:
            got["timestamp"].append(moment(where, cols["timestamp"], row[cols["timestamp"]]))
        for role in ("review", "summary"):
            if role in cols:
                got[role].append(text(row[cols[role]]))
    known_items, known_users = set(got["item"]), set(got["user"])
    item_features = read_features(items, "item", known_items, root) if items is not None else {}
    user_features = read_features(users, "user", known_users, root) if users is not None else {}
    title = "title" if "title" in item_features else None
    times = integer_times(got["timestamp"]) if "timestamp" in cols else [0] * len(got["user"])
    return RecData.build(name or root.name, got["user"], got["item"], times, got.get("rating"), got.get("review"),
                         got.get("summary"), seed=seed, source=str(path), item_features=item_features,
                         user_features=user_features,
                         templates=generic_templates(list(item_features), list(user_features), title))
