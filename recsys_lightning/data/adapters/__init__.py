"""Adapters read public dataset files unchanged into the common schema; `ADAPTERS` maps a config's `format` to one."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from recsys_lightning.data.adapters.amazon import read_amazon_reviews
from recsys_lightning.data.adapters.movielens import read_movielens
from recsys_lightning.data.adapters.restaurant import read_restaurant
from recsys_lightning.data.adapters.s3rec import read_s3rec
from recsys_lightning.data.schema import DataError, RecData

Adapter = Callable[[Path, int], RecData]

ADAPTERS: dict[str, Adapter] = {
    "amazon_reviews": read_amazon_reviews,
    "s3rec": read_s3rec,
    "movielens": read_movielens,
    "restaurant": read_restaurant,
}


def load_dataset(fmt: str, root: Path, seed: int) -> RecData:
    """Read `root` with the adapter named `fmt`."""
    if fmt not in ADAPTERS:
        raise DataError(f"data.format: unknown dataset format {fmt!r}; expected one of {sorted(ADAPTERS)}")
    if not root.is_dir():
        raise DataError(f"data.root: dataset folder {root} does not exist")
    return ADAPTERS[fmt](root, seed)
