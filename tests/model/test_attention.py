"""The FlexAttention block mask: same pattern as the dense blank-infilling mask, packed samples kept apart."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention.flex_attention import BlockMask, create_mask

from recsys_lightning.model.backbones import NativeGLM
from recsys_lightning.infilling.layout import Blank, blank_infilling_block_mask, blank_infilling_mask, infill
from tests.conftest import make_glm

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


def packed_batch(tokens, samples, length):
    """Rows of several laid-out samples each (segment ids 0, 1, ... per row), right-padded to `length`."""
    ids, inter, intra, segment, part_a = [], [], [], [], []
    for row in samples:
        r_ids, r_inter, r_intra, r_seg, r_a = [], [], [], [], []
        for s, sample in enumerate(row):
            n = len(sample["input_ids"])
            r_ids += sample["input_ids"]
            r_inter += sample["inter_position"]
            r_intra += sample["intra_position"]
            r_seg += [s] * n
            r_a += [i < sample["part_a_length"] for i in range(n)]
        pad = length - len(r_ids)
        ids.append(r_ids + [tokens.pad] * pad)
        inter.append(r_inter + [0] * pad)
        intra.append(r_intra + [0] * pad)
        segment.append(r_seg + [-1] * pad)
        part_a.append(r_a + [False] * pad)
    return {"input_ids": torch.tensor(ids), "position_ids": torch.stack([torch.tensor(inter), torch.tensor(intra)], 1),
            "segment_ids": torch.tensor(segment), "part_a": torch.tensor(part_a)}


def samples(tokens):
    m = min(tokens.masks)
    one = infill([tokens.cls, 10, m, 11, m, tokens.eos], [Blank(2, [20, 21]), Blank(4, [22])], tokens)
    two = infill([tokens.cls, 12, 13, m, tokens.eos], [Blank(3, [23, 24, 25])], tokens)
    three = infill([tokens.cls, m, 14, tokens.eos], [Blank(1, [26])], tokens)
    return one, two, three


def test_block_mask_equals_dense_mask_with_packed_samples(tokens):
    one, two, three = samples(tokens)
    batch = packed_batch(tokens, [[one, two], [three]], length=24)
    dense = blank_infilling_mask(batch["segment_ids"], batch["part_a"])
    block = blank_infilling_block_mask(batch["segment_ids"], batch["part_a"])
    assert torch.equal(create_mask(block.mask_mod, 2, 1, 24, 24, device="cpu"), dense)
    # samples packed in one row never see each other
    n1 = len(one["input_ids"])
    assert not dense[0, 0, :n1, n1:].any() and not dense[0, 0, n1:, :n1].any()


def test_flex_attention_matches_sdpa_and_packing_matches_separate_rows(tokenizer, tokens):
    model = make_glm(len(tokenizer))
    one, two, three = samples(tokens)
    packed = packed_batch(tokens, [[one, two], [three]], length=24)
    flex_mask = NativeGLM(attention="flex", attention_dropout=0.0).infilling_mask(packed["segment_ids"],
                                                                                   packed["part_a"])
    dense_mask = NativeGLM(attention="sdpa").infilling_mask(packed["segment_ids"], packed["part_a"])
    assert isinstance(dense_mask, torch.Tensor) and not isinstance(flex_mask, torch.Tensor)
    with torch.no_grad():
        flex = model(packed["input_ids"], packed["position_ids"], flex_mask).logits
        sdpa = model(packed["input_ids"], packed["position_ids"], dense_mask).logits
        torch.testing.assert_close(flex, sdpa, atol=1e-5, rtol=1e-5)
        n1 = len(one["input_ids"])
        for sample, row, start in ((one, 0, 0), (two, 0, n1), (three, 1, 0)):
            alone = packed_batch(tokens, [[sample]], length=len(sample["input_ids"]))
            mask = blank_infilling_mask(alone["segment_ids"], alone["part_a"])
            ref = model(alone["input_ids"], alone["position_ids"], mask).logits[0]
            torch.testing.assert_close(sdpa[row, start:start + len(ref)], ref, atol=1e-5, rtol=1e-5)


def test_auto_attention_is_sdpa_flex_gives_a_block_mask_and_refuses_dropout(tokens):
    one, _, _ = samples(tokens)
    batch = packed_batch(tokens, [[one]], length=12)
    assert isinstance(NativeGLM(attention="auto", attention_dropout=0.0).infilling_mask(
        batch["segment_ids"], batch["part_a"]), torch.Tensor)
    assert isinstance(NativeGLM(attention="flex", attention_dropout=0.0).infilling_mask(
        batch["segment_ids"], batch["part_a"]), BlockMask)
    with pytest.raises(ValueError, match="attention_dropout"):
        NativeGLM(attention="flex", attention_dropout=0.1)
