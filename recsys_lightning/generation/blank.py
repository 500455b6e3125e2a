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
    """The encoded context of a batch's blanks: the key/value cache of Part A and of any given opening of Part B,
    which of those keys are real tokens, each blank's mask index, the first Part B token to decode from
    (`<|startofpiece|>`, or the opening's last token) and its intra-position less one (`offset`)."""

    cache: KVCache
    valid: torch.Tensor
    mask_index: torch.Tensor
    first: torch.Tensor
    offset: torch.Tensor

    @classmethod
    def encode(cls, model: Model, input_ids: torch.Tensor, lengths: torch.Tensor, mask_index: torch.Tensor,
               sop: int, part_b_ids: torch.Tensor | None = None) -> PartA:
        """Run the bidirectional Part A once, without its logits (nothing is predicted in Part A).

        `part_b_ids` (B, P), -1 padded, opens each blank with given tokens (a history a template moved into
        Part B): `<|startofpiece|>` and all but the last of them join the cache, causal, at intra-positions
        1, 2, ...; decoding then starts from the last one, as if the model had generated them.
        """
        b, n = input_ids.shape
        device = input_ids.device
        given = part_b_ids if part_b_ids is not None else torch.empty(b, 0, dtype=torch.long, device=device)
        count = (given >= 0).sum(1)  # given tokens per row; the cache takes <|startofpiece|> and count - 1 of them
        opening = torch.cat([torch.full((b, 1), sop, dtype=torch.long, device=device), given.clamp(min=0)], 1)
        first = opening.gather(1, count[:, None])
        opening = opening[:, : given.shape[1]]
        p = opening.shape[1]
        idx = torch.arange(n + p, device=device)
        valid = torch.cat([idx[None, :n] < lengths[:, None], idx[None, :p] < count[:, None]], 1)
        causal = torch.ones(n + p, n + p, dtype=torch.bool, device=device).tril()
        sees_part_b = (idx[:, None] >= n) & (idx[None, :] >= n) & causal  # the opening is causal over itself
        keys = valid[:, None, :] & ((idx[None, :] < n) | sees_part_b)[None]
        mask = (keys | torch.eye(n + p, dtype=torch.bool, device=device))[:, None]
        inter = torch.cat([idx[:n].expand(b, n), mask_index[:, None].expand(b, p)], 1)
        intra = torch.cat([torch.zeros(b, n, dtype=torch.long, device=device),
                           torch.arange(1, p + 1, device=device).expand(b, p)], 1)
        out = model(input_ids=torch.cat([input_ids, opening], 1), position_ids=torch.stack([inter, intra], dim=1),
                    attention_mask=mask, use_cache=True, logits_positions=torch.zeros_like(valid))
        return cls(out.past_key_values, valid, mask_index, first, count)

    def decode(self, model: Model, cache: KVCache | None, tokens: torch.Tensor, intra: torch.Tensor,
               visible: torch.Tensor) -> tuple[torch.Tensor, KVCache]:
        """Logits (B, Q, V) of Part B query tokens (B, Q) at intra-positions `intra` ((Q,) or one; counted from the
        end of a given opening, see `encode`) and the grown cache.

        `cache` is this Part A's cache extended by earlier Part B blocks (None: Part A alone); `visible`
        (B, Q, P + Q) says which of those P earlier Part B keys and which of the Q new tokens each query sees.
        """
        b, q = tokens.shape
        part_a = self.valid[:, None, :].expand(b, q, -1)
        mask = torch.cat([part_a, visible], dim=2)[:, None]
        position_ids = torch.stack([self.mask_index[:, None].expand(b, q), intra.expand(b, q) + self.offset[:, None]],
                                   dim=1)
        out = model(input_ids=tokens, position_ids=position_ids, attention_mask=mask,
                    past_key_values=self.cache if cache is None else cache, use_cache=True)
        return out.logits, out.past_key_values


def log_probs_of(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) under `logits` (..., V) for integer `targets` (..., T), in float32.

    One fused log-softmax pass is faster than `logsumexp` (max, subtract, exp, sum, log) on CPU.
    """
    return logits.float().log_softmax(-1).gather(-1, targets)
