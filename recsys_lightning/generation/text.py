"""Free-text decoding inside a blank: greedy, Part A encoded once, Part B grown with intra-positions 1, 2, ..."""

from __future__ import annotations

import torch

from recsys_lightning.generation.beam import Model, encode_part_a


@torch.no_grad()
def greedy_infill(model: Model, input_ids: torch.Tensor, lengths: torch.Tensor, mask_index: torch.Tensor,
                  sop: int, eop: int, max_new_tokens: int) -> list[list[int]]:
    """The most likely token at each step until <|endofpiece|> (not included) or `max_new_tokens`."""
    device = input_ids.device
    b, part_a_len = input_ids.shape
    past = encode_part_a(model, input_ids, lengths)
    key_valid = torch.arange(part_a_len, device=device)[None, :] < lengths[:, None]
    tokens = torch.full((b, 1), sop, dtype=torch.long, device=device)
    inter = mask_index[:, None]
    out = torch.full((b, max_new_tokens), eop, dtype=torch.long, device=device)
    done = torch.zeros(b, dtype=torch.bool, device=device)
    for step in range(max_new_tokens):
        position_ids = torch.stack([inter, torch.full_like(inter, step + 1)], dim=1)
        mask = torch.cat([key_valid, torch.ones(b, step + 1, dtype=torch.bool, device=device)], dim=1)
        result = model(input_ids=tokens, position_ids=position_ids, attention_mask=mask[:, None, None, :],
                       past_key_values=past, use_cache=True)
        past = result.past_key_values
        tokens = result.logits[:, -1].argmax(-1, keepdim=True)
        out[:, step] = torch.where(done, eop, tokens[:, 0])
        done |= tokens[:, 0] == eop
        if done.all():
            break
    return [row[: row.index(eop)] if eop in row else row for row in out.tolist()]
