"""Batched beam search over an item Trie, with Part A encoded once and Part B grown with intra-positions 1, 2, ...

Scores are exact sequence log-likelihoods (no length penalty). Finished items leave the beam for a pool, and
a request stops once no running beam can beat its k-th pooled item (log-probabilities only fall), so with a
beam as wide as the catalog the result equals scoring every item.
"""

from __future__ import annotations

from typing import Callable

import torch

from recsys_lightning.generation.trie import ItemTrie
from recsys_lightning.model.glm import GLMOutput, KVCache

Model = Callable[..., GLMOutput]
NEG = float("-inf")


def encode_part_a(model: Model, input_ids: torch.Tensor, lengths: torch.Tensor) -> KVCache:
    """Run the bidirectional Part A once and return its key/value cache."""
    b, n = input_ids.shape
    idx = torch.arange(n, device=input_ids.device)
    valid = idx[None, :] < lengths[:, None]
    mask = valid[:, None, None, :] | torch.eye(n, dtype=torch.bool, device=input_ids.device)[None, None]
    position_ids = torch.stack([idx.expand(b, n), torch.zeros_like(input_ids)], dim=1)
    out = model(input_ids=input_ids, position_ids=position_ids, attention_mask=mask, use_cache=True)
    return out.past_key_values


@torch.no_grad()
def trie_beam_search(
    model: Model,
    input_ids: torch.Tensor,
    lengths: torch.Tensor,
    mask_index: torch.Tensor,
    trie: ItemTrie,
    sop: int,
    beam_size: int,
    top_k: int,
    exclude: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k items (B, k) and their log-likelihoods for each Part A prompt; -1 / -inf pad short lists.

    `exclude` (B, num_items) bool removes items per request (the user's history, say).
    """
    device = input_ids.device
    b, part_a_len = input_ids.shape
    k = beam_size
    past = encode_part_a(model, input_ids, lengths)
    rows = torch.arange(b, device=device).repeat_interleave(k)
    past = [(key[rows], value[rows]) for key, value in past]
    key_valid = (torch.arange(part_a_len, device=device)[None, :] < lengths[:, None])[rows]

    nodes = torch.zeros(b, k, dtype=torch.long, device=device)
    scores = torch.full((b, k), NEG, device=device)
    scores[:, 0] = 0.0
    tokens = torch.full((b * k, 1), sop, dtype=torch.long, device=device)
    pool_items = torch.full((b, top_k), -1, dtype=torch.long, device=device)
    pool_scores = torch.full((b, top_k), NEG, device=device)
    inter = mask_index[rows][:, None]

    for step in range(trie.depth):
        position_ids = torch.stack([inter, torch.full_like(inter, step + 1)], dim=1)
        mask = torch.cat([key_valid, torch.ones(b * k, step + 1, dtype=torch.bool, device=device)], dim=1)
        out = model(input_ids=tokens, position_ids=position_ids, attention_mask=mask[:, None, None, :],
                    past_key_values=past, use_cache=True)
        logprobs = out.logits[:, -1].float().log_softmax(-1)
        child_tok, child_node = trie.allowed(nodes.view(-1))
        cand = scores.view(-1, 1) + logprobs.gather(1, child_tok.clamp(min=0))
        cand = cand.masked_fill(child_tok < 0, NEG)
        leaf = trie.leaf_item[child_node.clamp(min=0)].masked_fill(child_tok < 0, -1)
        if exclude is not None:
            banned = exclude[rows].gather(1, leaf.clamp(min=0))
            cand = cand.masked_fill((leaf >= 0) & banned, NEG)
        width = child_tok.shape[1]
        cand, leaf, child_tok, child_node = (t.view(b, k * width) for t in (cand, leaf, child_tok, child_node))

        # Finished items join the pool; unfinished candidates compete for the beam.
        done = torch.where(leaf >= 0, cand, NEG)
        pool_scores, pick = torch.cat([pool_scores, done], 1).topk(top_k, dim=1)
        pool_items = torch.cat([pool_items, leaf], 1).gather(1, pick)
        running = torch.where(leaf < 0, cand, NEG)
        scores, choice = running.topk(min(k, running.shape[1]), dim=1)
        if scores.shape[1] < k:
            pad = k - scores.shape[1]
            scores = torch.cat([scores, scores.new_full((b, pad), NEG)], 1)
            choice = torch.cat([choice, choice.new_zeros(b, pad)], 1)
        # A request is finished when its best running beam cannot beat the k-th pooled item.
        scores = scores.masked_fill(scores.max(1, keepdim=True).values <= pool_scores[:, -1:], NEG)
        if torch.isinf(scores).all():
            break
        nodes = child_node.gather(1, choice).clamp(min=0)
        parent = (torch.arange(b, device=device)[:, None] * k + choice // width).view(-1)
        tokens = child_tok.gather(1, choice).clamp(min=0).view(-1, 1)
        past = [(key[parent], value[parent]) for key, value in out.past_key_values]
    pool_items = pool_items.masked_fill(torch.isinf(pool_scores), -1)
    return pool_items, pool_scores
