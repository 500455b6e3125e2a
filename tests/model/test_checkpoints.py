"""Native GLM loading from THUDM-layout checkpoints: names, shapes, formats, shards, tokenizer, errors."""

from __future__ import annotations

import json

import pytest
import torch

from recsys_lightning.infilling.tokens import CLS, EOP, GMASK, MASK, SMASK, SOP, GLMTokens
from recsys_lightning.model.backbones import NativeGLM
from recsys_lightning.model.checkpoints import glm_config, load_glm, save_glm
from recsys_lightning.infilling.layout import blank_infilling_mask
from recsys_lightning.model.lora import LoRA
from tests.conftest import make_glm
from tests.model.conftest import (one_sample, write_glm_tokenizer_config, write_gpt2_vocab,
                                  write_thudm_checkpoint)


def logits(model, batch):
    mask = blank_infilling_mask(batch["segment_ids"], batch["part_a"])
    return model(batch["input_ids"], batch["position_ids"], mask).logits


@pytest.mark.parametrize("fmt,shards", [("safetensors", 1), ("bin", 1), ("safetensors", 3), ("bin", 2)])
def test_thudm_checkpoint_loads_with_identical_outputs(tmp_path, tokenizer, tokens, fmt, shards):
    reference = make_glm(len(tokenizer), seed=1)
    folder = write_thudm_checkpoint(tmp_path / "glm", reference, fmt, shards)
    loaded = load_glm(folder).eval()
    assert loaded.config.max_sequence_length == reference.config.max_sequence_length  # THUDM's rows = max + 1
    batch = one_sample(tokens, [10, 11, 12], [20, 21])
    assert torch.equal(logits(loaded, batch), logits(reference, batch))


def test_checkpoint_names_are_thudm_names(tmp_path, tokenizer):
    folder = write_thudm_checkpoint(tmp_path / "glm", make_glm(len(tokenizer)))
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        names = set(f.keys())
    for name in ("glm.word_embeddings.weight", "glm.transformer.position_embeddings.weight",
                 "glm.transformer.block_position_embeddings.weight",
                 "glm.transformer.layers.1.attention.query_key_value.weight",
                 "glm.transformer.layers.0.attention.dense.bias", "glm.transformer.layers.0.mlp.dense_h_to_4h.weight",
                 "glm.transformer.layers.0.mlp.dense_4h_to_h.weight", "glm.transformer.layers.0.input_layernorm.weight",
                 "glm.transformer.layers.0.post_attention_layernorm.bias", "glm.transformer.final_layernorm.weight"):
        assert name in names
    assert not any("lm_head" in n for n in names)  # the output layer is tied


