"""Explanation generation: user and item (and a feature hint) -> a review sentence explaining the choice.

Targets come from `data/explanations.py` (a review sentence mentioning a frequent item feature, the feature
word being the hint); requests follow the 80/10/10 review split. Greedy decoding (or beam search or seeded sampling, the `decoding`
option); BLEU-4 and ROUGE-1/2/L.
"""

from __future__ import annotations

from typing import Any, Iterator

from torchmetrics import Metric

from recsys_lightning.data.explanations import extract_explanations
from recsys_lightning.data.schema import RecData
from recsys_lightning.data.splits import review_split
from recsys_lightning.data.textualize import user_name
from recsys_lightning.family import Request, TaskFamily
from recsys_lightning.generation.generator import Generator
from recsys_lightning.metrics import text_metrics, update_text
from recsys_lightning.registry import register_task
from recsys_lightning.requests import interaction_meta, review_rows
from recsys_lightning.texts import TextDecodingOption, generate_text


@register_task("explanation")
class Explanation(TaskFamily):
    """Explain why a user likes an item, optionally around a given feature word."""

    slots = frozenset({"user", "item", "feature", "explanation"})
    entity_slots = frozenset({"user", "item", "feature"})
    meta_columns = ("user_id", "item_id", "reference")

    def __init__(self, weight: float = 1.0, max_new_tokens: int = 32,
                 decoding: TextDecodingOption | None = None) -> None:
        """
        Args:
            weight: sampling weight in the training mix.
            max_new_tokens: longest generated explanation in tokens.
            decoding: how explanations are decoded (`TextDecodingOption`; a mapping of its fields in a config, e.g.
                `{method: beam, num_beams: 4}` or `{method: sample, top_p: 0.9, seed: 1}`); None: greedy.
        """
        super().__init__(weight)
        self.max_new_tokens = max_new_tokens
        self.decoding = TextDecodingOption.of(decoding) or TextDecodingOption()

    def generate(self, generator: Generator, batch: dict[str, Any]) -> list[str]:
        """The batch's explanations under the family's decoding."""
        return generate_text(self.ctx, generator, batch, self.max_new_tokens, self.decoding)

    def requests(self, data: RecData, split: str) -> Iterator[Request]:
        # feature words from the training split's reviews only: no held-out review shapes the targets
        explanations = extract_explanations(data, review_split(data, self.ctx.seed) == 0)
        index = self.ctx.index
        for row in review_rows(data, split, self.ctx.seed):
            found = explanations[row]
            if found is None:
                continue
            meta = interaction_meta(data, row)
            yield Request({"user": user_name(meta["user_id"]), "item": index.render(meta["item_id"]),
                           "feature": found.feature, "explanation": found.sentence},
                          {**meta, "reference": found.sentence})

    def metrics(self, target: str) -> dict[str, Metric]:
        return text_metrics(4)

    def evaluate(self, generator: Generator, batch: dict[str, Any], metrics: dict[str, Metric]) -> None:
        update_text(metrics, self.generate(generator, batch), batch["reference"])

    def predict(self, generator: Generator, batch: dict[str, Any]) -> list[dict[str, Any]]:
        data = self.ctx.data
        return [{"user": data.users[u], "item": data.items[i], "explanation": text}
                for u, i, text in zip(batch["user_id"].tolist(), batch["item_id"].tolist(),
                                      self.generate(generator, batch))]
