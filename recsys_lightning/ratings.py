"""Star ratings as text: how a rating is written, and how it is decoded (over the valid strings, or freely and
parsed) — shared by the rating and review families."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np
import torch

from recsys_lightning.family import DecodingOption, FamilyContext
from recsys_lightning.generation.generator import Generator
from recsys_lightning.metrics import parse_rating


def rating_text(value: float) -> str:
    """"5" for 5.0, "4.5" for 4.5."""
    return f"{float(value):g}"


@dataclass(frozen=True)
class RatingDecoding(DecodingOption):
    """Which estimate a constrained rating decode reports from the model's distribution over the rating strings:
    `mode` the most likely rating; `mean` its expectation (the estimate that minimises squared error, so RMSE);
    `median` the rating where the cumulative probability reaches one half (minimises absolute error, so MAE)."""

    estimate: Literal["mode", "mean", "median"] = "mode"

    def __post_init__(self) -> None:
        if self.estimate not in ("mode", "mean", "median"):
            raise ValueError(f"rating decoding: estimate must be 'mode', 'mean' or 'median', got {self.estimate!r}")


def estimate_ratings(scores: torch.Tensor, scale: Sequence[float], estimate: str) -> list[float]:
    """One rating per row of `scores` ((B, N) log-likelihoods of the N ratings in `scale`, ascending), renormalised
    over the N strings."""
    values = torch.tensor(scale, dtype=torch.float64, device=scores.device)
    if estimate == "mode":
        return values[scores.argmax(1)].tolist()
    probs = scores.double().softmax(1)
    if estimate == "mean":
        return (probs @ values).tolist()
    reached = probs.cumsum(1) >= 0.5
    return values[reached.double().argmax(1)].tolist()  # first rating whose cumulative probability reaches 1/2


class RatingDecoder:
    """Decodes a rating blank: an estimate over the dataset's rating strings, or free text parsed in range."""

    def __init__(self, context: FamilyContext, constrained: bool, max_new_tokens: int = 4,
                 scale: Sequence[float] | None = None, decoding: RatingDecoding | None = None) -> None:
        """`scale`: the valid ratings (an exported model's, without its dataset); None reads them from the data.
        `decoding`: the estimate a constrained decode reports (None: the most likely rating)."""
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
        self.decoding = decoding or RatingDecoding()

    def decode(self, generator: Generator, batch: dict[str, Any]) -> list[float | None]:
        """One rating per prompt; None where free text holds no rating in the dataset's range."""
        if self.constrained:
            return estimate_ratings(self.answers.scores(generator, batch), self.scale, self.decoding.estimate)
        texts = self.context.generate_text(generator, batch, self.max_new_tokens)
        return [parse_rating(t, self.scale[0], self.scale[-1]) for t in texts]
