"""The common schema every adapter feeds: users, items, time-ordered interactions, ratings, review text, features."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np


class DataError(ValueError):
    """Input data that cannot be used, with the file, line or key that is wrong."""


ASCII_INT = re.compile(r"[0-9]+")  # `str.isdigit` also accepts superscripts and other scripts' digits


def seeded_hash(seed: int, *keys: object) -> int:
    """A stable 63-bit hash of `keys`: breaks ties in time without looking at ids' order."""
    digest = hashlib.blake2b(repr((seed, *keys)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@dataclass(frozen=True)
class RecData:
    """Users, items and interactions sorted by user, then time (ties broken by a seeded hash).

    Interaction columns are parallel arrays; user `u`'s interactions are `offsets[u]:offsets[u + 1]`.
    `rating` is NaN where the source has none; `review`/`summary` are empty strings where absent.
    `item_features[name][item]` / `user_features[name][user]` hold a string, a number, a list of strings,
    or None where the source has no value. `templates` are the dataset's declared descriptions
    (`{"user": ..., "item": ...}`, see `data/textualize.py`).
    """

    name: str
    users: list[str]
    items: list[str]
    user: np.ndarray
    item: np.ndarray
    timestamp: np.ndarray
    rating: np.ndarray
    review: list[str]
    summary: list[str]
    offsets: np.ndarray
    item_features: dict[str, list[Any]] = field(default_factory=dict)
    user_features: dict[str, list[Any]] = field(default_factory=dict)
    templates: dict[str, str] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        name: str,
        user_keys: Sequence[str],
        item_keys: Sequence[str],
        timestamps: Sequence[int],
        ratings: Sequence[float] | None = None,
        reviews: Sequence[str] | None = None,
        summaries: Sequence[str] | None = None,
        seed: int = 0,
        source: str = "",
        item_features: Mapping[str, Mapping[str, Any]] | None = None,
        user_features: Mapping[str, Mapping[str, Any]] | None = None,
        templates: Mapping[str, str] | None = None,
    ) -> RecData:
        """Assign dense ids (raw ids sorted; numerically when all are integers) and order each user's
        interactions by time, then seeded hash.

        Features map a feature name to {raw key: value}; keys without a value get None.
        """
        n = len(user_keys)
        if n == 0:
            raise DataError(f"{source or name}: the dataset has no interactions")
        users = _ordered(user_keys)
        items = _ordered(item_keys)
        uid = {u: i for i, u in enumerate(users)}
        iid = {it: i for i, it in enumerate(items)}
        user = np.fromiter((uid[u] for u in user_keys), dtype=np.int64, count=n)
        item = np.fromiter((iid[i] for i in item_keys), dtype=np.int64, count=n)
        ts = np.asarray(timestamps, dtype=np.int64)
        tie = np.fromiter((seeded_hash(seed, u, i) for u, i in zip(user_keys, item_keys)), dtype=np.int64, count=n)
        order = np.lexsort((tie, ts, user))
        rating = np.full(n, np.nan, dtype=np.float32) if ratings is None else np.asarray(ratings, dtype=np.float32)
        text = lambda col: [""] * n if col is None else [col[i] for i in order]  # noqa: E731
        offsets = np.searchsorted(user[order], np.arange(len(users) + 1))
        return cls(name, users, items, user[order], item[order], ts[order], rating[order], text(reviews),
                   text(summaries), offsets, _align(item_features, items, "item", source or name),
                   _align(user_features, users, "user", source or name), dict(templates or {}))

    @property
    def num_users(self) -> int:
        return len(self.users)

    @property
    def num_items(self) -> int:
        return len(self.items)

    def sequence(self, user: int) -> np.ndarray:
        """User `user`'s items in time order."""
        return self.item[self.offsets[user]: self.offsets[user + 1]]

    def interactions_of(self, user: int) -> range:
        """Row positions of user `user`'s interactions, in time order."""
        return range(int(self.offsets[user]), int(self.offsets[user + 1]))

    def stats(self) -> dict[str, Any]:
        lengths = np.diff(self.offsets)
        return {
            "dataset": self.name,
            "users": self.num_users,
            "items": self.num_items,
            "interactions": int(len(self.item)),
            "avg_sequence_length": round(float(lengths.mean()), 2),
            "sparsity": round(1.0 - len(self.item) / (self.num_users * self.num_items), 5),
        }


def _ordered(keys: Sequence[str]) -> list[str]:
    """Distinct raw ids sorted, numerically when every id is an integer (MovieLens user 2 is dense id 1)."""
    distinct = set(keys)
    numeric = all(ASCII_INT.fullmatch(k) for k in distinct)
    return sorted(distinct, key=int) if numeric else sorted(distinct)


def _align(features: Mapping[str, Mapping[str, Any]] | None, keys: list[str], kind: str,
           source: str) -> dict[str, list[Any]]:
    """Feature columns in dense-id order; a value for a key with no interaction is an error."""
    known = set(keys)
    out: dict[str, list[Any]] = {}
    for name, values in (features or {}).items():
        unknown = next((k for k in values if k not in known), None)
        if unknown is not None:
            raise DataError(f"{source}: {kind} feature {name!r} names {kind} {unknown!r}, which has no interaction")
        out[name] = [values.get(k) for k in keys]
    return out
