"""The decoding interface task families use: the model plus decoding settings, independent of any family."""

from __future__ import annotations

from typing import Any

import torch

from recsys_lightning.data.tokenizer import GLMTokens
from recsys_lightning.generation.beam import Model, trie_beam_search
from recsys_lightning.generation.trie import ItemTrie


class Generator:
    """Decodes batches of Part A prompts (`input_ids`, `lengths`, `mask_index`) with the model."""

    def __init__(self, model: Model, tokens: GLMTokens, beam_size: int) -> None:
        self.model = model
        self.tokens = tokens
        self.beam_size = beam_size

    def rank_items(self, batch: dict[str, Any], trie: ItemTrie, top_k: int,
                   exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The top-k items of the Trie for each prompt, best first, with their log-likelihoods."""
        return trie_beam_search(self.model, batch["input_ids"], batch["lengths"], batch["mask_index"], trie,
                                self.tokens.sop, max(self.beam_size, top_k), top_k, exclude)
