"""Request builders shared by the task families: next-item requests over time-ordered histories (sequential,
direct) and per-interaction requests over the 80/10/10 review split (rating, explanation, review)."""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from recsys_lightning.data.indexing import ItemIndex
from recsys_lightning.data.schema import RecData, seeded_hash
from recsys_lightning.data.splits import (SPLIT_IDS, TRAINING_SPLITS, known_sequences, leave_one_out, review_split,
                                          sample_negatives)
from recsys_lightning.data.textualize import user_name
from recsys_lightning.family import Request

YES, NO = "yes", "no"


def sample_items(pool: np.ndarray, exclude: set[int], n: int, *keys: object) -> list[int]:
    """`n` distinct items of `pool` outside `exclude`, drawn by a generator seeded with `keys` (stable across runs)."""
    if len(pool) - len(exclude) < n:
        raise ValueError(f"only {len(pool) - len(exclude)} items are left to sample {n} from")
    rng = np.random.default_rng(seeded_hash(*keys))
    picked: dict[int, None] = {}
    while len(picked) < n:
        for item in pool[rng.integers(len(pool), size=2 * n + 1)].tolist():
            if item not in exclude and len(picked) < n:
                picked[item] = None
    return list(picked)


def next_item_request(index: ItemIndex, user: int, history: list[int], target: int, negatives: list[int],
                      max_history: int, *keys: object) -> Request:
    """A user's recent items and the next one, plus a shuffled candidate list (the next item among `negatives`)
    and a yes/no probe (the next item or a negative, by a seeded coin) for choice and yes/no templates."""
    rng = np.random.default_rng(seeded_hash(*keys))
    candidates = [target, *negatives]
    rng.shuffle(candidates)
    probe = target if rng.random() < 0.5 or not negatives else negatives[0]
    return Request(
        values={"user": user_name(user), "history": [index.render(i) for i in history[-max_history:]],
                "item": index.render(target), "candidates": [index.render(i) for i in candidates],
                "probe": index.render(probe), "answer": YES if probe == target else NO},
        meta={"user_id": user, "target_item": target, "seen_items": list(history), "candidate_items": candidates,
              "probe_item": probe},
    )


def crop_window(length: int, *keys: object) -> tuple[int, int]:
    """A seeded random contiguous window [start, stop) of at least two items of a sequence of `length` items."""
    rng = np.random.default_rng(seeded_hash(*keys))
    size = int(rng.integers(2, length + 1))
    start = int(rng.integers(0, length - size + 1))
    return start, start + size


def next_item_requests(data: RecData, index: ItemIndex, split: str, max_history: int, train_negatives: int,
                       eval_negatives: int, seed: int, every_window: bool = True, crops: int = 0
                       ) -> Iterator[Request]:
    """Leave-one-out requests: every prefix window of the training part (or, without `every_window`, only the
    longest: the whole training part), or each user's validation/test item. The 'refit' split trains like 'train'
    on the training part plus the validation item.

    In training, `crops` more requests a user cut from seeded random windows of the training part (`crop_window`),
    so a causal row also learns each item from short contexts that start anywhere, not only at the first item.

    Training negatives come from the items seen in training (in raw-id order) and avoid only the items up to the
    target, so no held-out item shapes a training prompt; evaluation negatives are the protocol's: items the
    user never interacted with, seeded by user.
    """
    training = split in TRAINING_SPLITS
    pool = np.unique(np.concatenate(known_sequences(data, split))) if training else np.empty(0, np.int64)
    for user in range(data.num_users):
        cut = leave_one_out(data.sequence(user), split)
        if cut is None:
            continue
        history, target = [int(i) for i in cut[0]], cut[1]
        if not training:
            negatives = sample_negatives(data, user, seed, eval_negatives).tolist()
            yield next_item_request(index, user, history, target, negatives, max_history, seed, split,
                                    data.users[user])
            continue
        sequence = [*history, target]
        for t in range(1 if every_window else len(sequence) - 1, len(sequence)):
            negatives = sample_items(pool, set(sequence[: t + 1]), train_negatives, seed, data.users[user], t)
            yield next_item_request(index, user, sequence[:t], sequence[t], negatives, max_history, seed,
                                    data.users[user], t)
        for k in range(crops if len(sequence) > 1 else 0):
            start, stop = crop_window(len(sequence), seed, "crop", data.users[user], k)
            negatives = sample_items(pool, set(sequence[:stop]), train_negatives, seed, data.users[user], "crop", k)
            yield next_item_request(index, user, sequence[start:stop - 1], sequence[stop - 1], negatives,
                                    max_history, seed, data.users[user], "crop", k)


def review_rows(data: RecData, split: str, seed: int) -> Iterator[int]:
    """Interaction rows of `split` under the 80/10/10 review split (every user and item keeps a training row)."""
    if np.isnan(data.rating).all():
        raise ValueError(f"dataset {data.name!r} has no ratings or reviews; this family needs them")
    wanted = SPLIT_IDS[split]
    yield from np.flatnonzero(review_split(data, seed) == wanted).tolist()


def interaction_meta(data: RecData, row: int) -> dict[str, Any]:
    """Who rated what: the metadata every per-interaction request carries."""
    return {"user_id": int(data.user[row]), "item_id": int(data.item[row])}
