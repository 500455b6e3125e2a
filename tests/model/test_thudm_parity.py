"""Parity with THUDM's own GLM (`../shared/reference/thudm_glm/`, the remote code of the glm-10b Hugging Face ports):
its random weights, written as a THUDM checkpoint, loaded through `load_glm`, give the reference's logits for a
Part A/B row (full forward) and for the incremental, KV-cached Trie decoding with dynamic block positions.

Unlike tests/model/test_checkpoints.py, which writes the project's own weights under THUDM's names, the weights
and the forward pass here are THUDM's, so a wrong name mapping, head layout (q/k/v packing), position table
(max_sequence_length + 1 rows), inter/intra order or Part B mask shows up as a logit difference.

Tolerance: the reference MLP uses `transformers.activations.gelu` (exact erf GELU); the native GLM hard-codes the
tanh approximation of THUDM's Megatron training code, the function the released checkpoints were trained with
(not configurable). With the reference's GELU swapped for tanh only float32 rounding is left: atol 1e-5. With its
erf GELU, these perturbed random weights (logits up to ~3.6, std ~1.1) differ by up to ~1.1e-3: atol 3e-3. A
layout bug moves them by far more (swapped inter/intra positions ~4.9, a bidirectional Part B ~1.9; the last
test checks > 0.1).
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from recsys_lightning.generation.beam import trie_beam_search
from recsys_lightning.generation.blank import PartA
from recsys_lightning.generation.trie import ItemTrie
from recsys_lightning.infilling.layout import Blank, blank_infilling_mask, collate_infill, collate_part_a, infill
from recsys_lightning.infilling.tokens import GLMTokens
from recsys_lightning.model.checkpoints import load_glm

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
REFERENCE = SHARED / "reference" / "thudm_glm"
pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared (the reference GLM) is absent")

VOCAB, HIDDEN, LAYERS, HEADS, MAX_LENGTH = 120, 64, 2, 4, 64
TOKENS = GLMTokens(pad=0, cls=1, eos=2, sop=3, eop=4, masks=frozenset({5}), mask=5)
TOLERANCE = {"tanh": 1e-5, "erf": 3e-3}


@pytest.fixture(scope="module")
def modeling_glm():
    """THUDM's module, imported as its README shows (it imports `configuration_glm` from its own folder)."""
    assert REFERENCE.is_dir(), f"{REFERENCE} is missing although ../shared exists"
    sys.path.insert(0, str(REFERENCE))
    try:
        return importlib.import_module("modeling_glm")
    finally:
        sys.path.remove(str(REFERENCE))


