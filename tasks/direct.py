"""Direct recommendation: rank 100 candidates (the held-out item and 99 the user never touched) for a user.

Choice templates score every candidate as the blank's span in one batched pass sharing Part A; yes/no
templates ask about each candidate in its own prompt and rank by log p("yes") - log p("no").
"""

from __future__ import annotations

from typing import Any, Iterator

import torch
from torchmetrics import Metric

from recsys_lightning.data.schema import RecData
from recsys_lightning.family import FamilyContext, Request, TaskFamily
from recsys_lightning.generation.generator import Generator
from recsys_lightning.metrics import ranking_metrics
from recsys_lightning.prompts import Template
from recsys_lightning.registry import register_task
from recsys_lightning.requests import NO, YES, next_item_requests

YES_NO = "yes_no/"


@register_task("direct")
class Direct(TaskFamily):
    """Leave-one-out positives with seeded negatives; HR@1/5/10 and NDCG@5/10 over the candidate list."""

    slots = frozenset({"user", "history", "item", "candidates", "probe", "answer"})
    entity_slots = frozenset({"user", "history", "item", "candidates", "probe"})
    meta_columns = ("user_id", "target_item", "candidate_items", "probe_item")
    refits = True

    def __init__(self, weight: float = 1.0, max_history: int = 10, train_candidates: int = 20,
                 eval_negatives: int = 99) -> None:
        """
        Args:
            weight: sampling weight in the training mix.
            max_history: most recent items shown by templates with a history.
            train_candidates: candidates listed in training prompts (the positive among sampled items).
            eval_negatives: negatives beside the held-out item in evaluation (the protocol uses 99).
        """
        super().__init__(weight)
        self.max_history = max_history
        self.train_candidates = train_candidates
        self.eval_negatives = eval_negatives

    def setup(self, context: FamilyContext) -> None:
        super().setup(context)
        self.yes_no = context.answers([YES, NO])

    def requests(self, data: RecData, split: str) -> Iterator[Request]:
        return next_item_requests(data, self.ctx.index, split, self.max_history, self.train_candidates - 1,
                                  self.eval_negatives, self.ctx.seed)

    def eval_rows(self, request: Request, template: Template) -> list[Request]:
        """Yes/no templates: one prompt per candidate, each probing that candidate."""
        if template.target != "answer":
            return [request]
        index, target = self.ctx.index, request.meta["target_item"]
        return [Request({**request.values, "probe": index.render(c), "answer": YES if c == target else NO},
                        {**request.meta, "probe_item": c}) for c in request.meta["candidate_items"]]

    def metrics(self, target: str) -> dict[str, Metric]:
        metrics = ranking_metrics((1, 5, 10), (5, 10))
        return metrics if target == "item" else {YES_NO + name: m for name, m in metrics.items()}

    def _scores(self, generator: Generator, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores, item ids) per row: all candidates (choice templates), or the probe alone (yes/no)."""
        if batch["target_slot"] == "answer":
            yes_no = self.yes_no.scores(generator, batch)
            return (yes_no[:, 0] - yes_no[:, 1])[:, None], batch["probe_item"][:, None]
        device = batch["input_ids"].device
        items = torch.tensor(batch["candidate_items"], device=device)
        return generator.score_items(batch, self.ctx.item_trie.to(device).item_tokens[items]), items

    def evaluate(self, generator: Generator, batch: dict[str, Any], metrics: dict[str, Metric]) -> None:
        scores, items = self._scores(generator, batch)
        hits = items == batch["target_item"][:, None]
        indexes = batch["request_id"][:, None].expand_as(items)
        for metric in metrics.values():
            metric.update(scores.reshape(-1), hits.reshape(-1), indexes=indexes.reshape(-1))

    def predict(self, generator: Generator, batch: dict[str, Any]) -> list[dict[str, Any]]:
        scores, items = self._scores(generator, batch)
        order = scores.argsort(1, descending=True).cpu()
        return [self.ranked_items(int(u), items[b][order[b]].tolist(), scores[b][order[b]].tolist())
                for b, u in enumerate(batch["user_id"])]
