"""Item indexing: how each item is written as text, and so as the token sequence the Trie holds."""

from __future__ import annotations

from typing import Callable

import numpy as np

from recsys_lightning.data.schema import DataError, RecData, seeded_hash
from recsys_lightning.data.splits import training_sequences


class ItemIndex:
    """A one-to-one map between dense item ids and the strings that stand for them in prompts."""

    def __init__(self, kind: str, strings: list[str]) -> None:
        if len(set(strings)) != len(strings):
            raise DataError(f"item index {kind!r}: two items render to the same string")
        self.kind = kind
        self.strings = strings
        self._lookup = {s: i for i, s in enumerate(strings)}

    def __len__(self) -> int:
        return len(self.strings)

    def render(self, item: int) -> str:
        return self.strings[item]

    def parse(self, text: str) -> int | None:
        """The item a string stands for, or None."""
        return self._lookup.get(text.strip())


def sequential_ids(data: RecData, seed: int) -> ItemIndex:
    """Numbers 1..N in order of first appearance over training interactions, then the rest (leak-free)."""
    number = np.zeros(data.num_items, dtype=np.int64)
    nxt = 1
    for seq in training_sequences(data):
        for item in seq:
            if number[item] == 0:
                number[item] = nxt
                nxt += 1
    rest = sorted((i for i in range(data.num_items) if number[i] == 0), key=lambda i: seeded_hash(seed, data.items[i]))
    for item in rest:
        number[item] = nxt
        nxt += 1
    return ItemIndex("sequential", [str(n) for n in number])


def random_ids(data: RecData, seed: int) -> ItemIndex:
    """A seeded random permutation of 1..N."""
    perm = np.random.default_rng(seed).permutation(data.num_items) + 1
    return ItemIndex("random", [str(n) for n in perm])


INDEXERS: dict[str, Callable[[RecData, int], ItemIndex]] = {"sequential": sequential_ids, "random": random_ids}


def build_index(kind: str, data: RecData, seed: int) -> ItemIndex:
    if kind not in INDEXERS:
        raise DataError(f"data.item_index: unknown indexing {kind!r}; expected one of {sorted(INDEXERS)}")
    return INDEXERS[kind](data, seed)
