"""Semantic item ids: each item's code from a text embedding of its content, quantised by residual k-means.

An item's content is its textualized description (`describe_item`) with the item's own name left out, encoded by a
pretrained sentence encoder (all-MiniLM-L6-v2, mean-pooled and L2-normalised like sentence-transformers). Level 1
runs k-means (k-means++ seeding, Lloyd iterations) over the encodings, level 2 over what level 1's centroids leave
unexplained (the residuals), and so on for L levels; a final level numbers the items that share all L codes
0, 1, 2, ... so that every item's code is unique (TIGER's collision level). Similar items share code prefixes.

The quantiser is fitted on the items of the training interactions only (in a fixed order, by raw item id) and every
item is then assigned to the nearest centroids, and collisions are numbered in training order: no held-out
interaction, and no item that only held-out interactions hold, changes a training item's code.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from recsys_lightning.data.schema import RecData
from recsys_lightning.data.textualize import describe_item

LLOYD_ITERATIONS = 100
NAME = "\x00"  # stands for the item's name in its description, then removed


class _Unnamed:
    """Names every item with one marker, cut from its description afterwards: the text without the name."""

    def render(self, item: int) -> str:
        return NAME


def content_texts(data: RecData) -> list[str]:
    """Each item's textualized description without its name, whitespace collapsed: what the encoder reads."""
    return [" ".join(describe_item(data, _Unnamed(), i).text.replace(NAME, " ").split()) for i in range(data.num_items)]


def _nearest(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of each row's nearest centroid (squared Euclidean distance; the lowest index wins ties)."""
    distances = (centroids ** 2).sum(1)[None, :] - 2.0 * x @ centroids.T
    return distances.argmin(1)


def _plus_plus(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding: each next centroid drawn in proportion to the squared distance to the nearest one so far."""
    chosen = [int(rng.integers(len(x)))]
    closest = ((x - x[chosen[0]]) ** 2).sum(1)
    for _ in range(1, k):
        total = closest.sum()
        pick = int(rng.choice(len(x), p=closest / total)) if total > 0 else int(rng.integers(len(x)))
        chosen.append(pick)
        closest = np.minimum(closest, ((x - x[pick]) ** 2).sum(1))
    return x[chosen].copy()


def kmeans(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """(min(k, n), d) centroids of `x` (n, d): k-means++ seeding then Lloyd iterations until no point moves; an
    emptied cluster keeps its centroid. Deterministic for a seed and an order of the rows."""
    k = min(k, len(x))
    centroids = _plus_plus(x, k, np.random.default_rng(seed))
    assigned = _nearest(x, centroids)
    for _ in range(LLOYD_ITERATIONS):
        sums = np.zeros_like(centroids)
        np.add.at(sums, assigned, x)
        counts = np.bincount(assigned, minlength=k)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled, None]
        moved = _nearest(x, centroids)
        if np.array_equal(moved, assigned):
            break
        assigned = moved
    return centroids


def residual_kmeans(fit: np.ndarray, levels: int, codes: int, seed: int) -> list[np.ndarray]:
    """Centroids of each level: level l clusters what levels < l leave of the `fit` rows (their residuals)."""
    books, residual = [], fit.copy()
    for level in range(levels):
        centroids = kmeans(residual, codes, seed + level)
        books.append(centroids)
        residual = residual - centroids[_nearest(residual, centroids)]
    return books


def quantize(x: np.ndarray, books: Sequence[np.ndarray]) -> np.ndarray:
    """(n, L) code of every row of `x`: the nearest centroid of each level to what the levels before leave."""
    out, residual = np.zeros((len(x), len(books)), dtype=np.int64), x.copy()
    for level, centroids in enumerate(books):
        out[:, level] = _nearest(residual, centroids)
        residual = residual - centroids[out[:, level]]
    return out


def collision_level(prefixes: np.ndarray, order: Sequence[int]) -> np.ndarray:
    """(n,) final code: 0, 1, 2, ... among items with the same code prefix, numbered in `order` (all items)."""
    taken: dict[tuple[int, ...], int] = {}
    out = np.zeros(len(prefixes), dtype=np.int64)
    for item in order:
        key = tuple(prefixes[item].tolist())
        out[item] = taken.get(key, 0)
        taken[key] = out[item] + 1
    return out


def semantic_codes(embeddings: np.ndarray, fit_items: Sequence[int], order: Sequence[int], levels: int, codes: int,
                   seed: int) -> np.ndarray:
    """(n, L + 1) codes of every item from its embedding: residual k-means fitted on `fit_items` (rows in that
    order), every item assigned, then the collision level numbered in `order`."""
    x = embeddings.astype(np.float64)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)  # sentence-transformers' Normalize
    books = residual_kmeans(x[np.asarray(fit_items, dtype=np.int64)], levels, codes, seed)
    prefixes = quantize(x, books)
    return np.concatenate([prefixes, collision_level(prefixes, order)[:, None]], 1)


def code_stats(codes: np.ndarray) -> dict[str, int]:
    """How many items needed the collision level (final code > 0) and the largest group sharing all L codes."""
    _, sizes = np.unique(codes[:, :-1], axis=0, return_counts=True)
    return {"collisions": int((codes[:, -1] > 0).sum()), "largest_collision_group": int(sizes.max()),
            "distinct_prefixes": int(len(sizes))}


def level_token(level: int, code: int) -> str:
    """The vocabulary token of `code` at `level`: `<a_12>`, `<b_3>`, ..."""
    return f"<{chr(ord('a') + level)}_{code}>"
