"""Sequential recommendation: a user's recent items -> the next item, decoded over the whole catalog by a Trie."""

from __future__ import annotations

from typing import Any, Iterator

import torch
from torchmetrics import Metric

from recsys_lightning.data.schema import RecData
from recsys_lightning.data.splits import leave_one_out
from recsys_lightning.data.textualize import user_name
from recsys_lightning.family import FamilyContext, Request, TaskFamily
from recsys_lightning.generation.generator import Generator
from recsys_lightning.generation.trie import ItemTrie
from recsys_lightning.metrics import ranking_metrics, update_ranking
from recsys_lightning.registry import register_task


@register_task("sequential")
class Sequential(TaskFamily):
    """Leave-one-out next-item prediction; training uses every prefix window of the training part."""

    slots = frozenset({"user", "history", "item"})
    entity_slots = frozenset({"user", "history", "item"})
    meta_columns = ("user_id", "target_item", "seen_items")

    def __init__(self, weight: float = 1.0, max_history: int = 20, exclude_history: bool = True,
                 ks: tuple[int, ...] = (5, 10)) -> None:
        """
        Args:
            weight: sampling weight in the training mix.
            max_history: most recent items shown in a prompt.
            exclude_history: never recommend an item the user already has.
            ks: cut-offs of HR@k and NDCG@k.
        """
        super().__init__(weight)
        if max_history < 1:
            raise ValueError(f"sequential: max_history must be >= 1, got {max_history}")
        self.max_history = max_history
        self.exclude_history = exclude_history
        self.ks = tuple(sorted(ks))
        self.trie: ItemTrie | None = None

    def setup(self, context: FamilyContext) -> None:
        super().setup(context)
        renders = [context.index.render(i) for i in range(len(context.index))]
        sequences = context.tokenizer(renders, add_special_tokens=False)["input_ids"]
        self.trie = ItemTrie(sequences, context.tokenizer.convert_tokens_to_ids("<|endofpiece|>"))

    def _request(self, user: int, history: Any, target: int) -> Request:
        index = self.ctx.index
        window = history[-self.max_history:]
        return Request(
            values={"user": user_name(user), "history": [index.render(i) for i in window],
                    "item": index.render(target)},
            meta={"user_id": user, "target_item": target, "seen_items": [int(i) for i in history]},
        )

    def requests(self, data: RecData, split: str) -> Iterator[Request]:
        for user in range(data.num_users):
            cut = leave_one_out(data.sequence(user), split)
            if cut is None:
                continue
            history, target = cut
            if split != "train":
                yield self._request(user, history, target)
                continue
            train = [*history, target]
            for t in range(1, len(train)):
                yield self._request(user, train[:t], train[t])

    def metrics(self) -> dict[str, Metric]:
        return ranking_metrics(self.ks, self.ks)

    def _rank(self, generator: Generator, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.trie is not None
        device = batch["input_ids"].device
        exclude = None
        if self.exclude_history:
            exclude = torch.zeros(len(batch["seen_items"]), self.trie.num_items, dtype=torch.bool, device=device)
            for row, items in enumerate(batch["seen_items"]):
                exclude[row, items] = True
        return generator.rank_items(batch, self.trie.to(device), self.ks[-1], exclude)

    def evaluate(self, generator: Generator, batch: dict[str, Any], metrics: dict[str, Metric]) -> None:
        ranked, _ = self._rank(generator, batch)
        update_ranking(metrics, ranked, batch["target_item"], batch["request_id"])

    def predict(self, generator: Generator, batch: dict[str, Any]) -> list[dict[str, Any]]:
        ranked, scores = self._rank(generator, batch)
        data = self.ctx.data
        return [{"user": data.users[int(u)],
                 "items": [{"item": data.items[int(i)], "score": round(float(s), 4)} for i, s in zip(r, sc) if i >= 0]}
                for u, r, sc in zip(batch["user_id"], ranked, scores)]
