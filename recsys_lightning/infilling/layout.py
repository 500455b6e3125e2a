"""GLM's blank-infilling layout: Part A (corrupted text) then Part B (the blanks), 2D positions, the attention mask.

Part A holds one mask token per blank and attends bidirectionally; Part B holds each blank as
`<|startofpiece|> span`, predicts `span <|endofpiece|>` and attends causally (plus all of Part A).
Inter-position (position_ids[0]) is a token's place in Part A, or, in Part B, the place of its blank's mask
token; intra-position (position_ids[1]) is 0 in Part A and 1..n inside a span.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask

if TYPE_CHECKING:  # the layout needs only torch (benchmarks/bench_train.py runs it without the tokenizer stack)
    from recsys_lightning.infilling.tokens import GLMTokens

IGNORE = -100
LAYOUT_FIELDS = ("input_ids", "labels", "inter_position", "intra_position", "part_a_length")  # what `infill` lays out
TARGET_BUCKET = 64  # Part B target counts are padded to a multiple of this: few distinct shapes to compile


@dataclass(frozen=True)
class Blank:
    """One blank: the index of its mask token in Part A and the span's token ids."""

    mask_index: int
    target: Sequence[int]


def infill(part_a: Sequence[int], blanks: Sequence[Blank], tokens: GLMTokens) -> dict[str, list[int]]:
    """Lay out one sample: token ids, labels, inter- and intra-positions, and which tokens form Part A."""
    for blank in blanks:
        if part_a[blank.mask_index] not in tokens.masks:
            raise ValueError(f"Part A position {blank.mask_index} holds token {part_a[blank.mask_index]}, not a mask")
    n = len(part_a)
    input_ids, labels = list(part_a), [IGNORE] * n
    inter, intra = list(range(n)), [0] * n
    for blank in blanks:
        span = list(blank.target)
        input_ids += [tokens.sop, *span]
        labels += [*span, tokens.eop]
        inter += [blank.mask_index] * (len(span) + 1)
        intra += list(range(1, len(span) + 2))
    return {"input_ids": input_ids, "labels": labels, "inter_position": inter, "intra_position": intra,
            "part_a_length": n}


def pad_stack(seqs: Sequence[Sequence[int]], value: int, length: int | None = None) -> torch.Tensor:
    """Right-pad int sequences into one (N, length) tensor."""
    length = length or max(len(s) for s in seqs)
    out = torch.full((len(seqs), length), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    return out


def part_b_targets(labels: torch.Tensor, bucket: int = TARGET_BUCKET) -> dict[str, torch.Tensor]:
    """The labelled (Part B) tokens of a (B, L) batch as flat positions into B x L and their labels, padded to a
    multiple of `bucket` (position 0, label IGNORE). Made by the collator on the CPU, so the training step needs
    no device sync to count them and its output layer sees few distinct shapes."""
    positions = (labels != IGNORE).flatten().nonzero().squeeze(1)
    size = -(-len(positions) // bucket) * bucket
    padded = torch.zeros(size, dtype=torch.long)
    padded[: len(positions)] = positions
    targets = torch.full((size,), IGNORE, dtype=torch.long)
    targets[: len(positions)] = labels.flatten()[positions]
    return {"target_positions": padded, "targets": targets}


def collate_infill(rows: Sequence[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Batch laid-out samples: one sample per row, right-padded (segment -1 marks padding)."""
    input_ids = pad_stack([r["input_ids"] for r in rows], pad_id)
    length = input_ids.shape[1]
    lengths = torch.tensor([len(r["input_ids"]) for r in rows])
    part_a_len = torch.tensor([r["part_a_length"] for r in rows])
    idx = torch.arange(length)
    segment = torch.where(idx < lengths[:, None], 0, -1)
    labels = pad_stack([r["labels"] for r in rows], IGNORE, length)
    return {
        "input_ids": input_ids,
        "labels": labels,
        **part_b_targets(labels),
        "position_ids": torch.stack(
            [pad_stack([r["inter_position"] for r in rows], 0, length),
             pad_stack([r["intra_position"] for r in rows], 0, length)], dim=1),
        "segment_ids": segment,
        "part_a": idx < part_a_len[:, None],
    }


def blank_infilling_mask(segment_ids: torch.Tensor, part_a: torch.Tensor) -> torch.Tensor:
    """(B, 1, L, L) bool, True = may attend: same sample, and the key is in Part A or not after the query.

    Padding (segment -1) attends only to itself, so no softmax row is empty.
    """
    length = segment_ids.shape[-1]
    same = (segment_ids[:, :, None] == segment_ids[:, None, :]) & (segment_ids[:, None, :] >= 0)
    causal = torch.ones(length, length, dtype=torch.bool, device=segment_ids.device).tril()
    allowed = same & (part_a[:, None, :] | causal)
    allowed |= torch.eye(length, dtype=torch.bool, device=segment_ids.device)
    return allowed[:, None]


def blank_infilling_block_mask(segment_ids: torch.Tensor, part_a: torch.Tensor) -> BlockMask:
    """The same pattern as `blank_infilling_mask` as a FlexAttention block mask: Part A prefix, causal Part B,
    any number of packed samples per row; blocks that no query may see are skipped by the kernel."""
    batch, length = segment_ids.shape

    def mask_mod(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        seg_q, seg_kv = segment_ids[b, q], segment_ids[b, kv]
        same = (seg_q == seg_kv) & (seg_kv >= 0)
        return (same & (part_a[b, kv] | (kv <= q))) | (q == kv)

    # compiled on GPU: the eager build materializes the whole (B, L, L) mask through vmap every step
    return create_block_mask(mask_mod, batch, None, length, length, device=segment_ids.device,
                             _compile=segment_ids.is_cuda)


def collate_part_a(rows: Sequence[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Batch Part A prompts for decoding: right-padded ids, their lengths and each prompt's mask position, and
    the tokens that open each blank (`part_b_ids`, -1 padded; zero columns when no row has any)."""
    openings = [r.get("part_b_ids") or [] for r in rows]
    return {
        "input_ids": pad_stack([r["input_ids"] for r in rows], pad_id),
        "lengths": torch.tensor([len(r["input_ids"]) for r in rows]),
        "mask_index": torch.tensor([r["mask_index"] for r in rows]),
        "part_b_ids": pad_stack(openings, -1, max(map(len, openings))),
    }
