"""First-order item transitions (item -> next item, or an item a few steps later) counted over the users' training
parts, or over every interaction a split's requests come after.

They give the Markov prior that sequential decoding can add to the model's item scores (the sequential family's
`prior`) and the count baseline of `benchmarks/transition_baseline.py`. By default only training parts are
counted (all but each user's last two items); counted for the 'test' (or 'refit') split, the validation items join
them (each user's second to last, which every test history holds), and no test item ever does.
"""

from __future__ import annotations

import numpy as np
import torch

from recsys_lightning.data.schema import RecData
from recsys_lightning.data.splits import known_sequences


class Transitions:
    """Counts c(i, j) of item j after item i as CSR rows, and every item's training count (popularity).

    With `window` w > 1, j counts up to w steps after i, weighted `decay` ** (steps - 1): sparse pairs borrow from
    near-adjacent ones. `split` says whose requests the counts serve: every interaction before its held-out items
    (`splits.known_sequences`)."""

    def __init__(self, data: RecData, window: int = 1, decay: float = 1.0, split: str = "val") -> None:
        self._count(known_sequences(data, split), data.num_items, window, decay)

    @classmethod
    def of_sequences(cls, sequences: list[np.ndarray], num_items: int, window: int = 1, decay: float = 1.0
                     ) -> Transitions:
        """Counts over given item sequences (an exported model's known histories, without its dataset)."""
        transitions = cls.__new__(cls)
        transitions._count(sequences, num_items, window, decay)
        return transitions

    def _count(self, sequences: list[np.ndarray], n: int, window: int, decay: float) -> None:
        """Fill the counts and popularity from `sequences` of item ids below `n`."""
        if window < 1 or not 0 < decay <= 1:
            raise ValueError(f"transitions: need window >= 1 and 0 < decay <= 1, got {window}, {decay}")
        sequences = [np.asarray(s, dtype=np.int64) for s in sequences]
        self.popularity = torch.from_numpy(np.bincount(np.concatenate(sequences), minlength=n)).double()
        self.frequency = self.popularity.clamp(min=1) / self.popularity.clamp(min=1).sum()  # q, every item above 0
        pairs, weights = [np.empty(0, np.int64)], [np.empty(0)]
        for step in range(1, window + 1):
            for s in sequences:
                if len(s) > step:
                    pairs.append(s[:-step] * n + s[step:])
                    weights.append(np.full(len(s) - step, decay ** (step - 1)))
        keys, where = np.unique(np.concatenate(pairs), return_inverse=True)
        self.row_starts = torch.from_numpy(np.searchsorted(keys // n, np.arange(n + 1)))
        self.columns = torch.from_numpy(keys % n)
        self.counts = torch.from_numpy(np.bincount(where, weights=np.concatenate(weights), minlength=len(keys)))
        self.num_items = n

    def _span(self, item: int) -> slice:
        """Where `item`'s followers lie in `columns` and `counts`."""
        return slice(int(self.row_starts[item]), int(self.row_starts[item + 1]))

    def followers(self, item: int) -> dict[int, float]:
        """The items seen after `item` in training (within the window), with their weighted counts."""
        span = self._span(item)
        return dict(zip(self.columns[span].tolist(), self.counts[span].tolist()))

    def log_prior(self, histories: list[list[int]], smoothing: float, context: int = 1,
                  decay: float = 1.0) -> torch.Tensor:
        """log p(j | history) (B, num_items): the first-order p(j | i) of the history's last `context` items mixed
        with weights 1, decay, decay^2, ... (the last item first), each p(j | i) = (c(i, j) + smoothing * q(j)) /
        (c(i) + smoothing), q the items' training frequencies, so an item never seen after i keeps a
        popularity-shaped floor."""
        if smoothing <= 0 or context < 1 or not 0 < decay <= 1:
            raise ValueError(f"transition prior: need smoothing > 0, context >= 1 and 0 < decay <= 1, got "
                             f"{smoothing}, {context}, {decay}")
        mixture = torch.zeros(len(histories), self.num_items, dtype=torch.float64)
        weights = torch.zeros(len(histories), 1, dtype=torch.float64)
        for back in range(context):
            rows = [row for row, items in enumerate(histories) if len(items) > back]
            if not rows:
                break
            items = torch.tensor([histories[row][-1 - back] for row in rows])
            mixture[rows] += decay ** back * self._first_order(items, smoothing)
            weights[rows] += decay ** back
        return (mixture / weights).log().float()

    def _first_order(self, items: torch.Tensor, smoothing: float) -> torch.Tensor:
        """p(j | i) (B, num_items) for each item i, smoothed toward the training frequencies."""
        prior = (smoothing * self.frequency).expand(len(items), -1).clone()
        totals = torch.empty(len(items), dtype=torch.float64)
        for row, item in enumerate(items.tolist()):
            span = self._span(item)
            prior[row, self.columns[span]] += self.counts[span]
            totals[row] = self.counts[span].sum()
        return prior / (totals + smoothing)[:, None]
