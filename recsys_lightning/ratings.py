"""Star ratings as text: how a rating is written, and how it is decoded (over the valid strings, or freely and
parsed) — shared by the rating and review families."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from recsys_lightning.family import FamilyContext
from recsys_lightning.generation.generator import Generator
from recsys_lightning.metrics import parse_rating


def rating_text(value: float) -> str:
    """"5" for 5.0, "4.5" for 4.5."""
    return f"{float(value):g}"


class RatingDecoder:
    """Decodes a rating blank: the most likely of the dataset's rating strings, or free text parsed in range."""

    def __init__(self, context: FamilyContext, constrained: bool, max_new_tokens: int = 4,
                 scale: Sequence[float] | None = None) -> None:
        """`scale`: the valid ratings (an exported model's, without its dataset); None reads them from the data."""
        if scale is None:
            ratings = context.data.rating[~np.isnan(context.data.rating)]
            if len(ratings) == 0:
                raise ValueError(f"dataset {context.data.name!r} has no ratings")
            scale = [float(r) for r in ratings]
        self.scale = sorted({float(r) for r in scale})
        self.answers = context.answers([rating_text(r) for r in self.scale])
        self.context = context
        self.constrained = constrained
        self.max_new_tokens = max_new_tokens

    def decode(self, generator: Generator, batch: dict[str, Any]) -> list[float | None]:
        """One rating per prompt; None where free text holds no rating in the dataset's range."""
        if self.constrained:
            return [float(text) for text in self.answers.best(generator, batch)]
        texts = self.context.generate_text(generator, batch, self.max_new_tokens)
        return [parse_rating(t, self.scale[0], self.scale[-1]) for t in texts]
