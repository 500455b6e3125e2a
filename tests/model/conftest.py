"""Model-test helpers: THUDM-layout GLM checkpoints, GPT-2 BPE vocabulary files and tiny HF configs, all local."""

from __future__ import annotations

import json
from pathlib import Path

import string

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

from recsys_lightning.model.glm import GLMModel
from recsys_lightning.infilling.layout import Blank, collate_infill, infill
from tests.conftest import CORPUS

# Sizes of tiny random-init models of each HF family (the vocabulary size is set from the tokenizer).
HF_CONFIGS = {
    "llama": dict(model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128),
    "qwen2": dict(model_type="qwen2", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128),
    "mistral": dict(model_type="mistral", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128),
    "gpt2": dict(model_type="gpt2", n_embd=32, n_layer=2, n_head=4, n_positions=128),
}
# THUDM's glm-10b config.json keys (values shrunk); remote-code entries included as in the real file.
THUDM_CONFIG = {"architectures": ["GLMModel"], "attention_dropout_prob": 0.0, "attention_scale": 1.0,
                "auto_map": {"AutoConfig": "configuration_glm.GLMConfig", "AutoModel": "modeling_glm.GLMModel"},
                "block_position_encoding": True, "checkpoint_activations": False, "checkpoint_num_layers": 1,
                "embedding_dropout_prob": 0.0, "initializer_range": 0.02, "model_type": "glm",
                "output_dropout_prob": 0.0, "output_predict": True, "parallel_output": True, "pool_token": "cls",
                "relative_encoding": False, "spell_func": "lstm", "spell_length": None, "torch_dtype": "float32"}


def write_thudm_checkpoint(folder: Path, model: GLMModel, fmt: str = "safetensors", shards: int = 1) -> Path:
    """`model`'s weights under THUDM's HF-port names (`glm.` prefix), as .bin or .safetensors, optionally sharded."""
    folder.mkdir(parents=True, exist_ok=True)
    c = model.config
    config = {**THUDM_CONFIG, "vocab_size": c.vocab_size, "hidden_size": c.hidden_size, "num_layers": c.num_layers,
              "num_attention_heads": c.num_attention_heads, "max_sequence_length": c.max_sequence_length - 1}
    (folder / "config.json").write_text(json.dumps(config))
    state = {f"glm.{k}": v.clone().contiguous() for k, v in model.state_dict().items()}
    names = sorted(state)
    ext = "safetensors" if fmt == "safetensors" else "bin"
    base = "model" if fmt == "safetensors" else "pytorch_model"
    groups = [names[i::shards] for i in range(shards)]
    weight_map = {}
    for i, group in enumerate(groups):
        file = f"{base}.{ext}" if shards == 1 else f"{base}-{i + 1:05d}-of-{shards:05d}.{ext}"
        part = {k: state[k] for k in group}
        save_file(part, str(folder / file)) if ext == "safetensors" else torch.save(part, folder / file)
        weight_map.update({k: file for k in group})
    if shards > 1:
        (folder / f"{base}.{ext}.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def write_gpt2_vocab(folder: Path, vocab_size: int = 300) -> int:
    """GPT-2-style byte-level BPE files (vocab.json, merges.txt) ending in <|endoftext|>; returns its size."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 20, trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tok.model.save(str(folder))
    vocab = json.loads((folder / "vocab.json").read_text())
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    return len(vocab)


def write_glm_tokenizer_config(folder: Path) -> None:
    """THUDM's tokenizer_config.json: the tokenizer class lives in the folder's own (remote) code."""
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GLMGPT2Tokenizer", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "auto_map": {"AutoTokenizer": ["tokenization_glm.GLMGPT2Tokenizer", None]}}))


def one_sample(tokens, tail, span):
    """A collated one-row batch: `[CLS] tail [MASK] <|endoftext|>` and one Part B span."""
    m = min(tokens.masks)
    part_a = [tokens.cls, *tail, m, tokens.eos]
    return collate_infill([infill(part_a, [Blank(len(part_a) - 2, span)], tokens)], tokens.pad)


def write_pretrained(folder: Path, family: str = "llama", tied: bool = False) -> int:
    """A saved tiny 'pretrained' causal LM whose character-level tokenizer has no GLM tokens (only <s>, </s>,
    <unk>), its output layer tied to the input embeddings or not; returns the base vocabulary size."""
    chars = sorted(set(string.printable) - set("\t\n\r\x0b\x0c"))
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{c: i + 3 for i, c in enumerate(chars)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.decoder = decoders.Fuse()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(str(folder))
    config = dict(HF_CONFIGS[family])
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(config.pop("model_type"), vocab_size=len(vocab),
                                                                  tie_word_embeddings=tied, **config))
    model.save_pretrained(str(folder))
    return len(vocab)
