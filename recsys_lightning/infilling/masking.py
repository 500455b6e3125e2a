"""Entity-level blank infilling (RecSysLLM): whole entities and Poisson(3) spans of other text become GLM blanks.

Units are the entities (overlapping ones merged, never split) and the non-entity text cut into consecutive spans
of Poisson(mean_span) tokens. Units are drawn in random order and masked until `ratio` of the tokens are; the
unit that would overshoot is masked with probability (tokens still wanted / its length), so the expected
masked fraction is `ratio` while no unit is ever cut. Part B holds the blanks in shuffled order, as GLM does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from recsys_lightning.infilling.tokens import GLMTokens
from recsys_lightning.infilling.layout import Blank, infill

Span = tuple[int, int]  # [start, end) token indices


@dataclass(frozen=True)
class Masking:
    """How a text becomes a training sample: the share of its tokens masked and the mean length of the Poisson
    spans cut from non-entity text."""

    ratio: float = 0.15
    mean_span: float = 3.0

    def __post_init__(self) -> None:
        if not 0 < self.ratio < 1:
            raise ValueError(f"mask ratio must be in (0, 1), got {self.ratio}")
        if self.mean_span <= 0:
            raise ValueError(f"mean span length must be > 0, got {self.mean_span}")


def merge_spans(spans: Sequence[Span], length: int) -> list[Span]:
    """Sorted, disjoint spans: overlapping entities become one unit (masking either would cut the other)."""
    merged: list[list[int]] = []
    for start, end in sorted(spans):
        if not 0 <= start < end <= length:
            raise ValueError(f"entity span ({start}, {end}) is outside the {length} tokens of the text")
        if merged and start < merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(s, e) for s, e in merged]


def masking_units(length: int, entities: Sequence[Span], rng: np.random.Generator, mean_span: float) -> list[Span]:
    """Entities as whole units, and the text between them cut into Poisson(mean_span) spans (at least 1 token)."""
    units, cursor = [], 0
    for start, end in [*merge_spans(entities, length), (length, length)]:
        while cursor < start:
            size = max(1, int(rng.poisson(mean_span)))
            units.append((cursor, min(cursor + size, start)))
            cursor = units[-1][1]
        if start < end:
            units.append((start, end))
        cursor = max(cursor, end)
    return units


def choose_units(units: list[Span], rng: np.random.Generator, ratio: float, length: int) -> list[Span]:
    """Units in random order until `ratio * length` tokens are masked (in expectation), sorted by position.

    A unit longer than what is still wanted is taken with probability wanted / length and ends the draw; a
    sample whose draw took nothing gets its shortest unit, so every sample has a target.
    """
    budget, masked, chosen = ratio * length, 0, []
    order = rng.permutation(len(units))
    for i in order:
        start, end = units[i]
        size, wanted = end - start, budget - masked
        if size <= wanted:
            chosen.append(units[i])
            masked += size
            if masked >= budget:
                break
            continue
        if rng.random() < wanted / size:
            chosen.append(units[i])
        break
    return sorted(chosen or [min((units[i] for i in order), key=lambda u: u[1] - u[0])])


def entity_masked_sample(ids: Sequence[int], entities: Sequence[Span], tokens: GLMTokens, rng: np.random.Generator,
                         ratio: float = 0.15, mean_span: float = 3.0) -> dict[str, Any]:
    """One blank-infilling sample of `ids` (text tokens, no specials): Part A `[CLS] text-with-[MASK]s
    <|endoftext|>`, Part B the masked units in shuffled order. `entities` are token spans never split."""
    if not ids:
        raise ValueError("entity masking needs at least one text token")
    chosen = choose_units(masking_units(len(ids), entities, rng, mean_span), rng, ratio, len(ids))
    part_a, blanks, cursor = [tokens.cls], [], 0
    for start, end in chosen:
        part_a += list(ids[cursor:start])
        blanks.append(Blank(len(part_a), list(ids[start:end])))
        part_a.append(tokens.mask)
        cursor = end
    part_a += [*ids[cursor:], tokens.eos]
    order = rng.permutation(len(blanks))
    return infill(part_a, [blanks[i] for i in order], tokens)


def fitted_masked_sample(ids: Sequence[int], entities: Sequence[Span], tokens: GLMTokens, masking: Masking,
                         seed: Sequence[int], max_length: int) -> dict[str, Any]:
    """`entity_masked_sample` of the longest head of `ids` whose layout fits `max_length` tokens, never ending
    inside an entity. Each try draws from a generator seeded with `seed`, so a sample is the same in every run
    and process."""
    merged = merge_spans(entities, len(ids))
    keep = min(len(ids), max_length - 2)
    while True:
        keep = min([keep, *(start for start, end in merged if start < keep < end)])
        if keep <= 0:
            raise ValueError(f"no head of the {len(ids)}-token text fits in {max_length} tokens without cutting "
                             f"its first entity {merged[0]}")
        rng = np.random.default_rng(list(seed))
        sample = entity_masked_sample(ids[:keep], [e for e in merged if e[1] <= keep], tokens, rng,
                                      masking.ratio, masking.mean_span)
        excess = len(sample["input_ids"]) - max_length
        if excess <= 0:
            return sample
        keep -= excess
