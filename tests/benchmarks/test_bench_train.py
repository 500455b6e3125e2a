"""The training bench: its packed multitask batches stay under 10% padding, its step is RecSysLLM's objective."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from recsys_lightning.infilling.layout import IGNORE
from recsys_lightning.module import RecSysLLM
from tests.conftest import load_script

bench = load_script("benchmarks/bench_train.py")

SHAPE = bench.Shape(layers=1, hidden=32, heads=2, vocab=300, seq=512)


def test_packed_multitask_batches_have_under_ten_percent_padding():
    batches, unpacked = bench.packed_batches(SHAPE, rows=16, steps=6, seed=0)
    assert all(b["input_ids"].shape == (16, 512) for b in batches)
    padding = sum(bench.padding_fraction(b) for b in batches) / len(batches)
    assert padding < 0.10 < unpacked  # the same samples one per row waste far more
    assert all(int(b["segment_ids"].max()) > 0 for b in batches)  # several samples per row


def test_the_bench_step_is_recsysllm_s_training_objective():
    torch.manual_seed(0)
    step = bench.PackedGLMStep(SHAPE, compile=False)
    step.configure_model()
    module = RecSysLLM()
    module.network = step.network
    batch = bench.packed_batches(SHAPE, rows=4, steps=1, seed=1)[0][0]
    expected = F.cross_entropy(module(batch), batch["targets"], ignore_index=IGNORE)  # RecSysLLM.training_step
    assert step.training_step(batch, 0).item() == pytest.approx(expected.item(), rel=1e-6)
    labels = batch["labels"]  # the padded Part B targets give the loss of the unpadded labels
    unpadded = F.cross_entropy(step.network(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                                            attention_mask=module.backbone.infilling_mask(batch["segment_ids"],
                                                                                           batch["part_a"]),
                                            logits_positions=labels != IGNORE).logits, labels[labels != IGNORE])
    assert expected.item() == pytest.approx(unpadded.item(), rel=1e-6)


def test_multitask_lengths_follow_the_family_mix():
    samples = bench.multitask_samples(2000, SHAPE, random.Random(0))
    targets = [sum(1 for label in s["labels"] if label != IGNORE) - 1 for s in samples]  # span + <|endofpiece|>
    assert min(targets) == 1 and max(targets) == 40
    assert all(len(s["input_ids"]) <= SHAPE.seq for s in samples)
