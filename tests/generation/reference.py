"""Brute-force references for the decoders: one full teacher-forced forward per (prompt, filling)."""

import torch

from recsys_lightning.infilling.layout import IGNORE, Blank, blank_infilling_mask, collate_infill, infill


def brute_force_scores(model, part_a, mask_index, items, tokens, opening=(), score_end=True):
    """log p(item, <|endofpiece|> | Part A, opening) of every item, each from its own full blank-infilling forward
    of the blank `opening + item` (the opening's own labels are left out, and <|endofpiece|> if not `score_end`)."""
    rows = [infill(part_a, [Blank(mask_index, [*opening, *seq])], tokens) for seq in items]
    batch = collate_infill(rows, tokens.pad)
    mask = blank_infilling_mask(batch["segment_ids"], batch["part_a"])
    logp = model(batch["input_ids"], batch["position_ids"], mask).logits.log_softmax(-1)
    labels = batch["labels"].clone()
    labels[:, len(part_a): len(part_a) + len(opening)] = IGNORE
    if not score_end:
        labels[labels == tokens.eop] = IGNORE
    picked = logp.gather(2, labels.clamp(min=0)[..., None])[..., 0]
    return (picked * (labels >= 0)).sum(1)


def random_catalog(n_items, seed=0, low=20, high=26, max_len=3):
    """Distinct token sequences of varying lengths with shared prefixes."""
    gen = torch.Generator().manual_seed(seed)
    items, seen = [], set()
    while len(items) < n_items:
        size = int(torch.randint(1, max_len + 1, (1,), generator=gen))
        seq = tuple(int(t) for t in torch.randint(low, high, (size,), generator=gen))
        if seq not in seen:
            seen.add(seq)
            items.append(list(seq))
    return items


def prefix_free_catalog(n_items):
    """Two-token items with shared first tokens, none beginning another (as atomic or fixed-length ids)."""
    return [[a, b] for a in range(20, 26) for b in range(20, 26)][:n_items]


OPENINGS = [[40, 41, 42], []]  # a blank opened by given tokens, and one that is not


def prompts(tokens):
    """Two Part A prompts of different lengths with the mask at different places."""
    m = min(tokens.masks)
    return [[tokens.cls, 30, 31, m, tokens.eos], [tokens.cls, 32, m, 33, 34, 35, tokens.eos]]
