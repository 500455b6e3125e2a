"""The decoding interface task families use: the model plus decoding settings, independent of any family."""

from __future__ import annotations

from typing import Any

import torch

from recsys_lightning.data.schema import seeded_hash
from recsys_lightning.infilling.tokens import GLMTokens
from recsys_lightning.generation.beam import trie_beam_search
from recsys_lightning.generation.blank import Model
from recsys_lightning.generation.scoring import check_float32_weights, rescore_items, score_candidates
from recsys_lightning.generation.text import TextDecoding, beam_infill, greedy_infill, sample_infill
from recsys_lightning.generation.trie import ItemTrie


class Generator:
    """Decodes batches of Part A prompts (`input_ids`, `lengths`, `mask_index`, and `part_b_ids` where a template
    opens its blank with given tokens) with the model."""

    def __init__(self, model: Model, tokens: GLMTokens, beam_size: int, score_chunk: int = 16,
                 score_end: bool = True, rescore_float32: bool = False) -> None:
        """`rescore_float32`: keep the search's whole final pool (`beam_size` items) and rank it by float32
        log-likelihoods (`rescore_items`), so a search under bf16 autocast returns float32's top-k."""
        self.model = model
        self.tokens = tokens
        self.beam_size = beam_size
        self.score_chunk = score_chunk
        self.score_end = score_end
        self.rescore_float32 = rescore_float32
        if rescore_float32:
            check_float32_weights(model)

    def rank_items(self, batch: dict[str, Any], trie: ItemTrie, top_k: int,
                   exclude: torch.Tensor | None = None, item_bias: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """The top-k items of the Trie for each prompt, best first, with their log-likelihoods (plus `item_bias`,
        (B, num_items), where given)."""
        beam = max(self.beam_size, top_k)
        args = (batch["input_ids"], batch["lengths"], batch["mask_index"])
        items, scores = trie_beam_search(self.model, *args, trie, self.tokens.sop, beam,
                                         beam if self.rescore_float32 else top_k, exclude, batch.get("part_b_ids"),
                                         self.score_end, item_bias)
        if not self.rescore_float32:
            return items, scores
        return rescore_items(self.model, *args, items, trie.item_tokens, self.tokens.sop, self.tokens.eop, top_k,
                             self.score_chunk, batch.get("part_b_ids"), self.score_end, item_bias)

    def score_candidates(self, batch: dict[str, Any], candidates: torch.Tensor, score_end: bool = True
                         ) -> torch.Tensor:
        """log p(candidate, <|endofpiece|> | prompt) (B, N) of candidate token sequences (B, N, L), -1 padded
        (without the end token if not `score_end`).
        """
        return score_candidates(self.model, batch["input_ids"], batch["lengths"], batch["mask_index"],
                                candidates.to(batch["input_ids"].device), self.tokens.sop, self.tokens.eop,
                                self.score_chunk, batch.get("part_b_ids"), score_end)

    def score_items(self, batch: dict[str, Any], candidates: torch.Tensor) -> torch.Tensor:
        """`score_candidates` of candidate items, ranked as `rank_items` ranks them (end token per `score_end`).

        `ItemTrie.item_tokens[item_ids]` turns candidate item ids (B, N) into such sequences.
        """
        return self.score_candidates(batch, candidates, self.score_end)

    def generate(self, batch: dict[str, Any], max_new_tokens: int, decoding: TextDecoding | None = None
                 ) -> list[list[int]]:
        """Free text filling each prompt's blank, without <|endofpiece|>: greedy, or as `decoding` says (sampling
        seeds each row by `decoding.seed` and its request id, so its text does not depend on the batch)."""
        decoding = decoding or TextDecoding()
        args = (self.model, batch["input_ids"], batch["lengths"], batch["mask_index"], self.tokens.sop,
                self.tokens.eop, max_new_tokens)
        if decoding.method == "beam":
            return beam_infill(*args, decoding.num_beams, batch.get("part_b_ids"))[0]
        if decoding.method == "sample":
            ids = batch.get("request_id", torch.arange(len(batch["input_ids"]))).tolist()
            return sample_infill(*args, [seeded_hash(decoding.seed, "sample", i) for i in ids], decoding.temperature,
                                 decoding.top_k, decoding.top_p, batch.get("part_b_ids"))
        return greedy_infill(*args, batch.get("part_b_ids"))
