import torch

from recsys_lightning.model.backbones import GLM_LORA_TARGETS, NativeGLM
from recsys_lightning.model.lora import LoRA, LoRADefaults, apply_lora, trainable_fraction

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
