"""MovieLens-100k as GroupLens ships it: `u.data` ratings, `u.user` and `u.item` tabular features, `u.genre`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from recsys_lightning.data.adapters.files import describe, is_int, lines
from recsys_lightning.data.schema import DataError, RecData

GENDERS = {"M": "male", "F": "female"}
NO_OCCUPATION = frozenset({"other", "none"})
YEAR = re.compile(r"([0-9]{4})$")
GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
          "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western")
TEMPLATES = {
    "user": "{user} is {age:an}-year-old {gender}[ {occupation}][ living in zip code {zip}].",
    "item": "item {item} is a movie[ titled {title}][ from {year}][ in the genres {genres}].",
}


def _fields(path: Path, lineno: int, line: str, sep: str, count: int, what: str) -> list[str]:
    cells = line.split(sep)
    if len(cells) != count:
        raise DataError(f"{path}:{lineno}: expected {count} {sep!r}-separated fields ({what}), found {len(cells)}")
    return cells


def _require(root: Path, name: str) -> Path:
    path = root / name
    if not path.is_file():
        raise DataError(f"{root}: missing {name} (MovieLens-100k needs u.data, u.user, u.item)")
    return path


def _genres(root: Path) -> list[str]:
    """Genre names in flag order (u.genre `name|index`), or the published 19 when the file is absent."""
    path = root / "u.genre"
    if not path.is_file():
        return list(GENRES)
    names: dict[int, str] = {}
    for lineno, line in lines(path):
        name, index = _fields(path, lineno, line, "|", 2, "name|index")
        if not is_int(index):
            raise DataError(f"{path}:{lineno}: genre index {index!r} is not an integer")
        names[int(index)] = name
    if sorted(names) != list(range(len(names))):
        raise DataError(f"{path}: genre indices must be 0..n-1, got {sorted(names)}")
    return [names[i] for i in range(len(names))]


def _users(root: Path) -> dict[str, dict[str, Any]]:
    path = _require(root, "u.user")
    users: dict[str, dict[str, Any]] = {}
    for lineno, line in lines(path):
        user, age, gender, occupation, zipcode = _fields(path, lineno, line, "|", 5, "id|age|gender|occupation|zip")
        if not is_int(user):
            raise DataError(f"{path}:{lineno}: expected an integer user id, got {describe(user)}")
        if not is_int(age) or gender not in GENDERS:
            raise DataError(f"{path}:{lineno}: expected an integer age and gender M or F, got {describe(age)}, "
                            f"{gender!r}")
        users[user] = {"age": age, "gender": GENDERS[gender], "zip": zipcode or None,
                       "occupation": None if occupation in NO_OCCUPATION else occupation}
    return users


def _items(root: Path, genres: list[str]) -> dict[str, dict[str, Any]]:
    path = _require(root, "u.item")
    items: dict[str, dict[str, Any]] = {}
    for lineno, line in lines(path):
        cells = _fields(path, lineno, line, "|", 5 + len(genres), "id|title|release date|video date|url|genre flags")
        flags = cells[5:]
        if any(f not in ("0", "1") for f in flags):
            raise DataError(f"{path}:{lineno}: genre flags must be 0 or 1, got {flags}")
        if not is_int(cells[0]):
            raise DataError(f"{path}:{lineno}: expected an integer movie id, got {describe(cells[0])}")
        year = YEAR.search(cells[2])
        items[cells[0]] = {"title": cells[1].strip() or None, "year": year.group(1) if year else None,
                           "genres": [g for g, f in zip(genres, flags) if f == "1" and g != "unknown"] or None}
    return items


def read_movielens(root: Path, seed: int = 0) -> RecData:
    """Ratings with timestamps, user age/gender/occupation/zip, movie title/year/genres."""
    path = _require(root, "u.data")
    users, items, times, ratings = [], [], [], []
    for lineno, line in lines(path):
        cells = [c.strip(" ") for c in line.split("\t")]
        bad = next((c for c in cells if not is_int(c)), None)
        if len(cells) != 4 or bad is not None:
            found = f"found {describe(bad)}" if bad is not None else f"found {len(cells)} fields"
            raise DataError(f"{path}:{lineno}: expected `user<TAB>item<TAB>rating<TAB>timestamp` integers, "
                            f"{found} in {line[:80]!r}")
        if not 1 <= int(cells[2]) <= 5:
            raise DataError(f"{path}:{lineno}: expected a rating from 1 to 5, got {cells[2]}")
        users.append(cells[0])
        items.append(cells[1])
        ratings.append(float(cells[2]))
        times.append(int(cells[3]))
    user_table, item_table = _users(root), _items(root, _genres(root))
    for table, keys, name in ((user_table, users, "u.user"), (item_table, items, "u.item")):
        absent = next((k for k in keys if k not in table), None)
        if absent is not None:
            raise DataError(f"{path}: id {absent!r} has no row in {name}")
    rated, raters = set(items), set(users)
    item_features = {name: {k: row[name] for k, row in item_table.items() if k in rated}
                     for name in ("title", "year", "genres")}
    user_features = {name: {k: row[name] for k, row in user_table.items() if k in raters}
                     for name in ("age", "gender", "occupation", "zip")}
    return RecData.build("ml-100k", users, items, times, ratings, seed=seed, source=str(path),
                         item_features=item_features, user_features=user_features, templates=TEMPLATES)