@pytest.fixture(scope="module")
def reference(modeling_glm):
    """A random-init reference GLM with every parameter perturbed (biases and LayerNorms included, so none is a
    no-op that a mapping bug could hide behind)."""
    config = importlib.import_module("configuration_glm").GLMConfig(
        num_layers=LAYERS, vocab_size=VOCAB, hidden_size=HIDDEN, num_attention_heads=HEADS,
        max_sequence_length=MAX_LENGTH, block_position_encoding=True, output_predict=True,
        embedding_dropout_prob=0.0, attention_dropout_prob=0.0, output_dropout_prob=0.0)
    torch.manual_seed(0)
    model = modeling_glm.GLMForConditionalGeneration(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.fixture(scope="module")
def native(reference, tmp_path_factory):
    """The reference's state dict as THUDM publishes it (`glm.`-prefixed names, pytorch_model.bin, its config.json),
    loaded by the project's loader."""
    folder = tmp_path_factory.mktemp("thudm_glm")
    state = reference.state_dict()
    assert "glm.transformer.block_position_embeddings.weight" in state
    torch.save({k: v.clone() for k, v in state.items()}, folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps({**reference.config.to_dict(), "architectures": ["GLMModel"]}))
    return load_glm(folder).eval()


@pytest.fixture(params=["tanh", "erf"])
def gelu(request, modeling_glm, monkeypatch):
    """The reference's MLP activation: as published (erf), or THUDM's training-code tanh."""
    if request.param == "tanh":
        monkeypatch.setattr(modeling_glm, "gelu", lambda x: F.gelu(x, approximate="tanh"))
    return request.param


def reference_logits(reference, rows) -> torch.Tensor:
    """The reference on full rows: Part B starts at each row's Part A length (its integer attention mask)."""
    with torch.no_grad():
        return reference(input_ids=rows["input_ids"], position_ids=rows["position_ids"],
                         attention_mask=rows["part_a"].sum(1)).logits


def part_a_b_rows():
    """Two rows of equal length and different Part B starts, two blanks each (Part B spans see earlier spans)."""
    a = [TOKENS.cls, 10, 11, 5, 12, 13, 14, 5, 15, TOKENS.eos]
    b = [TOKENS.cls, 20, 5, 21, 22, 23, 24, 25, 5, 26, 27, 28, TOKENS.eos]
    rows = [infill(a, [Blank(3, [30, 31, 32]), Blank(7, [33, 34])], TOKENS),
            infill(b, [Blank(2, [40]), Blank(8, [41])], TOKENS)]
    assert len(rows[0]["input_ids"]) == len(rows[1]["input_ids"])
    return collate_infill(rows, TOKENS.pad)


def test_part_a_b_rows_give_the_reference_logits(reference, native, gelu):
    rows = part_a_b_rows()
    expected = reference_logits(reference, rows)
    with torch.no_grad():
        got = native(rows["input_ids"], rows["position_ids"],
                     blank_infilling_mask(rows["segment_ids"], rows["part_a"])).logits
    assert expected.abs().max() > 1.0  # logits large enough for the tolerance to mean something
    torch.testing.assert_close(got, expected, atol=TOLERANCE[gelu], rtol=0)


ITEMS = [[50], [50, 51], [52, 53, 54], [55], [53, 50], [56, 57]]


@pytest.mark.parametrize("opening", [[], [60, 61]], ids=["sop", "opened"])
def test_incremental_decoding_steps_give_the_reference_full_sequence_logits(reference, native, gelu, opening):
    """Part A (and a given Part B opening) cached once, then Part B one token per step at intra-positions counted
    from the opening (`PartA.decode`): each step's logits equal the reference's on the whole row."""
    prompt = [TOKENS.cls, 10, 11, 5, 12, TOKENS.eos]
    item = [52, 53, 54]
    full = collate_infill([infill(prompt, [Blank(3, [*opening, *item])], TOKENS)], TOKENS.pad)
    expected = reference_logits(reference, full)[0]
    batch = collate_part_a([{"input_ids": prompt, "mask_index": 3, "part_b_ids": opening}], TOKENS.pad)
    with torch.no_grad():
        part_a = PartA.encode(native, batch["input_ids"], batch["lengths"], batch["mask_index"], TOKENS.sop,
                              batch["part_b_ids"])
        cache, token = None, part_a.first
        for step in range(len(item) + 1):
            visible = torch.ones(1, 1, step + 1, dtype=torch.bool)  # one hypothesis: it sees all its ancestors
            logits, cache = part_a.decode(native, cache, token, torch.tensor(step + 1), visible)
            # the token fed at this step sits at row position len(prompt) + len(opening) + step of the full row
            torch.testing.assert_close(logits[0, 0], expected[len(prompt) + len(opening) + step],
                                       atol=TOLERANCE[gelu], rtol=0)
            if step < len(item):
                token = torch.tensor([[item[step]]])


def test_trie_beam_search_ranks_items_as_the_reference_scores_them(reference, native, gelu):
    """A beam as wide as the catalog: the native GLM's KV-cached Trie search returns every item's exact
    log-likelihood, equal to the reference's on full rows (item tokens then <|endofpiece|>)."""
    prompt = [TOKENS.cls, 10, 5, 11, 12, TOKENS.eos]
    batch = collate_part_a([{"input_ids": prompt, "mask_index": 2}], TOKENS.pad)
    ranked, scores = trie_beam_search(native, batch["input_ids"], batch["lengths"], batch["mask_index"],
                                      ItemTrie(ITEMS, TOKENS.eop), TOKENS.sop, beam_size=len(ITEMS), top_k=len(ITEMS))
    rows = collate_infill([infill(prompt, [Blank(2, item)], TOKENS) for item in ITEMS], TOKENS.pad)
    logp = reference_logits(reference, rows).log_softmax(-1)  # padding sits after each row's tokens: causal
    labels = rows["labels"]
    exhaustive = (logp.gather(2, labels.clamp(min=0)[..., None])[..., 0] * (labels >= 0)).sum(1)
    order = exhaustive.argsort(descending=True)
    torch.testing.assert_close(scores[0], exhaustive[order], atol=10 * TOLERANCE[gelu], rtol=0)
    gaps = exhaustive[order][:-1] - exhaustive[order][1:]
    if gaps.min() > 20 * TOLERANCE[gelu]:  # no near-tie the GELU difference could swap
        assert ranked[0].tolist() == order.tolist()


def test_a_layout_bug_would_be_caught(reference, native):
    """The check has teeth: swapping inter- and intra-positions, or making Part B bidirectional, moves the
    logits far beyond the tolerance."""
    rows = part_a_b_rows()
    expected = reference_logits(reference, rows)
    mask = blank_infilling_mask(rows["segment_ids"], rows["part_a"])
    with torch.no_grad():
        swapped = native(rows["input_ids"], rows["position_ids"].flip(1), mask).logits
        bidirectional = native(rows["input_ids"], rows["position_ids"], torch.ones_like(mask)).logits
    assert (swapped - expected).abs().max() > 0.1
    assert (bidirectional - expected).abs().max() > 0.1
