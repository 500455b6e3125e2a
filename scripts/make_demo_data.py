"""Derive the bundled demo data from the Amazon Musical Instruments 5-core reviews (research use, see README).

Keeps every review (so the 5-core property and the sequences are intact) with the fields the product reads,
review text cut to its first 60 words. Usage: python scripts/make_demo_data.py SRC.json.gz DST.json.gz
"""

from __future__ import annotations

import gzip
import json
import sys

FIELDS = ("reviewerID", "asin", "overall", "summary", "reviewText", "unixReviewTime")
MAX_WORDS = 60


def main(src: str, dst: str) -> None:
    with gzip.open(src, "rt", encoding="utf-8") as fin, gzip.GzipFile(dst, "wb", mtime=0) as raw:
        for line in fin:
            row = json.loads(line)
            row = {k: row[k] for k in FIELDS if k in row}
            row["reviewText"] = " ".join(row.get("reviewText", "").split()[:MAX_WORDS])
            raw.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))


if __name__ == "__main__":
    main(*sys.argv[1:3])
