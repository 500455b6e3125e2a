"""Sequence packing: every example once, rows within budget, little padding, same loss as one sample per row."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from recsys_lightning.pipeline.datamodule import RecDataModule
from recsys_lightning.pipeline.packing import collate_packed, pack_steps, padding_fraction
from recsys_lightning.infilling.layout import IGNORE, Blank, collate_infill, infill
from recsys_lightning.module import RecSysLLM
from tests.conftest import make_glm


def test_every_example_lands_once_within_the_row_budget_with_little_padding():
    rng = random.Random(0)
    lengths = [rng.randint(20, 256) for _ in range(3000)]  # a multitask spread of prompt lengths
    order = [rng.randrange(len(lengths)) for _ in range(3000)]  # drawn with replacement, as in training
    steps = pack_steps(order, lengths, rows=16, row_length=512)
    assert sorted(i for step in steps for row in step for i in row) == sorted(order)
    assert all(len(step) <= 16 and all(sum(lengths[i] for i in row) <= 512 for row in step) for step in steps)
    full = steps[:-2]  # the stream's tail leaves its last steps part-filled
    used = sum(lengths[i] for step in full for row in step for i in row)
    assert 1 - used / (len(full) * 16 * 512) < 0.03


def test_an_example_longer_than_a_row_is_refused():
    with pytest.raises(ValueError, match="data.pack_length=100 is shorter than example 1"):
        pack_steps([0, 1], [50, 120], rows=2, row_length=100)


def samples(tokens, n: int, seed: int = 0) -> list[dict]:
    """Laid-out samples of random lengths: Part A with one mask token, then the span."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        part_a = [tokens.cls] + [rng.randrange(10, 80) for _ in range(rng.randint(3, 20))] + [tokens.eos]
        mask = rng.randrange(1, len(part_a) - 1)
        part_a[mask] = min(tokens.masks)
        out.append(infill(part_a, [Blank(mask, [rng.randrange(10, 80) for _ in range(rng.randint(1, 4))])], tokens))
    return out


def test_one_sample_per_row_is_collate_infill(tokens):
    rows = samples(tokens, 6)
    packed, plain = collate_packed([[r] for r in rows], tokens.pad), collate_infill(rows, tokens.pad)
    assert packed.keys() == plain.keys()
    for key in plain:
        assert torch.equal(packed[key], plain[key]), key


def test_a_packed_batch_gives_the_loss_of_the_same_samples_unpacked(tokens, tokenizer):
    rows = samples(tokens, 12)
    module = RecSysLLM()
    module.network = make_glm(len(tokenizer))
    packed = collate_packed([rows[:5], rows[5:9], rows[9:]], tokens.pad, length=128)
    plain = collate_infill(rows, tokens.pad)
    empty_rows = collate_packed([rows[:5], rows[5:9], rows[9:]], tokens.pad, length=128, num_rows=5)
    assert int(packed["segment_ids"].max()) == 4 and packed["input_ids"].shape == (3, 128)
    assert empty_rows["input_ids"].shape == (5, 128) and bool((empty_rows["segment_ids"][3:] == -1).all())
    assert padding_fraction(packed) > 0
    losses = [F.cross_entropy(module(b), b["targets"], ignore_index=IGNORE) for b in (packed, plain, empty_rows)]
    assert losses[0].item() == pytest.approx(losses[1].item(), rel=1e-5)
    assert losses[2].item() == pytest.approx(losses[1].item(), rel=1e-5)


def test_the_data_module_packs_training_rows(tiny_reviews):
    dm = RecDataModule(root=str(tiny_reviews), vocab_size=300, max_length=96, batch_size=4, pack_length=256)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    examples = sum(len(ds) for ds in dm._train)
    assert sum(int((b["segment_ids"].amax(1) + 1).sum()) for b in batches) == examples  # every draw, once
    assert all(b["input_ids"].shape == (4, 256) for b in batches)  # one shape, the epoch's last steps too
    assert any(bool((b["segment_ids"] == -1).all(1).any()) for b in batches)  # ... which have empty rows
    assert sum(padding_fraction(b) for b in batches[:-2]) / len(batches[:-2]) < 0.10


def test_pack_length_below_max_length_is_refused():
    with pytest.raises(ValueError, match=r"data.pack_length \(64\) must be at least data.max_length \(128\)"):
        RecDataModule(max_length=128, pack_length=64)
