"""Entity-level blank infilling (RecSysLLM): whole entities and Poisson(3) spans of other text become GLM blanks.

Units are the entities (overlapping ones merged, never split) and the non-entity text cut into consecutive spans
of Poisson(mean_span) tokens. Units are drawn in random order and masked until `ratio` of the tokens are; the
unit that would overshoot is masked with probability (tokens still wanted / its length), so the expected
masked fraction is `ratio` while no unit is ever cut. Part B holds the blanks in shuffled order, as GLM does.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from recsys_lightning.data.tokenizer import GLMTokens
from recsys_lightning.model.layout import Blank, infill

Span = tuple[int, int]  # [start, end) token indices


def token_spans(offsets: Sequence[tuple[int, int]], char_spans: Sequence[Span]) -> list[Span]:
    """Entity character spans -> token spans: every token whose characters overlap the entity belongs to it."""
    spans = []
    for start, end in char_spans:
        inside = [i for i, (a, b) in enumerate(offsets) if a < end and b > start and b > a]
        if inside:
            spans.append((inside[0], inside[-1] + 1))
    return spans


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
