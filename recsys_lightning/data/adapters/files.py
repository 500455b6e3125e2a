"""Reading helpers the adapters share: text (gzip, UTF-8 or Latin-1), numbered lines, CSV/TSV rows, JSON."""

from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path
from typing import Any, Iterator

from recsys_lightning.data.schema import DataError

MISSING = frozenset({"", "?"})


def read_text(path: Path) -> str:
    """A whole text file (gzip when it ends in .gz): UTF-8, or Latin-1 for the older dumps that use it."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its line end) of every non-blank line."""
    for lineno, line in enumerate(read_text(path).splitlines(), 1):
        if line.strip():
            yield lineno, line


def table_rows(path: Path, required: tuple[str, ...],
               delimiter: str = ",") -> Iterator[tuple[int, dict[str, str | None]]]:
    """(line number, row) of a CSV/TSV file with a header; `?` and empty cells become None.

    Every row must have as many cells as the header; `required` columns must be in the header.
    """
    quoting = csv.QUOTE_MINIMAL if delimiter == "," else csv.QUOTE_NONE
    reader = csv.reader(io.StringIO(read_text(path)), delimiter=delimiter, quoting=quoting)
    header = next(reader, None)
    if header is None:
        raise DataError(f"{path}: the file is empty; expected a header line")
    header = [h.strip() for h in header]
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(f"{path}:1: header lacks columns {missing}; found {header}")
    for row in reader:
        lineno = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise DataError(f"{path}:{lineno}: expected {len(header)} {'tab-' if delimiter != ',' else ''}separated "
                            f"cells ({', '.join(header)}), found {len(row)}")
        yield lineno, {h: (None if c.strip() in MISSING else c.strip()) for h, c in zip(header, row)}


def read_json(path: Path) -> Any:
    """A JSON document, with the file and position in the error when it is malformed."""
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
