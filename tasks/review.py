"""Review tasks: review text -> its summary (title), and review text -> its star rating.

Requests follow the 80/10/10 review split. Summary templates are decoded greedily (or by beam search or seeded
sampling, the `decoding` option; BLEU-2, ROUGE-1/2/L);
rating templates over the valid rating strings (RMSE, MAE).
"""

from __future__ import annotations

from typing import Any, Iterator

from torchmetrics import Metric

from recsys_lightning.data.schema import RecData
from recsys_lightning.data.textualize import user_name
from recsys_lightning.family import FamilyContext, Request, TaskFamily
from recsys_lightning.generation.generator import Generator
from recsys_lightning.metrics import rating_metrics, text_metrics, update_rating, update_text
from recsys_lightning.ratings import RatingDecoder, RatingDecoding, rating_text
from recsys_lightning.registry import register_task
from recsys_lightning.requests import interaction_meta, review_rows
from recsys_lightning.texts import TextDecodingOption, generate_text


@register_task("review")
class Review(TaskFamily):
    """Summarize a review, or read its rating off the text."""

    slots = frozenset({"user", "review", "summary", "rating"})
    entity_slots = frozenset({"user"})
    meta_columns = ("user_id", "item_id", "reference", "rating_value")

    def __init__(self, weight: float = 1.0, max_review_words: int = 48, max_new_tokens: int = 16,
                 constrained: bool = True, decoding: TextDecodingOption | None = None,
                 rating_decoding: RatingDecoding | None = None) -> None:
        """
        Args:
            weight: sampling weight in the training mix.
            max_review_words: review text is cut to its first words, so prompts stay short.
            max_new_tokens: longest generated summary in tokens.
            constrained: decode ratings over the valid strings; False generates freely and parses the number.
            decoding: how summaries are decoded (`TextDecodingOption`; a mapping of its fields in a config, e.g.
                `{method: beam, num_beams: 4}`); None: greedy.
            rating_decoding: the estimate the rating templates report (`RatingDecoding`, e.g. `{estimate: mean}`);
                None: the most likely rating.
        """
        super().__init__(weight)
        self.max_review_words = max_review_words
        self.max_new_tokens = max_new_tokens
        self.constrained = constrained
        self.decoding = TextDecodingOption.of(decoding) or TextDecodingOption()
        self.rating_decoding = RatingDecoding.of(rating_decoding) or RatingDecoding()

    def summarize(self, generator: Generator, batch: dict[str, Any]) -> list[str]:
        """The batch's summaries under the family's decoding."""
        return generate_text(self.ctx, generator, batch, self.max_new_tokens, self.decoding)

    def setup(self, context: FamilyContext) -> None:
        super().setup(context)
        self.ratings = RatingDecoder(context, self.constrained, decoding=self.rating_decoding)

    def requests(self, data: RecData, split: str) -> Iterator[Request]:
        for row in review_rows(data, split, self.ctx.seed):
            review, summary = " ".join(data.review[row].split()[: self.max_review_words]), data.summary[row].strip()
            if not review or not summary:
                continue
            meta = interaction_meta(data, row)
            yield Request({"user": user_name(meta["user_id"]), "review": review, "summary": summary,
                           "rating": rating_text(data.rating[row])},
                          {**meta, "reference": summary, "rating_value": float(data.rating[row])})

    def metrics(self, target: str) -> dict[str, Metric]:
        return text_metrics(2) if target == "summary" else rating_metrics()

    def evaluate(self, generator: Generator, batch: dict[str, Any], metrics: dict[str, Metric]) -> None:
        if batch["target_slot"] == "summary":
            update_text(metrics, self.summarize(generator, batch), batch["reference"])
        else:
            update_rating(metrics, self.ratings.decode(generator, batch), batch["rating_value"])

    def predict(self, generator: Generator, batch: dict[str, Any]) -> list[dict[str, Any]]:
        if batch["target_slot"] == "summary":
            answers = [{"summary": text} for text in self.summarize(generator, batch)]
        else:
            answers = [{"rating": r} for r in self.ratings.decode(generator, batch)]
        data = self.ctx.data
        return [{"user": data.users[u], "item": data.items[i], **a}
                for u, i, a in zip(batch["user_id"].tolist(), batch["item_id"].tolist(), answers)]
