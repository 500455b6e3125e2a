"""Sequential recommendation: a user's recent items -> the next item, decoded over the whole catalog by a Trie.

Full-catalog templates are evaluated (HR@k, NDCG@k, leave-one-out); templates that list candidates or ask
yes/no about a probe item add training signal.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Iterator, Literal

import numpy as np
import torch
from torchmetrics import Metric

from recsys_lightning.data.schema import RecData
from recsys_lightning.data.splits import training_sequences
from recsys_lightning.data.transitions import Transitions
from recsys_lightning.family import DecodingOption, Request, TaskFamily
from recsys_lightning.generation.generator import Generator
from recsys_lightning.metrics import ranking_metrics, slice_metrics, update_ranking, update_slice
from recsys_lightning.prompts import Template
from recsys_lightning.registry import register_task
from recsys_lightning.requests import next_item_requests


@dataclass(frozen=True)
class TransitionPrior(DecodingOption):
    """A first-order Markov log-prior added to the model's item scores in decoding (not part of RecSysLLM):
    `weight * log p(item | the history's last items)`, counted by `data/transitions.py`.

    Args:
        weight: the prior's weight; 0 ranks by the model alone.
        smoothing: pseudo-count of the prior, spread over the items by their training frequency.
        context: how many of the history's last items the prior mixes p(item | that item) over.
        decay: the mixture's weight ratio from one of those items to the one before it, and the weight ratio of a
            pair's counts from one step apart to two (and so on, up to `window`).
        window: pairs are counted up to this many steps apart (1: right after only).
        counts: "training", the users' training parts (what the model was fitted on); "known", every interaction a
            request comes after, so test requests also count every user's validation item (which their histories
            hold), as a model refitted on training and validation would.
    """

    weight: float = 0.0
    smoothing: float = 1.0
    context: int = 1
    decay: float = 1.0
    window: int = 1
    counts: Literal["training", "known"] = "training"

    def __post_init__(self) -> None:
        if self.weight < 0 or self.smoothing <= 0 or self.context < 1 or self.window < 1 or not 0 < self.decay <= 1:
            raise ValueError(f"sequential prior: need weight >= 0, smoothing > 0, context >= 1, window >= 1 and "
                             f"0 < decay <= 1, got {self}")
        if self.counts not in ("training", "known"):
            raise ValueError(f"sequential prior: counts must be 'training' or 'known', got {self.counts!r}")


@dataclass(frozen=True)
class Slices(DecodingOption):
    """Slices of the evaluated requests reported beside the overall HR@k and NDCG@k (scoring only; the rows and
    their ranking are the same): `cold`, requests whose target item has at most `cold_item` interactions in the
    users' training parts; `short`, users with at most `short_history` items in their training part."""

    cold_item: int = 5
    short_history: int = 3

    def __post_init__(self) -> None:
        if self.cold_item < 0 or self.short_history < 0:
            raise ValueError(f"sequential slices: need cold_item >= 0 and short_history >= 0, got {self}")


