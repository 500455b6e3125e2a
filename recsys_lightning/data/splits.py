"""Splits used in the literature: leave-one-out over each user's time-ordered sequence (sequential, direct),
80/10/10 per interaction (rating, explanation, review), and seeded negatives for direct recommendation."""

from __future__ import annotations

import numpy as np

from recsys_lightning.data.schema import RecData, seeded_hash


def leave_one_out(sequence: np.ndarray, split: str) -> tuple[np.ndarray, int] | None:
    """(history, target) of one user: last item is test, second to last validation.

    For 'train' the target is the last training item (the history windows are cut by the caller); for 'refit'
    (training on the validation items too, for a final model) it is the validation item.
    Users with fewer than three interactions have no split; None is returned.
    """
    if len(sequence) < 3:
        return None
    cut = {"train": len(sequence) - 3, "val": len(sequence) - 2, "refit": len(sequence) - 2,
           "test": len(sequence) - 1}[split]
    return sequence[:cut], int(sequence[cut])


TRAINING_SPLITS = ("train", "refit")  # the splits fitted on ('refit' also takes in each user's validation item)


def training_sequences(data: RecData) -> list[np.ndarray]:
    """Every user's interactions that may be trained on (all but the last two)."""
    return known_sequences(data, "val")


def known_sequences(data: RecData, split: str) -> list[np.ndarray]:
    """Every user's interactions before `split`'s held-out item: the training parts for 'train' and 'val', and the
    validation items too for 'refit' and 'test' (the history of a test request already holds its user's one)."""
    held_out = {"train": 2, "val": 2, "refit": 1, "test": 1}[split]
    return [data.sequence(u)[:-held_out] for u in range(data.num_users)]


SPLIT_IDS = {"train": 0, "val": 1, "test": 2}


def review_split(data: RecData, seed: int, ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> np.ndarray:
    """Per interaction 0 (train), 1 (val) or 2 (test): a seeded 80/10/10 draw in which every user and item
    keeps at least one training interaction (one of its val/test interactions, chosen by the draw, moves to
    train when needed). This is the split of rating, explanation and review tasks in P5 and PETER."""
    if len(ratios) != 3 or min(ratios) < 0 or abs(sum(ratios) - 1.0) > 1e-6:
        raise ValueError(f"review split ratios must be three non-negative numbers summing to 1, got {ratios}")
    n = len(data.item)
    order = np.random.default_rng(seed).permutation(n)
    n_train, n_val = round(ratios[0] * n), round(ratios[1] * n)
    split = np.empty(n, dtype=np.int8)
    split[order[:n_train]] = 0
    split[order[n_train:n_train + n_val]] = 1
    split[order[n_train + n_val:]] = 2
    for column, size in ((data.user, data.num_users), (data.item, data.num_items)):
        covered = np.zeros(size, dtype=bool)
        covered[column[split == 0]] = True
        for row in order:  # in draw order: the first held-out interaction of an uncovered user/item moves
            if not covered[column[row]]:
                split[row] = 0
                covered[column[row]] = True
    return split


def sample_negatives(data: RecData, user: int, seed: int, n: int = 99) -> np.ndarray:
    """`n` distinct items `user` never interacted with, drawn by a generator seeded with the user's raw id, so
    each user's candidate list is the same in every run (direct recommendation: 1 positive + 99 negatives)."""
    seen = set(data.sequence(user).tolist())
    if data.num_items - len(seen) < n:
        raise ValueError(f"user {data.users[user]!r} has only {data.num_items - len(seen)} unseen items; "
                         f"{n} negatives were asked for")
    rng = np.random.default_rng(seeded_hash(seed, "negatives", data.users[user]))
    picked: dict[int, None] = {}
    while len(picked) < n:
        for item in rng.integers(data.num_items, size=2 * n).tolist():
            if item not in seen and len(picked) < n:
                picked[item] = None
    return np.fromiter(picked, dtype=np.int64, count=n)
