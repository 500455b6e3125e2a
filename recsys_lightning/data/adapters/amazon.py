"""Amazon 2014 review dumps: `reviews_<Category>_5.json.gz`, one JSON object per line, read unchanged.

A matching `meta_<Category>.json.gz` (python-literal lines in the 2014 dumps, JSON in later ones) adds
titles, brands, categories and prices; it lists the whole category, so the lines of products without reviews
are skipped (before parsing, by their `asin`).
"""

from __future__ import annotations

import ast
import html
import json
import re
from pathlib import Path
from typing import Any

from recsys_lightning.data.adapters.files import check_gzip, lines
from recsys_lightning.data.schema import DataError, RecData

REQUIRED = {"reviewerID": str, "asin": str, "overall": (int, float), "unixReviewTime": int}
META_ASIN = re.compile(r"""["']asin["']\s*:\s*["']([^"']+)["']""")
TEMPLATES = {
    "user": "{user}",
    "item": "item {item}[ is {title}][ by {brand}][, in {categories}][, priced at ${price}]",
}


def review_file(root: Path) -> Path:
    """The single `reviews_*.json.gz` (or `.json`) file in `root`."""
    found = sorted(root.glob("reviews_*.json.gz")) or sorted(root.glob("reviews_*.json"))
    if len(found) != 1:
        raise DataError(f"{root}: expected exactly one reviews_<Category>_5.json(.gz) file, found {len(found)}")
    return found[0]


def read_amazon_reviews(root: Path, seed: int = 0) -> RecData:
    """Ratings, review texts, summaries and timestamps of one Amazon category."""
    path = review_file(root)
    users, items, times, ratings, reviews, summaries = [], [], [], [], [], []
    for lineno, line in lines(path, fallback=None):  # the dumps are UTF-8: other bytes mean a damaged file
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            check_gzip(path)
            raise DataError(f"{path}:{lineno}: not a JSON object ({err.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
        for key, kind in REQUIRED.items():
            value = row.get(key)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise DataError(f"{path}:{lineno}: key {key!r} missing or not {kind}: {value!r}")
        users.append(row["reviewerID"])
        items.append(row["asin"])
        times.append(row["unixReviewTime"])
        ratings.append(float(row["overall"]))
        reviews.append(str(row.get("reviewText") or ""))
        summaries.append(str(row.get("summary") or ""))
    name = path.name.removeprefix("reviews_").split(".")[0]
    category = name.removesuffix("_5")
    meta = sorted(root.glob(f"meta_{category}.json*"))
    features = read_meta(meta[0], set(items)) if meta else {}
    return RecData.build(name, users, items, times, ratings, reviews, summaries, seed=seed, source=str(path),
                         item_features=features, templates=TEMPLATES)


def _meta_row(path: Path, lineno: int, line: str) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        try:
            row = ast.literal_eval(line)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            check_gzip(path)
            raise DataError(f"{path}:{lineno}: expected a JSON or python-literal object") from None
    if not isinstance(row, dict) or not isinstance(row.get("asin"), str):
        raise DataError(f"{path}:{lineno}: expected an object with a string 'asin'")
    return row


def _categories(path: Path, lineno: int, value: Any) -> list[str] | None:
    """The distinct category names of all category paths (`[["Beauty", "Makeup", ...], ...]`), in order."""
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(p, list) for p in value):
        raise DataError(f"{path}:{lineno}: 'categories' must be a list of category paths, got {value!r}")
    names = dict.fromkeys(html.unescape(str(c)).strip() for p in value for c in p)
    return [n for n in names if n] or None


def read_meta(path: Path, asins: set[str]) -> dict[str, dict[str, Any]]:
    """Title, brand, categories and price of every reviewed product found in a meta file."""
    features: dict[str, dict[str, Any]] = {"title": {}, "brand": {}, "categories": {}, "price": {}}
    for lineno, line in lines(path):
        found = META_ASIN.search(line)
        if found is not None and found.group(1) not in asins:
            continue
        row = _meta_row(path, lineno, line)
        asin = row["asin"]
        if asin not in asins:
            continue
        for key in ("title", "brand"):
            value = html.unescape(str(row.get(key) or "")).strip()
            features[key][asin] = value or None
        features["categories"][asin] = _categories(path, lineno, row.get("categories"))
        price = row.get("price")
        features["price"][asin] = f"{float(price):.2f}" if isinstance(price, (int, float)) else None
    return features
