"""Filling one blank at inference: Part A encoded once, then blocks of Part B tokens that share its cache.

Part B tokens of many hypotheses (beams, candidates) are laid side by side as the query tokens of one row
per request instead of one row per hypothesis. Each token sees Part A, its own ancestors and itself through
the attention mask, so the Part A cache is never copied per hypothesis and a beam never needs its cache
reordered: the Part B cache only grows, and the mask says which of its keys belong to which hypothesis.
Only the model contract is used: `model(input_ids, position_ids (B, 2, L), attention_mask bool (B, 1, L, S),
past_key_values, use_cache, logits_positions) -> GLMOutput`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from recsys_lightning.model.glm import GLMOutput, KVCache

Model = Callable[..., GLMOutput]


@dataclass
class PartA:
    """The encoded Part A of a batch: its key/value cache, which keys are real tokens, each blank's mask index."""

    cache: KVCache
    valid: torch.Tensor
    mask_index: torch.Tensor

    @classmethod
    def encode(cls, model: Model, input_ids: torch.Tensor, lengths: torch.Tensor, mask_index: torch.Tensor) -> PartA:
        """Run the bidirectional Part A once, without its logits (nothing is predicted in Part A)."""
        b, n = input_ids.shape
        idx = torch.arange(n, device=input_ids.device)
        valid = idx[None, :] < lengths[:, None]
        mask = valid[:, None, None, :] | torch.eye(n, dtype=torch.bool, device=input_ids.device)[None, None]
        position_ids = torch.stack([idx.expand(b, n), torch.zeros_like(input_ids)], dim=1)
        out = model(input_ids=input_ids, position_ids=position_ids, attention_mask=mask, use_cache=True,
                    logits_positions=torch.zeros_like(valid))
        return cls(out.past_key_values, valid, mask_index)

    def decode(self, model: Model, cache: KVCache | None, tokens: torch.Tensor, intra: torch.Tensor,
               visible: torch.Tensor) -> tuple[torch.Tensor, KVCache]:
        """Logits (B, Q, V) of Part B query tokens (B, Q) at intra-positions `intra` ((Q,) or one) and the grown cache.

        `cache` is this Part A's cache extended by earlier Part B blocks (None: Part A alone); `visible`
        (B, Q, P + Q) says which of those P earlier Part B keys and which of the Q new tokens each query sees.
        """
        b, q = tokens.shape
        part_a = self.valid[:, None, :].expand(b, q, -1)
        mask = torch.cat([part_a, visible], dim=2)[:, None]
        position_ids = torch.stack([self.mask_index[:, None].expand(b, q), intra.expand(b, q)], dim=1)
        out = model(input_ids=tokens, position_ids=position_ids, attention_mask=mask,
                    past_key_values=self.cache if cache is None else cache, use_cache=True)
        return out.logits, out.past_key_values


def log_probs_of(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) under `logits` (..., V) for integer `targets` (..., T), in float32.

    One fused log-softmax pass is faster than `logsumexp` (max, subtract, exp, sum, log) on CPU.
    """
    return logits.float().log_softmax(-1).gather(-1, targets)