def test_bad_checkpoints_are_named_in_the_error(tmp_path, tokenizer):
    model = make_glm(len(tokenizer))
    folder = write_thudm_checkpoint(tmp_path / "sharded", model, "safetensors", 2)
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model-00002-of-00002"):
        load_glm(folder)
    folder = write_thudm_checkpoint(tmp_path / "shape", model)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "hidden_size": 64, "num_attention_heads": 4}))
    with pytest.raises(ValueError, match="has shape"):
        load_glm(folder)
    (folder / "config.json").write_text(json.dumps({**config, "num_layers": 3}))
    with pytest.raises(ValueError, match="lacks parameters"):
        load_glm(folder)
    (folder / "config.json").write_text(json.dumps({**config, "num_layers": 1}))
    with pytest.raises(ValueError, match="unexpected parameter 'transformer.layers.1"):
        load_glm(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json: not valid JSON"):
        load_glm(folder)


def test_tokenizer_from_vocabulary_files_gets_glm_ids_in_thudm_order(tmp_path):
    folder = tmp_path / "glm"
    base = write_gpt2_vocab(folder)
    write_glm_tokenizer_config(folder)  # remote code: must be read from the files, not run
    tok = NativeGLM(checkpoint=str(folder)).tokenizer()
    vocab = tok.get_vocab()
    # THUDM GPT2BPETokenizer: sop, eop, [CLS], [MASK], [SEP], [UNK], [gMASK], [sMASK] after the base vocabulary
    assert [vocab[t] for t in (SOP, EOP, CLS, MASK)] == [base, base + 1, base + 2, base + 3]
    assert [vocab[t] for t in (GMASK, SMASK)] == [base + 6, base + 7]
    glm = GLMTokens.of(tok)
    assert glm.eos == glm.pad == vocab["<|endoftext|>"] and glm.cls == vocab[CLS]
    assert tok.decode(tok("great guitar strings", add_special_tokens=False)["input_ids"]) == "great guitar strings"


def test_added_tokens_file_fixes_special_ids(tmp_path):
    folder = tmp_path / "glm"
    base = write_gpt2_vocab(folder)
    write_glm_tokenizer_config(folder)
    fixed = {"[gMASK]": base, "[sMASK]": base + 1, "<|startofpiece|>": base + 2, "<|endofpiece|>": base + 3,
             "[CLS]": base + 4, "[MASK]": base + 5}
    (folder / "added_tokens.json").write_text(json.dumps(fixed))
    vocab = NativeGLM(checkpoint=str(folder)).tokenizer().get_vocab()
    assert {t: vocab[t] for t in fixed} == fixed


def test_native_glm_backbone_from_checkpoint_and_export_format_round_trip(tmp_path, tokens):
    folder = tmp_path / "glm"
    write_gpt2_vocab(folder)
    write_glm_tokenizer_config(folder)
    backbone = NativeGLM(checkpoint=str(folder), hidden_dropout=0.0, attention_dropout=0.0)
    tok = backbone.tokenizer()
    reference = make_glm(len(tok) - 3, seed=2)  # the checkpoint lacks rows for the last 3 tokens
    write_thudm_checkpoint(folder, reference)
    model = backbone.build(tok).eval()
    assert model.word_embeddings.num_embeddings == len(tok)
    assert backbone.lora_defaults(model, tok).trainable_tokens == {"word_embeddings": list(range(len(tok) - 3, len(tok)))}
    glm = GLMTokens.of(tok)
    batch = one_sample(glm, [5, 6, 7], [8, 9])
    torch.testing.assert_close(logits(model, batch)[..., : len(tok) - 3], logits(reference, batch))
    save_glm(model, tmp_path / "export")
    torch.testing.assert_close(logits(load_glm(tmp_path / "export").eval(), batch), logits(model, batch))


def test_exported_config_keeps_the_embedding_dropout_apart(tmp_path, tokenizer):
    save_glm(make_glm(len(tokenizer), embedding_dropout=0.2), tmp_path / "export")
    config = glm_config(tmp_path / "export")
    assert (config.hidden_dropout, config.embedding_dropout) == (0.0, 0.2)
    assert glm_config(tmp_path / "export", embedding_dropout=None).embedding_dropout == 0.0  # unset: hidden dropout


def test_a_large_export_is_sharded_with_an_index_and_reloads_identically(tmp_path, tokenizer, tokens):
    model = make_glm(len(tokenizer), seed=2)
    save_glm(model, tmp_path / "export", max_shard_size=20_000)  # bytes: a few tensors a shard
    index = json.loads((tmp_path / "export" / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and all((tmp_path / "export" / s).is_file() for s in shards)
    assert not (tmp_path / "export" / "model.safetensors").exists()
    batch = one_sample(tokens, [5, 6, 7], [8, 9])
    torch.testing.assert_close(logits(load_glm(tmp_path / "export").eval(), batch), logits(model, batch))


def test_an_exported_config_has_a_model_type_transformers_does_not_mistake_for_glm4(tmp_path, tokenizer):
    from transformers import AutoConfig

    save_glm(make_glm(len(tokenizer)), tmp_path / "export")
    assert json.loads((tmp_path / "export" / "config.json").read_text())["model_type"] == "recsys_lightning_glm"
    assert type(AutoConfig.from_pretrained(str(tmp_path / "export"))).__name__ == "ExportedGLMConfig"
    assert not (tmp_path / "export" / "model.safetensors.index.json").exists()  # small: one file


def test_bf16_base_weights_train_fp32_lora_adapters(tmp_path, tokenizer, tokens):
    folder = write_thudm_checkpoint(tmp_path / "glm", make_glm(len(tokenizer)))
    (folder / "tokenizer.json").write_text(tokenizer.backend_tokenizer.to_str())
    backbone = NativeGLM(checkpoint=str(folder), dtype="bfloat16", hidden_dropout=0.0, attention_dropout=0.0)
    model = backbone.build(tokenizer)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    wrapped = backbone.add_lora(model, LoRA(r=2, dropout=0.0), tokenizer).train()
    assert {p.dtype for p in wrapped.parameters() if p.requires_grad} == {torch.float32}
    batch = one_sample(tokens, [10, 11], [20, 21])
    for _ in range(2):
        out = logits(wrapped, batch)
        loss = torch.nn.functional.cross_entropy(out[0, -3:].float(), batch["labels"][0, -3:])
        loss.backward()
    assert out.dtype == torch.bfloat16 and torch.isfinite(loss)
    grads = [p.grad for n, p in wrapped.named_parameters() if "lora_B" in n]  # lora_A moves once B is nonzero
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
