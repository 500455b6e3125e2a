"""Entity masking on real Amazon Beauty item text: no brand or category name is ever cut, the ratio holds."""

from __future__ import annotations

import csv
import re

import numpy as np
import pytest

from recsys_lightning.infilling.tokens import GLMTokens
from recsys_lightning.infilling.tokenizer import train_tokenizer
from recsys_lightning.infilling.layout import IGNORE
from recsys_lightning.pipeline.encode import entity_token_spans
from recsys_lightning.infilling.masking import Masking, entity_masked_sample, fitted_masked_sample, masking_units, merge_spans
from tests.conftest import SHARED_DATA

BEAUTY_ITEMS = SHARED_DATA / "beauty" / "derived" / "beauty_items.tsv"


def beauty_texts(limit: int) -> list[tuple[str, list[tuple[int, int]]]]:
    """Item text `title. brand and categories: a, b, c.` with the character spans of every attribute name."""
    with BEAUTY_ITEMS.open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))[:limit]
    out = []
    for row in rows:
        names = [a for a in row["attributes"].split("|") if a and a != "Unknown"]
        text = f"{row['title']}. brand and categories: {', '.join(names)}."
        spans = [(m.start(), m.end()) for name in names
                 for m in re.finditer(rf"(?<!\w){re.escape(name)}(?!\w)", text)]
        out.append((text, spans))
    return out


def filled_in(sample: dict, tokens: GLMTokens) -> tuple[list[int], list[tuple[int, list[int]]]]:
    """Part A with every blank filled from Part B (the original text) and the (position, span) of each blank."""
    n = sample["part_a_length"]
    spans: dict[int, list[int]] = {}
    for tok, label, inter in zip(sample["input_ids"][n:], sample["labels"][n:], sample["inter_position"][n:]):
        if label != tokens.eop:
            spans.setdefault(inter, []).append(label)
    text, blanks = [], []
    for i, tok in enumerate(sample["input_ids"][1:n - 1], start=1):
        if i in spans:
            blanks.append((len(text), spans[i]))
            text += spans[i]
        else:
            text.append(tok)
    return text, blanks


@pytest.mark.skipif(not BEAUTY_ITEMS.is_file(), reason="shared Beauty data absent")
def test_entities_are_never_cut_and_the_mask_ratio_holds_on_beauty_text():
    texts = beauty_texts(3000)
    tokenizer = train_tokenizer([t for t, _ in texts], vocab_size=3000)
    tokens = GLMTokens.of(tokenizer)
    rng = np.random.default_rng(0)
    encoded = tokenizer([t for t, _ in texts], add_special_tokens=False, return_offsets_mapping=True)
    ratios, entity_count, masked_entities = [], 0, 0
    for (text, chars), ids, offsets in zip(texts, encoded["input_ids"], encoded["offset_mapping"]):
        entities = merge_spans(entity_token_spans(offsets, chars), len(ids))
        sample = entity_masked_sample(ids, entities, tokens, rng)
        restored, blanks = filled_in(sample, tokens)
        assert restored == ids  # Part A + Part B is exactly the text
        masked = [(start, start + len(span)) for start, span in blanks]
        for e_start, e_end in entities:
            entity_count += 1
            overlapping = [(s, e) for s, e in masked if s < e_end and e > e_start]
            # never split: an entity is untouched, or lies whole inside exactly one blank
            assert not overlapping or (len(overlapping) == 1 and overlapping[0][0] <= e_start
                                       and overlapping[0][1] >= e_end)
            masked_entities += bool(overlapping)
        labels = [lab for lab in sample["labels"] if lab != IGNORE and lab != tokens.eop]
        ratios.append(len(labels) / len(ids))
    assert entity_count > 5000 and masked_entities > 0.05 * entity_count
    assert abs(np.mean(ratios) - 0.15) < 0.005, np.mean(ratios)
    assert np.percentile(ratios, 10) > 0.05 and np.percentile(ratios, 90) < 0.3


def test_part_b_is_shuffled_and_spans_follow_poisson_3(tokens):
    rng = np.random.default_rng(1)
    units = [masking_units(200, [], rng, 3.0) for _ in range(50)]
    sizes = [e - s for u in units for s, e in u[:-1]]  # the last span of a text is cut by its end
    assert abs(np.mean(sizes) - 3.0) < 0.2
    ids = list(range(20, 80))
    shuffled = 0
    for _ in range(30):
        sample = entity_masked_sample(ids, [(10, 14), (30, 33)], tokens, rng, ratio=0.3)
        n = sample["part_a_length"]
        starts = [p for p, tok in zip(sample["inter_position"][n:], sample["input_ids"][n:]) if tok == tokens.sop]
        assert sorted(starts) == [i for i, tok in enumerate(sample["input_ids"][:n]) if tok == tokens.mask]
        shuffled += starts != sorted(starts)
    assert shuffled > 20  # GLM's random span order in Part B, not left to right


def test_overlapping_entities_merge_and_bad_spans_are_rejected():
    assert merge_spans([(5, 8), (2, 4), (3, 6)], 10) == [(2, 8)]
    with pytest.raises(ValueError, match="outside the 10 tokens"):
        merge_spans([(8, 12)], 10)


def test_a_long_text_keeps_the_longest_head_that_fits_and_ends_between_entities(tokens):
    ids = list(range(20, 120))
    entities = [(10, 14), (55, 70)]
    sample = fitted_masked_sample(ids, entities, tokens, Masking(), (0, 3), max_length=64)
    assert len(sample["input_ids"]) <= 64
    restored, blanks = filled_in(sample, tokens)
    assert restored == ids[: len(restored)] and len(restored) <= 55  # cut before the entity at 55..70, not inside
    assert len(restored) > 40
    again = fitted_masked_sample(ids, entities, tokens, Masking(), (0, 3), max_length=64)
    assert again == sample  # seeded: the same sample in every run
    assert fitted_masked_sample(ids, entities, tokens, Masking(), (0, 4), max_length=64) != sample
    with pytest.raises(ValueError, match="without cutting its first entity"):
        fitted_masked_sample(ids, [(0, 80)], tokens, Masking(), (0, 3), max_length=64)
    with pytest.raises(ValueError, match="mask ratio"):
        Masking(ratio=1.5)
