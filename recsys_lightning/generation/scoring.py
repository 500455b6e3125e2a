"""Exact log-likelihoods of given blank fillings: candidate items (direct recommendation) and yes/no answers.

Part A and `<|startofpiece|>` are encoded once per request; every candidate span becomes a causal block of
query tokens in the same row (see `blank.py`), several candidates per model call, so no cache is copied per
candidate. A candidate's score is log p(span, <|endofpiece|> | Part A), the quantity beam search ranks by.
"""

from __future__ import annotations

from typing import Sequence

import torch

from recsys_lightning.generation.blank import Model, PartA, log_probs_of


def pad_candidates(candidates: Sequence[Sequence[Sequence[int]]]) -> torch.Tensor:
    """Nested lists (request, candidate, tokens) -> (B, N, L) long, -1 padded; every request needs N candidates."""
    counts = {len(c) for c in candidates}
    if len(counts) != 1:
        raise ValueError(f"every request needs the same number of candidates, got counts {sorted(counts)}")
    length = max(len(seq) for request in candidates for seq in request)
    out = torch.full((len(candidates), counts.pop(), length), -1, dtype=torch.long)
    for b, request in enumerate(candidates):
        for n, seq in enumerate(request):
            if not seq:
                raise ValueError(f"request {b}, candidate {n}: empty token sequence")
            out[b, n, : len(seq)] = torch.as_tensor(list(seq), dtype=torch.long)
    return out


def _block_causal(per: int, count: int, device: torch.device) -> torch.Tensor:
    """(count * per, count * per) bool: each block of `per` tokens is causal and sees no other block."""
    causal = torch.ones(per, per, dtype=torch.bool, device=device).tril()
    return torch.block_diag(*[causal] * count)


@torch.no_grad()
def score_candidates(
    model: Model,
    input_ids: torch.Tensor,
    lengths: torch.Tensor,
    mask_index: torch.Tensor,
    candidates: torch.Tensor,
    sop: int,
    eop: int,
    chunk: int = 16,
    part_b_ids: torch.Tensor | None = None,
    score_end: bool = True,
) -> torch.Tensor:
    """log p(candidate span, <|endofpiece|> | Part A) for candidates (B, N, L) (-1 padded) -> (B, N) float32;
    with `part_b_ids` (see `PartA.encode`), the candidate follows that given opening of the blank; without
    `score_end`, log p(candidate span | ...) alone.

    `<|startofpiece|>` is the same for every candidate, so it is run once per request and its key shared;
    then `chunk` candidates' span tokens (intra-positions 2, 3, ...) share one model call.
    """
    b, n, span = candidates.shape
    if (candidates[..., 0] < 0).any():
        raise ValueError("every candidate needs at least one token (found an all-padding row)")
    device = candidates.device
    part_a = PartA.encode(model, input_ids, lengths, mask_index, sop, part_b_ids)
    first_logits, cache = part_a.decode(model, None, part_a.first, torch.tensor(1, device=device),
                                      torch.ones(b, 1, 1, dtype=torch.bool, device=device))
    first = log_probs_of(first_logits, candidates[:, None, :, 0])[:, 0]  # (B, N): log p(t1 | Part A, opening)
    # Token j of a span predicts token j + 1, the last real one predicts <|endofpiece|>, padding predicts nothing.
    length = (candidates >= 0).sum(-1, keepdim=True)
    shifted = torch.cat([candidates[..., 1:], candidates.new_full((b, n, 1), -1)], 2)
    targets = torch.where(torch.arange(1, span + 1, device=device) == length, eop if score_end else -1, shifted)
    intra = torch.arange(2, span + 2, device=device)
    scores = []
    for start in range(0, n, chunk):
        c = min(chunk, n - start)
        visible = torch.cat([torch.ones(c * span, 1, dtype=torch.bool, device=device),
                             _block_causal(span, c, device)], 1).expand(b, -1, -1)
        inputs = candidates[:, start:start + c].clamp(min=0).reshape(b, -1)
        logits, _ = part_a.decode(model, cache, inputs, intra.repeat(c), visible)
        tgt = targets[:, start:start + c].reshape(b, -1)
        logp = log_probs_of(logits, tgt.clamp(min=0)[..., None])[..., 0].masked_fill(tgt < 0, 0.0)
        scores.append(logp.view(b, c, span).sum(-1))
    return first + torch.cat(scores, 1)


def check_float32_weights(model: Model) -> None:
    """Float32 re-scoring needs float32 weights (bf16 autocast decoding), not bf16 ones."""
    weights = {p.dtype for p in model.parameters() if p.is_floating_point()} if hasattr(model, "parameters") else set()
    if weights - {torch.float32}:
        raise ValueError(f"float32 re-scoring needs float32 weights (decode in bf16 under autocast), the model's are "
                         f"{sorted(str(d) for d in weights)}")


def rescore_items(
    model: Model,
    input_ids: torch.Tensor,
    lengths: torch.Tensor,
    mask_index: torch.Tensor,
    items: torch.Tensor,
    item_tokens: torch.Tensor,
    sop: int,
    eop: int,
    top_k: int,
    chunk: int = 16,
    part_b_ids: torch.Tensor | None = None,
    score_end: bool = True,
    item_bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The best `top_k` of `items` (B, P), -1 padded (the pool of a bf16 beam search), re-ranked by exact
    log-likelihoods computed with autocast off, in float32 weights: bf16 logits reorder items whose scores differ by
    less than bf16 precision, these scores do not. `item_tokens` (num_items, L) spells each item (`ItemTrie`);
    `item_bias` (B, num_items) is added as the search added it. Returns items (B, top_k), -1 padded, and scores."""
    check_float32_weights(model)
    candidates = item_tokens[items.clamp(min=0)]
    with torch.autocast(input_ids.device.type, enabled=False):
        scores = score_candidates(model, input_ids, lengths, mask_index, candidates, sop, eop, chunk, part_b_ids,
                                  score_end)
    if item_bias is not None:
        scores = scores + item_bias.gather(1, items.clamp(min=0))
    best, order = scores.masked_fill(items < 0, float("-inf")).topk(min(top_k, items.shape[1]), dim=1)
    return items.gather(1, order).masked_fill(torch.isinf(best), -1), best
