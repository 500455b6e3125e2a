"""Reading helpers the adapters share: text (gzip, UTF-8 or Latin-1), numbered lines, CSV/TSV rows, JSON.

They are strict, so that a damaged file is refused with its name and line rather than read as something else:
lines end at `\\n` alone (never at NEL, U+2028 or the other breaks `str.splitlines` knows, which may sit inside a
line), a line-based file must end with a line break (a cut last line, `... 10607 10`, would otherwise become
item `10`), ids are ASCII digits (`'1095²'.isdigit()` is true), and a truncated gzip stream or bytes that are not
the expected encoding are reported at the line where they occur.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import unicodedata
import zlib
from pathlib import Path
from typing import Any, Iterator

from recsys_lightning.data.schema import ASCII_INT, DataError

MISSING = frozenset({"", "?"})
GZIP_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)
BLANK = " \t\r"


def is_int(text: str) -> bool:
    """True for a non-negative integer written in ASCII digits (no sign, no superscripts or other scripts)."""
    return ASCII_INT.fullmatch(text) is not None


def describe(token: str) -> str:
    """`token` as an error shows it: its repr, naming a non-ASCII character (a NEL, a superscript) when it has one."""
    odd = next((c for c in token if not c.isascii() or (not c.isprintable() and c not in BLANK)), None)
    if odd is None:
        return repr(token)
    return f"{token!r} (character U+{ord(odd):04X} {unicodedata.name(odd, 'control character')})"


def _missing(path: Path) -> DataError:
    return DataError(f"{path}: the file does not exist")


def _gzip_error(path: Path, lineno: int, err: BaseException) -> DataError:
    return DataError(f"{path}:{lineno}: the gzip stream is truncated or corrupt ({type(err).__name__}: {err}); "
                     f"download the file again")


def _truncated(path: Path, lineno: int) -> DataError:
    return DataError(f"{path}:{lineno}: the last line does not end with a line break: the file looks truncated "
                     f"(a cut line would be read as different data); expected every line to end with '\\n'")


def _decode(path: Path, lineno: int, raw: bytes, fallback: str | None) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        if fallback is None:
            raise DataError(f"{path}:{lineno}: not UTF-8 text (byte {raw[err.start]:#04x} at column {err.start + 1}); "
                            f"expected a UTF-8 file") from None
        return raw.decode(fallback)


def read_bytes(path: Path) -> bytes:
    """A whole file's bytes, decompressed when it ends in .gz; a truncated or corrupt stream names its line."""
    if not path.is_file():
        raise _missing(path)
    if path.suffix != ".gz":
        return path.read_bytes()
    chunks: list[bytes] = []
    try:
        with gzip.open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                chunks.append(chunk)
    except GZIP_ERRORS as err:
        raise _gzip_error(path, sum(c.count(b"\n") for c in chunks) + 1, err) from None
    return b"".join(chunks)


def check_gzip(path: Path) -> None:
    """Read a .gz file through, so that a corrupt stream (whose garbage a line parser met first) is named as such."""
    if path.suffix == ".gz":
        read_bytes(path)


def read_text(path: Path, fallback: str | None = "latin-1") -> str:
    """A whole text file (gzip when it ends in .gz): UTF-8, or `fallback` (Latin-1 for the older dumps that use
    it; None: UTF-8 only, anything else is an error naming the line)."""
    raw = read_bytes(path)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        if fallback is None:
            lineno = raw.count(b"\n", 0, err.start) + 1
            raise DataError(f"{path}:{lineno}: not UTF-8 text (byte {raw[err.start]:#04x}); expected a UTF-8 file") \
                from None
        return raw.decode(fallback)


def lines(path: Path, fallback: str | None = "latin-1") -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its line end) of every non-blank line, read as a stream.

    Lines end at `\\n` only (a `\\r` before it is dropped); the last line must end with one too. Each line is UTF-8,
    else `fallback` (None: an error naming the line).
    """
    if not path.is_file():
        raise _missing(path)
    opener = gzip.open if path.suffix == ".gz" else open
    lineno = 0
    try:
        with opener(path, "rb") as f:
            for raw in f:  # binary files split at b"\n" alone
                lineno += 1
                ended = raw.endswith(b"\n")
                raw = raw[:-1] if ended else raw
                if raw.endswith(b"\r"):
                    raw = raw[:-1]
                if not raw.strip(BLANK.encode()):
                    continue
                if not ended:
                    raise _truncated(path, lineno)
                yield lineno, _decode(path, lineno, raw, fallback)
    except GZIP_ERRORS as err:
        raise _gzip_error(path, lineno + 1, err) from None


def table_rows(path: Path, required: tuple[str, ...],
               delimiter: str = ",") -> Iterator[tuple[int, dict[str, str | None]]]:
    """(line number, row) of a CSV/TSV file with a header; `?` and empty cells become None.

    Every row must have as many cells as the header; `required` columns must be in the header, and no column may
    be named twice; the file must end with a line break.
    """
    text = read_text(path)
    if text.strip(BLANK + "\n") and not text.endswith("\n"):
        raise _truncated(path, text.count("\n") + 1)
    quoting = csv.QUOTE_MINIMAL if delimiter == "," else csv.QUOTE_NONE
    reader = csv.reader(io.StringIO(text, newline="\n"), delimiter=delimiter, quoting=quoting)
    try:
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path}: the file is empty; expected a header line")
        header = [h.strip() for h in header]
        missing = [c for c in required if c not in header]
        if missing:
            raise DataError(f"{path}:1: header lacks columns {missing}; found {header}")
        twice = next((h for i, h in enumerate(header) if h in header[:i]), None)
        if twice is not None:
            raise DataError(f"{path}:1: column {twice!r} appears twice in the header {header}")
        for row in reader:
            lineno = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise DataError(f"{path}:{lineno}: expected {len(header)} {'tab-' if delimiter != ',' else ''}"
                                f"separated cells ({', '.join(header)}), found {len(row)}")
            cells = {h: (None if c.strip() in MISSING else c.strip()) for h, c in zip(header, row)}
            if list(cells.values()) == header:
                raise DataError(f"{path}:{lineno}: the header line appears again; expected a data row")
            yield lineno, cells
    except csv.Error as err:
        raise DataError(f"{path}:{reader.line_num}: not a well-formed {'CSV' if delimiter == ',' else 'TSV'} "
                        f"line ({err})") from None


def read_json(path: Path) -> Any:
    """A JSON document, with the file and position in the error when it is malformed."""
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
