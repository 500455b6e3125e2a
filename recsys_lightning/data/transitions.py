"""First-order item transitions (item -> next item) counted over the users' training parts.

They give the Markov prior that sequential decoding can add to the model's item scores (the sequential family's
`transition_prior`) and the count baseline of `scripts/transition_baseline.py`. Only training parts are counted
(all but each user's last two items), so no validation or test item shapes them.
"""

from __future__ import annotations

import numpy as np
import torch

from recsys_lightning.data.schema import RecData
from recsys_lightning.data.splits import training_sequences


class Transitions:
    """Counts c(i, j) of item j right after item i as CSR rows, and every item's training count (popularity)."""

    def __init__(self, data: RecData) -> None:
        sequences = training_sequences(data)
        n = data.num_items
        self.popularity = torch.from_numpy(np.bincount(np.concatenate(sequences), minlength=n)).double()
        pairs = np.concatenate([s[:-1] * n + s[1:] for s in sequences if len(s) > 1] or [np.empty(0, np.int64)])
        keys, counts = np.unique(pairs, return_counts=True)
        self.row_starts = torch.from_numpy(np.searchsorted(keys // n, np.arange(n + 1)))
        self.columns = torch.from_numpy(keys % n)
        self.counts = torch.from_numpy(counts).double()
        self.num_items = n

    def _span(self, item: int) -> slice:
        """Where `item`'s followers lie in `columns` and `counts`."""
        return slice(int(self.row_starts[item]), int(self.row_starts[item + 1]))

    def followers(self, item: int) -> dict[int, int]:
        """The items seen right after `item` in training, with how often."""
        span = self._span(item)
        return dict(zip(self.columns[span].tolist(), self.counts[span].long().tolist()))

    def log_prior(self, last_items: torch.Tensor, smoothing: float) -> torch.Tensor:
        """log p(j | i) (B, num_items) for each last item i: (c(i, j) + smoothing * q(j)) / (c(i) + smoothing), q the
        items' training frequencies, so an item never seen after i keeps a popularity-shaped floor."""
        if smoothing <= 0:
            raise ValueError(f"transition prior smoothing must be > 0, got {smoothing}")
        frequency = self.popularity.clamp(min=1)
        floor = smoothing * frequency / frequency.sum()
        prior = floor.expand(len(last_items), -1).clone()
        totals = torch.empty(len(last_items), dtype=torch.float64)
        for row, item in enumerate(last_items.tolist()):
            span = self._span(item)
            prior[row, self.columns[span]] += self.counts[span]
            totals[row] = self.counts[span].sum()
        return (prior.log() - (totals + smoothing).log()[:, None]).float()
