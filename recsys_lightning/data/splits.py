"""Splits used in the literature: leave-one-out over each user's time-ordered sequence."""

from __future__ import annotations

import numpy as np

from recsys_lightning.data.schema import RecData


def leave_one_out(sequence: np.ndarray, split: str) -> tuple[np.ndarray, int] | None:
    """(history, target) of one user: last item is test, second to last validation.

    For 'train' the target is the last training item (the history windows are cut by the caller).
    Users with fewer than three interactions have no split; None is returned.
    """
    if len(sequence) < 3:
        return None
    cut = {"train": len(sequence) - 3, "val": len(sequence) - 2, "test": len(sequence) - 1}[split]
    return sequence[:cut], int(sequence[cut])


def training_sequences(data: RecData) -> list[np.ndarray]:
    """Every user's interactions that may be trained on (all but the last two)."""
    return [data.sequence(u)[:-2] for u in range(data.num_users)]
