"""Sequence packing: several laid-out samples share one row (segment ids 0, 1, ...), so padding stays small.

Positions restart per sample and the blank-infilling mask keeps samples apart (infilling/layout.py), so a packed
batch gives the same loss as the same samples one per row. Needs only torch (the GPU training bench imports it).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from recsys_lightning.infilling.layout import IGNORE, pad_stack, part_b_targets


def pack_steps(order: Sequence[int], lengths: Sequence[int], rows: int, row_length: int) -> list[list[list[int]]]:
    """Cut a stream of examples into steps of at most `rows` rows of at most `row_length` tokens.

    First-fit decreasing over a window of the next examples (twice a step's tokens): long examples are placed
    first, short ones fill the gaps, and what does not fit waits, in stream order, for the next step. Every
    example of `order` lands in exactly one step.
    """
    too_long = [i for i in set(order) if lengths[i] > row_length]
    if too_long:
        raise ValueError(f"data.pack_length={row_length} is shorter than example {too_long[0]} "
                         f"({lengths[too_long[0]]} tokens); set it to at least data.max_length")
    budget = 2 * rows * row_length
    steps: list[list[list[int]]] = []
    window: list[int] = []
    tokens, pos = 0, 0
    while window or pos < len(order):
        while pos < len(order) and tokens < budget:
            window.append(order[pos])
            tokens += lengths[order[pos]]
            pos += 1
        step, placed = _first_fit_decreasing(window, lengths, rows, row_length)
        steps.append(step)
        window = [i for k, i in enumerate(window) if k not in placed]
        tokens = sum(lengths[i] for i in window)
    return steps


def _first_fit_decreasing(window: list[int], lengths: Sequence[int], rows: int, row_length: int
                          ) -> tuple[list[list[int]], set[int]]:
    """Fill `rows` rows from `window`, longest first; returns the rows and the window positions placed."""
    free = [row_length] * rows
    filled: list[list[int]] = [[] for _ in range(rows)]
    placed: set[int] = set()
    most_free = row_length
    for k in sorted(range(len(window)), key=lambda k: -lengths[window[k]]):
        n = lengths[window[k]]
        if n > most_free:
            continue
        r = next(r for r in range(rows) if free[r] >= n)
        filled[r].append(window[k])
        placed.add(k)
        free[r] -= n
        most_free = max(free)
    return [row for row in filled if row], placed


def collate_packed(rows: Sequence[Sequence[dict[str, Any]]], pad_id: int, length: int | None = None,
                   num_rows: int | None = None) -> dict[str, torch.Tensor]:
    """Batch rows of laid-out samples: samples of a row concatenated with segment ids 0, 1, ...; rows right-padded
    (segment -1) to `length` (default: the longest row), and the batch to `num_rows` rows with empty ones, so that
    an epoch's last, shorter steps keep the training step's shape. One sample per row gives `collate_infill`'s
    batch."""
    rows = [*rows, *[[]] * ((num_rows or 0) - len(rows))]
    fields: dict[str, list[list[int]]] = {k: [] for k in ("input_ids", "labels", "inter", "intra", "segment", "part_a")}
    for row in rows:
        out: dict[str, list[int]] = {k: [] for k in fields}
        for segment, sample in enumerate(row):
            n = len(sample["input_ids"])
            out["input_ids"] += sample["input_ids"]
            out["labels"] += sample["labels"]
            out["inter"] += sample["inter_position"]
            out["intra"] += sample["intra_position"]
            out["segment"] += [segment] * n
            out["part_a"] += [int(j < sample["part_a_length"]) for j in range(n)]
        for k in fields:
            fields[k].append(out[k])
    length = length or max(len(ids) for ids in fields["input_ids"])
    labels = pad_stack(fields["labels"], IGNORE, length)
    return {
        "input_ids": pad_stack(fields["input_ids"], pad_id, length),
        "labels": labels,
        **part_b_targets(labels),
        "position_ids": torch.stack([pad_stack(fields["inter"], 0, length), pad_stack(fields["intra"], 0, length)],
                                    dim=1),
        "segment_ids": pad_stack(fields["segment"], -1, length),
        "part_a": pad_stack(fields["part_a"], 0, length).bool(),
    }


def padding_fraction(batch: dict[str, torch.Tensor]) -> float:
    """Share of the batch's token slots that are padding."""
    return float((batch["segment_ids"] < 0).float().mean())
