"""Rating prediction: user and item -> the star rating, decoded over the valid rating strings."""

from __future__ import annotations

from typing import Any, Iterator

from torchmetrics import Metric

from recsys_lightning.data.schema import RecData
from recsys_lightning.data.textualize import user_name
from recsys_lightning.family import FamilyContext, Request, TaskFamily
from recsys_lightning.generation.generator import Generator
from recsys_lightning.metrics import rating_metrics, update_rating
from recsys_lightning.ratings import RatingDecoder, RatingDecoding, rating_text
from recsys_lightning.registry import register_task
from recsys_lightning.requests import interaction_meta, review_rows


@register_task("rating")
class Rating(TaskFamily):
    """80/10/10 split per interaction (every user and item in training); RMSE and MAE."""

    slots = frozenset({"user", "item", "rating"})
    entity_slots = frozenset({"user", "item"})
    meta_columns = ("user_id", "item_id", "rating_value")

    def __init__(self, weight: float = 1.0, constrained: bool = True, decoding: RatingDecoding | None = None
                 ) -> None:
        """
        Args:
            weight: sampling weight in the training mix.
            constrained: decode over the valid rating strings; False generates freely and parses the number.
            decoding: the estimate a constrained decode reports (`RatingDecoding`; in a config
                `{estimate: mean}`); None: the most likely rating.
        """
        super().__init__(weight)
        self.constrained = constrained
        self.decoding = RatingDecoding.of(decoding) or RatingDecoding()

    def setup(self, context: FamilyContext) -> None:
        super().setup(context)
        self.decoder = RatingDecoder(context, self.constrained, decoding=self.decoding)

    def requests(self, data: RecData, split: str) -> Iterator[Request]:
        index = self.ctx.index
        for row in review_rows(data, split, self.ctx.seed):
            meta = interaction_meta(data, row)
            yield Request({"user": user_name(meta["user_id"]), "item": index.render(meta["item_id"]),
                           "rating": rating_text(data.rating[row])},
                          {**meta, "rating_value": float(data.rating[row])})

    def metrics(self, target: str) -> dict[str, Metric]:
        return rating_metrics()

    def evaluate(self, generator: Generator, batch: dict[str, Any], metrics: dict[str, Metric]) -> None:
        update_rating(metrics, self.decoder.decode(generator, batch), batch["rating_value"])

    def predict(self, generator: Generator, batch: dict[str, Any]) -> list[dict[str, Any]]:
        data = self.ctx.data
        return [{"user": data.users[u], "item": data.items[i], "rating": r}
                for u, i, r in zip(batch["user_id"].tolist(), batch["item_id"].tolist(),
                                   self.decoder.decode(generator, batch))]
