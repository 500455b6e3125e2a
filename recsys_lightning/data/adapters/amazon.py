"""Amazon 2014 review dumps: `reviews_<Category>_5.json.gz`, one JSON object per line, read unchanged."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from recsys_lightning.data.schema import DataError, RecData

REQUIRED = {"reviewerID": str, "asin": str, "overall": (int, float), "unixReviewTime": int}


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
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{lineno}: not a JSON object ({err.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            for key, kind in REQUIRED.items():
                if not isinstance(row.get(key), kind):
                    raise DataError(f"{path}:{lineno}: key {key!r} missing or not {kind}: {row.get(key)!r}")
            users.append(row["reviewerID"])
            items.append(row["asin"])
            times.append(row["unixReviewTime"])
            ratings.append(float(row["overall"]))
            reviews.append(str(row.get("reviewText") or ""))
            summaries.append(str(row.get("summary") or ""))
    name = path.name.removeprefix("reviews_").split(".")[0]
    return RecData.build(name, users, items, times, ratings, reviews, summaries, seed=seed, source=str(path))
