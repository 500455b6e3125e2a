"""Free-text decoding inside a blank: greedy, Part A encoded once, Part B grown with intra-positions 1, 2, ..."""

from __future__ import annotations

import torch

from recsys_lightning.generation.blank import Model, PartA


@torch.no_grad()
def greedy_infill(model: Model, input_ids: torch.Tensor, lengths: torch.Tensor, mask_index: torch.Tensor,
                  sop: int, eop: int, max_new_tokens: int, part_b_ids: torch.Tensor | None = None) -> list[list[int]]:
    """The most likely token at each step until <|endofpiece|> (not included) or `max_new_tokens`, after any
    given opening of the blank (`part_b_ids`, see `PartA.encode`)."""
    device = input_ids.device
    b = input_ids.shape[0]
    part_a = PartA.encode(model, input_ids, lengths, mask_index, sop, part_b_ids)
    cache = None
    tokens = part_a.first
    out = torch.full((b, max_new_tokens), eop, dtype=torch.long, device=device)
    done = torch.zeros(b, dtype=torch.bool, device=device)
    for step in range(max_new_tokens):
        visible = torch.ones(b, 1, step + 1, dtype=torch.bool, device=device)
        logits, cache = part_a.decode(model, cache, tokens, torch.tensor([step + 1], device=device), visible)
        tokens = logits[:, -1].argmax(-1, keepdim=True)
        out[:, step] = torch.where(done, eop, tokens[:, 0])
        done |= tokens[:, 0] == eop
        if done.all():
            break
    return [row[: row.index(eop)] if eop in row else row for row in out.tolist()]
