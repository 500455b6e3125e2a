"""Batched beam search over an item Trie: Part A encoded once, Part B grown with intra-positions 1, 2, ...

The beams of a request are the query tokens of one row (see `blank.py`): no per-beam copy of the Part A
cache, no cache reordering; each beam sees its ancestors through the mask.

Semantics are those of standard beam search (and of Hugging Face `generate` with `length_penalty=0`):
scores are exact sequence log-likelihoods; at each step the candidates are every allowed continuation of
every beam; a candidate that ends an item joins the finished pool when it ranks among the `beam_size` best
candidates of that step, and the best `beam_size` unfinished candidates become the next beams. A request
stops once its best beam cannot beat its k-th pooled item (log-probabilities only fall). Every step has at
most as many candidates as the catalog has items, so with a beam as wide as the catalog each item ranks
within the beam and the result equals scoring every item.
"""

from __future__ import annotations

import torch

from recsys_lightning.generation.blank import Model, PartA, log_probs_of
from recsys_lightning.generation.trie import ItemTrie

NEG = float("-inf")


def _pool(pool_scores: torch.Tensor, pool_items: torch.Tensor, scores: torch.Tensor, items: torch.Tensor
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge newly finished items (score -inf where none) into the per-request pool of the best k."""
    merged, pick = torch.cat([pool_scores, scores], 1).topk(pool_scores.shape[1], dim=1)
    return merged, torch.cat([pool_items, items], 1).gather(1, pick)


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
    part_b_ids: torch.Tensor | None = None,
    score_end: bool = True,
    item_bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k items (B, k) and their log-likelihoods for each Part A prompt; -1 / -inf pad short lists.

    `part_b_ids` (B, P), -1 padded, opens each blank with given tokens that the item follows (see `PartA.encode`).
    Without `score_end` an item's likelihood leaves out its end token (a prefix-free Trie's items end where their
    tokens do). `exclude` (B, num_items) bool removes items per request (the user's history, say) and `item_bias`
    (B, num_items) adds a score per item (a prior, say); both act at the token that decides the item
    (`ItemTrie.sole_items`), so beams are pruned with them already counted: exact for atomic ids.
    """
    device = input_ids.device
    b = input_ids.shape[0]
    part_a = PartA.encode(model, input_ids, lengths, mask_index, sop, part_b_ids)
    cache = None
    tokens = part_a.first
    rows = torch.zeros(b, 1, dtype=torch.long, device=device)  # each beam's node at the current depth
    scores = torch.zeros(b, 1, device=device)
    seen = torch.zeros(b, 1, 0, dtype=torch.bool, device=device)  # which earlier Part B keys each beam sees
    pool_scores = torch.full((b, top_k), NEG, device=device)
    pool_items = torch.full((b, top_k), -1, dtype=torch.long, device=device)
    batch = torch.arange(b, device=device)[:, None]
    intra = torch.arange(1, trie.depth + 1, device=device)  # step d feeds Part B token d at intra-position d + 1

    for depth in range(trie.depth):
        width = tokens.shape[1]
        eye = torch.eye(width, dtype=torch.bool, device=device).expand(b, width, width)
        logits, cache = part_a.decode(model, cache, tokens, intra[depth], torch.cat([seen, eye], 2))
        child_tok, child_row, item = trie.children(depth, rows)  # (B, W, C)
        fanout = child_tok.shape[2]
        log_probs = log_probs_of(logits, child_tok.clamp(min=0))
        cand = scores[..., None] + (log_probs if score_end else log_probs.masked_fill(item >= 0, 0.0))
        cand = cand.masked_fill(child_tok < 0, NEG)
        if item_bias is not None or exclude is not None:
            decided = _decided_items(trie, depth, rows, child_row, item).view(b, -1)
            if item_bias is not None:
                bias = item_bias.gather(1, decided.clamp(min=0)).masked_fill(decided < 0, 0.0)
                cand = cand + bias.view_as(cand)
            if exclude is not None:
                banned = exclude.gather(1, decided.clamp(min=0)) & (decided >= 0)
                cand = cand.masked_fill(banned.view_as(cand), NEG)
        cand, child_tok, child_row, item = (t.view(b, -1) for t in (cand, child_tok, child_row, item))
        keep = min(beam_size, cand.shape[1])

        # Items ending among the step's `keep` best candidates finish; the best unfinished continue.
        best, order = cand.topk(keep, dim=1)
        ended = item.gather(1, order)
        pool_scores, pool_items = _pool(pool_scores, pool_items, best.masked_fill(ended < 0, NEG), ended)
        scores, choice = cand.masked_fill(item >= 0, NEG).topk(keep, dim=1)
        # A request is finished when its best running beam cannot beat its k-th pooled item.
        scores = scores.masked_fill(scores[:, :1] <= pool_scores[:, -1:], NEG)
        if depth + 1 == trie.depth or bool(torch.isinf(scores).all()):
            break
        parent = choice // fanout
        seen = torch.cat([seen[batch, parent], parent[..., None] == torch.arange(width, device=device)], 2)
        tokens = child_tok.gather(1, choice).clamp(min=0)
        rows = child_row.gather(1, choice).clamp(min=0)
    pool_items = pool_items.masked_fill(torch.isinf(pool_scores), -1)
    return pool_items, pool_scores


def _decided_items(trie: ItemTrie, depth: int, rows: torch.Tensor, child_row: torch.Tensor, item: torch.Tensor
                   ) -> torch.Tensor:
    """The item each child (B, W, C) of the beams' nodes `rows` decides: its token leaves one item below a node
    with several (`ItemTrie.sole_items`); -1 for the others. Atomic ids are decided by their one token."""
    below = trie.sole_items[depth + 1][child_row.clamp(min=0)] if depth + 1 < len(trie.sole_items) else item
    child_item = torch.where(item >= 0, item, below.masked_fill(child_row < 0, -1))
    return child_item.masked_fill((trie.sole_items[depth][rows] >= 0)[..., None], -1)
