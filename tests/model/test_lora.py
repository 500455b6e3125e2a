import dataclasses
import math

import peft
import pytest
import torch
from transformers.pytorch_utils import Conv1D

from recsys_lightning.infilling.layout import blank_infilling_mask
from recsys_lightning.model.backbones import GLM_LORA_TARGETS, NativeGLM
from recsys_lightning.model.hf_glm import HFCausalLM
from recsys_lightning.model.lora import LoRA, LoRADefaults, apply_lora, lora_config, trainable_fraction
from tests.model.conftest import HF_CONFIGS, one_sample, write_pretrained

GLM = LoRADefaults(GLM_LORA_TARGETS)


def test_lora_trains_only_adapters(tokenizer):
    model = NativeGLM(hidden_size=32, num_layers=2, num_attention_heads=4).build(tokenizer)
    total_before = sum(p.numel() for p in model.parameters())
    wrapped = apply_lora(model, LoRA(r=4, alpha=8, dropout=0.0), GLM)
    trainable, total = trainable_fraction(wrapped)
    names = [n for n, p in wrapped.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    # rank 4 on qkv (32->96), dense (32->32), h_to_4h (32->128), 4h_to_h (128->32), 2 layers
    expected = 2 * 4 * ((32 + 96) + (32 + 32) + (32 + 128) + (128 + 32))
    assert trainable == expected and total == total_before + expected


def test_lora_target_modules_and_modules_to_save(tokenizer):
    model = NativeGLM(hidden_size=32, num_layers=1, num_attention_heads=4).build(tokenizer)
    wrapped = apply_lora(model, LoRA(r=2, target_modules=["query_key_value"], modules_to_save=["final_layernorm"]), LoRADefaults(()))
    names = [n for n, p in wrapped.named_parameters() if p.requires_grad]
    assert any("query_key_value.lora_A" in n for n in names)
    assert not any("dense" in n for n in names)
    assert any("final_layernorm" in n for n in names)


def test_lora_forward_matches_base_at_init(tokenizer):
    model = NativeGLM(hidden_size=32, num_layers=1, num_attention_heads=4, hidden_dropout=0,
                      attention_dropout=0).build(tokenizer).eval()
    ids = torch.randint(0, len(tokenizer), (1, 5))
    pos = torch.zeros(1, 2, 5, dtype=torch.long)
    mask = torch.ones(1, 1, 5, 5, dtype=torch.bool)
    ref = model(ids, pos, mask).logits
    wrapped = apply_lora(model, LoRA(r=2, dropout=0.0), GLM).eval()
    assert torch.allclose(wrapped(input_ids=ids, position_ids=pos, attention_mask=mask).logits, ref, atol=1e-6)


def adapted(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Module name -> peft LoRA layer."""
    return {name: m for name, m in model.named_modules() if isinstance(m, peft.tuners.lora.LoraLayer)}


def hf_backbone(family: str, tokenizer):
    backbone = HFCausalLM(config=HF_CONFIGS[family])
    torch.manual_seed(0)
    return backbone, backbone.build(tokenizer)


def test_dora_and_rslora_give_magnitude_vectors_and_alpha_over_sqrt_r_on_the_native_glm(tokenizer):
    model = NativeGLM(hidden_size=32, num_layers=1, num_attention_heads=4).build(tokenizer)
    wrapped = apply_lora(model, LoRA(r=4, alpha=8, dropout=0.0, use_dora=True, use_rslora=True), GLM)
    layers = adapted(wrapped)
    assert {name.rsplit(".", 1)[-1] for name in layers} == set(GLM_LORA_TARGETS)
    for layer in layers.values():
        assert layer.use_dora["default"] and "default" in layer.lora_magnitude_vector
        assert layer.scaling["default"] == pytest.approx(8 / math.sqrt(4))
    plain = adapted(apply_lora(NativeGLM(hidden_size=32, num_layers=1, num_attention_heads=4).build(tokenizer),
                               LoRA(r=4, alpha=8, dropout=0.0), GLM))
    assert all(layer.scaling["default"] == 2.0 and not layer.use_dora["default"] for layer in plain.values())


@pytest.mark.parametrize("family", sorted(HF_CONFIGS))
def test_dora_and_rslora_on_hf_backbones_keep_the_backbone_defaults(family, tokenizer, tokens):
    backbone, network = hf_backbone(family, tokenizer)
    batch = one_sample(tokens, [10, 11], [20, 21])
    mask = blank_infilling_mask(batch["segment_ids"], batch["part_a"])
    with torch.no_grad():
        ref = network.eval()(input_ids=batch["input_ids"], position_ids=batch["position_ids"], attention_mask=mask)
    wrapped = backbone.add_lora(network, LoRA(r=4, alpha=8, dropout=0.0, use_dora=True, use_rslora=True),
                                tokenizer).eval()
    layers = adapted(wrapped)
    defaults = backbone.lora_defaults(wrapped, tokenizer)
    assert {name.rsplit(".", 1)[-1] for name in layers} == set(defaults.targets)
    assert all(layer.use_dora["default"] and layer.scaling["default"] == pytest.approx(4.0) for layer in layers.values())
    assert wrapped.model.peft_config["default"].fan_in_fan_out == (family == "gpt2")
    with torch.no_grad():  # DoRA starts as the identity too (B = 0, magnitude = the weight's column norms)
        out = wrapped(input_ids=batch["input_ids"], position_ids=batch["position_ids"], attention_mask=mask)
    torch.testing.assert_close(out.logits, ref.logits, atol=1e-5, rtol=1e-5)


def test_all_linear_adapts_every_linear_layer_of_the_native_glm(tokenizer):
    model = NativeGLM(hidden_size=32, num_layers=2, num_attention_heads=4).build(tokenizer)
    linear = {name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    wrapped = apply_lora(model, LoRA(r=2, target_modules="all-linear"), GLM)
    assert {name.removeprefix("base_model.model.") for name in adapted(wrapped)} == linear and len(linear) == 8


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("tied", [False, True])
def test_all_linear_adapts_every_linear_layer_but_the_output_head_of_hf_backbones(family, tied, tmp_path, tokenizer):
    write_pretrained(tmp_path / family, family, tied=tied)
    backbone = HFCausalLM(model=str(tmp_path / family))
    network = backbone.build(backbone.tokenizer())
    hf = network.model
    head = next(name for name, m in hf.named_modules() if m is hf.get_output_embeddings())
    linear = {name for name, m in hf.named_modules() if isinstance(m, (torch.nn.Linear, Conv1D))} - {head}
    wrapped = backbone.add_lora(network, LoRA(r=2, target_modules="all-linear"), backbone.tokenizer())
    assert {name.removeprefix("base_model.model.") for name in adapted(wrapped.model)} == linear
    assert not isinstance(wrapped.model.get_output_embeddings(), peft.tuners.lora.LoraLayer)
    assert wrapped.model.peft_config["default"].trainable_token_indices  # the added tokens' rows still train


def test_any_lora_config_field_passes_through_and_the_short_names_map(tokenizer):
    lora = LoRA(r=4, alpha=12, dropout=0.1, bias="lora_only", init_lora_weights="gaussian", layers_to_transform=[0],
                layers_pattern="layers", exclude_modules=["dense"])
    config = lora_config(lora, GLM)
    assert (config.r, config.lora_alpha, config.lora_dropout) == (4, 12, 0.1)
    assert (config.bias, config.init_lora_weights, config.layers_to_transform) == ("lora_only", "gaussian", [0])
    assert set(config.target_modules) == set(GLM_LORA_TARGETS) and config.fan_in_fan_out is False
    wrapped = apply_lora(NativeGLM(hidden_size=32, num_layers=2, num_attention_heads=4).build(tokenizer), lora, GLM)
    layers = adapted(wrapped)
    assert layers and all(".layers.0." in name and not name.endswith(".dense") for name in layers)
    assert any(n.endswith(".bias") for n, p in wrapped.named_parameters() if p.requires_grad)  # bias="lora_only"


def test_an_unknown_lora_field_is_named_and_old_checkpoint_settings_still_load():
    with pytest.raises(ValueError, match=r"model.lora: unknown LoRA field\(s\) \['lora_alpha', 'rank'\] "
                                         r"\('lora_alpha' is written 'alpha'\).*'use_dora'"):
        LoRA.of({"r": 4, "lora_alpha": 8, "rank": 2})
    old = {"r": 4, "alpha": 8, "dropout": 0.1, "target_modules": ["dense"], "modules_to_save": []}  # before DoRA
    assert LoRA(**old) == LoRA.of(old) == LoRA(r=4, alpha=8, dropout=0.1, target_modules=["dense"])
    saved = dataclasses.asdict(LoRA(r=4, use_dora=True))  # the hyperparameters a LightningCLI checkpoint keeps
    assert LoRA.of(saved) == LoRA(r=4, use_dora=True)
