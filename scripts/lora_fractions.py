"""Trainable-parameter fraction under LoRA for each backbone family, at tiny and at real sizes.

Real sizes (GLM-10B, Qwen2.5-7B, Llama-3-8B-like) are built on the meta device from their published configs, so no
weights are needed: `python scripts/lora_fractions.py [--r 8]`.
"""

from __future__ import annotations

import argparse

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from recsys_lightning.data.adapters import load_dataset
from recsys_lightning.pipeline.datamodule import DEMO_ROOT
from recsys_lightning.infilling.tokenizer import train_tokenizer
from recsys_lightning.model.backbones import GLM_LORA_TARGETS, NativeGLM
from recsys_lightning.model.glm import GLMConfig, GLMModel
from recsys_lightning.model.hf_glm import LORA_TARGETS, GLMModeLM, HFCausalLM
from recsys_lightning.model.lora import LoRA, LoRADefaults, apply_lora, trainable_fraction

TINY_HF = {
    "llama": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2),
    "qwen2": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2),
    "mistral": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2),
    "gpt2": dict(n_embd=128, n_layer=2, n_head=4),
}
REAL_HF = {  # published configs of Qwen2.5-7B and Llama-3-8B
    "qwen2.5-7b (qwen2)": ("qwen2", dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                                         num_attention_heads=28, num_key_value_heads=4, vocab_size=152064)),
    "llama-3-8b (llama)": ("llama", dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                         num_attention_heads=32, num_key_value_heads=8, vocab_size=128256)),
}


def row(name: str, network: torch.nn.Module) -> None:
    trainable, total = trainable_fraction(network)
    print(f"{name:30s} trainable {trainable:>13,d} / {total:>15,d} = {100 * trainable / total:7.3f} %")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--r", type=int, default=8, help="LoRA rank")
    lora = LoRA(r=parser.parse_args().r, dropout=0.0)
    tokenizer = train_tokenizer(load_dataset("amazon_reviews", DEMO_ROOT, 0).review, vocab_size=2000)  # the demo's
    backbone = NativeGLM(hidden_size=128, num_layers=2, num_attention_heads=4)
    row("native GLM 2x128", backbone.add_lora(backbone.build(tokenizer), lora, tokenizer))
    for family, sizes in TINY_HF.items():
        backbone = HFCausalLM(config={"model_type": family, **sizes})
        row(f"{family} 2x128 (GLM mode)", backbone.add_lora(backbone.build(tokenizer), lora, tokenizer))
    with torch.device("meta"):
        glm = GLMModel(GLMConfig(vocab_size=50304, hidden_size=4096, num_layers=48, num_attention_heads=64,
                                 max_sequence_length=1025))
        row("GLM-10B (native)", apply_lora(glm, lora, LoRADefaults(GLM_LORA_TARGETS)))
        for name, (family, sizes) in REAL_HF.items():
            hf = AutoModelForCausalLM.from_config(AutoConfig.for_model(family, **sizes))
            network = GLMModeLM(hf, 256)
            targets, fan_in_fan_out = LORA_TARGETS[family]
            rows = {"model.embed_tokens": list(range(5)), "lm_head": list(range(5))}  # 5 added GLM tokens
            network.model = apply_lora(hf, lora, LoRADefaults(targets, fan_in_fan_out, trainable_tokens=rows))
            row(f"{name} (GLM mode)", network)


if __name__ == "__main__":
    main()
