"""Example plugin family: read a user attribute off behaviour (the reverse of textualization).

Users are split 80/10/10 by a seeded hash; a prompt shows a user's items and asks for one categorical
attribute (MovieLens gender or occupation, a UCI restaurant profile field, ...), decoded over the attribute's
values by exact scoring; accuracy. `docs/adding_a_task.md` walks through this file.
"""

from __future__ import annotations

from typing import Any, Iterator

from torchmetrics import MeanMetric, Metric

from recsys_lightning.data.schema import RecData, seeded_hash
from recsys_lightning.data.textualize import user_name
from recsys_lightning.family import FamilyContext, Request, TaskFamily
from recsys_lightning.generation.generator import Generator
from recsys_lightning.registry import register_task

SPLIT_OF_BUCKET = ["train"] * 8 + ["val", "test"]


@register_task("user_attribute")
class UserAttribute(TaskFamily):
    """Predict a categorical user attribute from the user's items."""

    slots = frozenset({"user", "history", "attribute", "value"})
    entity_slots = frozenset({"user", "history", "value"})
    meta_columns = ("user_id", "value_index")

    def __init__(self, weight: float = 1.0, attribute: str = "gender", max_history: int = 20,
                 max_values: int = 50) -> None:
        """
        Args:
            weight: sampling weight in the training mix.
            attribute: the user feature to predict (a key of the dataset's user features).
            max_history: items shown per prompt (the user's first ones, in time order).
            max_values: refuse attributes with more distinct values (they are not categorical).
        """
        super().__init__(weight)
        self.attribute = attribute
        self.max_history = max_history
        self.max_values = max_values

    def setup(self, context: FamilyContext) -> None:
        super().setup(context)
        features = context.data.user_features
        if self.attribute not in features:
            raise ValueError(f"user_attribute: dataset {context.data.name!r} has no user feature "
                             f"{self.attribute!r}; it has {sorted(features)}")
        values = sorted({str(v) for v in features[self.attribute] if v is not None})
        if not 2 <= len(values) <= self.max_values:
            raise ValueError(f"user_attribute: {self.attribute!r} has {len(values)} distinct values; "
                             f"a categorical attribute with 2..{self.max_values} values is needed")
        self.values = context.answers(values)

    def requests(self, data: RecData, split: str) -> Iterator[Request]:
        index, seed = self.ctx.index, self.ctx.seed
        for user in range(data.num_users):
            value = data.user_features[self.attribute][user]
            if value is None or SPLIT_OF_BUCKET[seeded_hash(seed, "user_attribute", data.users[user]) % 10] != split:
                continue
            history = data.sequence(user)[: self.max_history]
            yield Request({"user": user_name(user), "history": [index.render(int(i)) for i in history],
                           "attribute": self.attribute.replace("_", " "), "value": str(value)},
                          {"user_id": user, "value_index": self.values.index[str(value)]})

    def metrics(self, target: str) -> dict[str, Metric]:
        return {"accuracy": MeanMetric()}

    def evaluate(self, generator: Generator, batch: dict[str, Any], metrics: dict[str, Metric]) -> None:
        predicted = self.values.scores(generator, batch).argmax(1)
        metrics["accuracy"].update((predicted == batch["value_index"]).float())

    def predict(self, generator: Generator, batch: dict[str, Any]) -> list[dict[str, Any]]:
        probs = self.values.scores(generator, batch).softmax(1)
        data = self.ctx.data
        return [{"user": data.users[u], self.attribute: self.values.texts[int(p.argmax())],
                 "probability": round(float(p.max()), 4)} for u, p in zip(batch["user_id"].tolist(), probs)]
