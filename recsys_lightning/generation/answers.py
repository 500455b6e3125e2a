"""Closed answer sets (ratings, yes/no, attribute values): decoding by exact scoring of every answer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import torch
from transformers import PreTrainedTokenizerBase

from recsys_lightning.generation.scoring import pad_candidates

if TYPE_CHECKING:
    from recsys_lightning.generation.generator import Generator


class AnswerSet:
    """Answer strings and their token sequences; the constrained decode is the most likely answer."""

    def __init__(self, texts: Sequence[str], tokenizer: PreTrainedTokenizerBase) -> None:
        if len(set(texts)) != len(texts) or not texts:
            raise ValueError(f"an answer set needs distinct answers, got {list(texts)}")
        self.texts = list(texts)
        ids = tokenizer(self.texts, add_special_tokens=False)["input_ids"]
        self.candidates = pad_candidates([ids])  # (1, N, L), -1 padded
        self.index = {text: i for i, text in enumerate(self.texts)}

    def scores(self, generator: Generator, batch: dict[str, Any]) -> torch.Tensor:
        """(B, N) log-likelihood of each answer filling each prompt's blank."""
        return generator.score_candidates(batch, self.candidates.expand(len(batch["input_ids"]), -1, -1))

    def best(self, generator: Generator, batch: dict[str, Any]) -> list[str]:
        """The most likely answer of each prompt."""
        return [self.texts[i] for i in self.scores(generator, batch).argmax(1).tolist()]