@register_task("sequential")
class Sequential(TaskFamily):
    """Leave-one-out next-item prediction; training uses every prefix window of the training part, or only the
    whole of it for templates that predict the history too (a `prefix: history` template learns every
    position from one window, as a causal sequential model does)."""

    slots = frozenset({"user", "history", "item", "candidates", "probe", "answer"})
    entity_slots = frozenset({"user", "history", "item", "candidates", "probe"})
    meta_columns = ("user_id", "target_item", "seen_items")
    refits = True

    def __init__(self, weight: float = 1.0, max_history: int = 20, exclude_history: bool = True,
                 num_candidates: int = 20, ks: tuple[int, ...] = (5, 10), every_window: bool = True,
                 crops: int = 0, prior: TransitionPrior | None = None, slices: Slices | None = None) -> None:
        """
        Args:
            weight: sampling weight in the training mix.
            max_history: most recent items shown in a prompt.
            exclude_history: never recommend an item the user already has.
            num_candidates: items listed by candidate templates (the next item among sampled ones).
            ks: cut-offs of HR@k and NDCG@k.
            every_window: train on every prefix window of a user's training part; False: on the whole part only.
            crops: extra training requests a user, each a seeded random window of the training part (at least
                two items), so every item is also predicted from short contexts (measured in docs/results.md).
            prior: a transition prior added to the item scores in decoding (`TransitionPrior`; a mapping of its
                fields in a config); None: none.
            slices: thresholds of the cold-item and short-history slices (`Slices`; a mapping of its fields).
        """
        super().__init__(weight)
        if max_history < 1 or num_candidates < 2 or crops < 0:
            raise ValueError(f"sequential: need max_history >= 1, num_candidates >= 2 and crops >= 0, got "
                             f"{max_history}, {num_candidates}, {crops}")
        self.max_history = max_history
        self.exclude_history = exclude_history
        self.num_candidates = num_candidates
        self.ks = tuple(sorted(ks))
        self.every_window = every_window
        self.crops = crops
        self.prior = TransitionPrior.of(prior) or TransitionPrior()
        self.slices = Slices.of(slices) or Slices()
        self._transitions: dict[str, Transitions] = {}

    def requests(self, data: RecData, split: str) -> Iterator[Request]:
        negatives = self.num_candidates - 1
        return next_item_requests(data, self.ctx.index, split, self.max_history, negatives, negatives, self.ctx.seed,
                                  self.every_window, self.crops)

    def evaluates(self, template: Template) -> bool:
        return template.target == "item" and "candidates" not in template.slots

    def metrics(self, target: str) -> dict[str, Metric]:
        slices = {**slice_metrics("cold", self.ks), **slice_metrics("short", self.ks)}
        return {**ranking_metrics(self.ks, self.ks), **slices}

    @cached_property
    def training_counts(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(interactions per item, items per user) over the users' training parts, which the slices read."""
        parts = training_sequences(self.ctx.data)
        items = np.bincount(np.concatenate(parts), minlength=self.ctx.data.num_items)
        return torch.from_numpy(items), torch.tensor([len(p) for p in parts])

    def _rank(self, generator: Generator, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        device = batch["input_ids"].device
        trie = self.ctx.item_trie.to(device)
        exclude = None
        if self.exclude_history:
            exclude = torch.zeros(len(batch["seen_items"]), trie.num_items, dtype=torch.bool, device=device)
            for row, items in enumerate(batch["seen_items"]):
                exclude[row, items] = True
        bias = None
        if self.prior.weight:
            histories = [list(items) for items in batch["seen_items"]]
            # counted over the training parts, val and test requests share one count
            split = batch["split"] if self.prior.counts == "known" else "val"
            prior = self.transitions(split).log_prior(histories, self.prior.smoothing, self.prior.context,
                                                      self.prior.decay)
            bias = self.prior.weight * prior.to(device)
        return generator.rank_items(batch, trie, self.ks[-1], exclude, bias)

    def transitions(self, split: str) -> Transitions:
        """Item -> next item counts over what the split's requests come after, for the transition prior (built once
        per split)."""
        if split not in self._transitions:
            self._transitions[split] = Transitions(self.ctx.data, self.prior.window, self.prior.decay, split)
        return self._transitions[split]

    def evaluate(self, generator: Generator, batch: dict[str, Any], metrics: dict[str, Metric]) -> None:
        ranked, _ = self._rank(generator, batch)
        target = batch["target_item"]
        update_ranking(metrics, ranked, target, batch["request_id"])
        items, histories = (c.to(ranked.device) for c in self.training_counts)
        update_slice(metrics, "cold", self.ks, ranked, target, items[target] <= self.slices.cold_item)
        update_slice(metrics, "short", self.ks, ranked, target,
                     histories[batch["user_id"].to(ranked.device)] <= self.slices.short_history)

    def predict(self, generator: Generator, batch: dict[str, Any]) -> list[dict[str, Any]]:
        ranked, scores = self._rank(generator, batch)
        return [self.ranked_items(int(u), r.tolist(), s.tolist()) for u, r, s in zip(batch["user_id"], ranked, scores)]
