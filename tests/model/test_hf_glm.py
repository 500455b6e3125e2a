"""HF causal LMs in GLM mode: the attention pattern, 2D positions, the KV-cache contract, LoRA per family and
pretrained folders that lack GLM's tokens, on tiny random-init Llama / Qwen2 / Mistral / GPT-2 built locally."""

from __future__ import annotations

import pytest
import torch

from recsys_lightning.infilling.tokens import GLMTokens
from recsys_lightning.generation.beam import trie_beam_search
from recsys_lightning.generation.trie import ItemTrie
from recsys_lightning.model.hf_glm import BLOCK_POSITIONS_FILE, HFCausalLM, additive_mask
from recsys_lightning.infilling.layout import Blank, blank_infilling_mask, collate_infill, collate_part_a, infill
from recsys_lightning.model.lora import LoRA, trainable_fraction
from tests.model.conftest import HF_CONFIGS, one_sample, write_pretrained

FAMILIES = sorted(HF_CONFIGS)


def build(family, tokenizer, seed=0):
    torch.manual_seed(seed)
    return HFCausalLM(config=HF_CONFIGS[family]).build(tokenizer).eval()


def forward(model, batch):
    mask = blank_infilling_mask(batch["segment_ids"], batch["part_a"])
    return model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], attention_mask=mask).logits


def edited(batch, key, index, value):
    out = {k: v.clone() for k, v in batch.items()}
    out[key][index] = value
    return out


def test_additive_mask_blocks_with_the_dtype_minimum():
    allowed = torch.tensor([[True, False]])
    mask = additive_mask(allowed, torch.bfloat16)
    assert mask.dtype == torch.bfloat16 and mask[0, 0] == 0 and mask[0, 1] == torch.finfo(torch.bfloat16).min


@pytest.mark.parametrize("family", FAMILIES)
def test_attention_pattern_part_a_bidirectional_part_b_causal(family, tokenizer, tokens):
    model = build(family, tokenizer)
    base = one_sample(tokens, [10, 11, 12], [20, 21, 22])
    n_a = int(base["part_a"].sum())
    with torch.no_grad():
        out = forward(model, base)
        # a Part A token sees later Part A tokens
        later_a = forward(model, edited(base, "input_ids", (0, n_a - 3), 40))
        assert not torch.allclose(later_a[0, 1], out[0, 1])
        # a Part B token never sees later Part B tokens, and Part A never sees Part B
        later_b = forward(model, edited(base, "input_ids", (0, -1), 41))
        torch.testing.assert_close(later_b[0, :-1], out[0, :-1])
        assert not torch.allclose(later_b[0, -1], out[0, -1])


@pytest.mark.parametrize("family", FAMILIES)
def test_2d_positions_inter_via_position_ids_intra_via_block_embedding(family, tokenizer, tokens):
    model = build(family, tokenizer)
    base = one_sample(tokens, [10, 11], [20, 21])
    with torch.no_grad():
        out = forward(model, base)
        moved_inter = forward(model, edited(base, "position_ids", (0, 0, -1), int(base["position_ids"][0, 0, -1]) + 1))
        assert not torch.allclose(moved_inter[0, -1], out[0, -1])
        # the block-position embedding starts at zero: the pretrained model is unchanged until it trains
        moved_intra = edited(base, "position_ids", (0, 1, -1), 5)
        torch.testing.assert_close(forward(model, moved_intra), out)
        model.block_position_embeddings.weight.normal_()
        assert not torch.allclose(forward(model, moved_intra)[0, -1], forward(model, base)[0, -1])


@pytest.mark.parametrize("family", FAMILIES)
def test_kv_cache_contract_step_equals_full_forward(family, tokenizer, tokens):
    model = build(family, tokenizer)
    model.block_position_embeddings.weight.data.normal_()
    full = one_sample(tokens, [10, 11, 12], [20, 21])
    n_a = int(full["part_a"].sum())
    ids, pos = full["input_ids"], full["position_ids"]
    with torch.no_grad():
        ref = forward(model, full)
        past = model(ids[:, :n_a], pos[:, :, :n_a], torch.ones(1, 1, n_a, n_a, dtype=torch.bool),
                     use_cache=True).past_key_values
        assert isinstance(past, list) and past[0][0].ndim == 4 and past[0][0].shape[2] == n_a
        for t in range(n_a, ids.shape[1]):
            past = [(k.repeat(2, 1, 1, 1)[:1], v) for k, v in past]  # beam search reorders rows with k[idx]
            step = model(ids[:, t:t + 1], pos[:, :, t:t + 1], torch.ones(1, 1, 1, t + 1, dtype=torch.bool),
                         past_key_values=past, use_cache=True)
            past = step.past_key_values
            torch.testing.assert_close(step.logits[0, 0], ref[0, t], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_trie_beam_search_runs_on_hf_backbones_and_matches_exhaustive_scoring(family, tokenizer, tokens):
    model = build(family, tokenizer)
    model.block_position_embeddings.weight.data.normal_()
    items = [[20], [20, 21], [21, 22, 23], [22], [23, 20], [24, 25]]
    m = min(tokens.masks)
    prompt = [tokens.cls, 30, m, 31, tokens.eos]
    batch = collate_part_a([{"input_ids": prompt, "mask_index": 2}], tokens.pad)
    ranked, scores = trie_beam_search(model, batch["input_ids"], batch["lengths"], batch["mask_index"],
                                      ItemTrie(items, tokens.eop), tokens.sop, beam_size=len(items), top_k=4)
    rows = collate_infill([infill(prompt, [Blank(2, seq)], tokens) for seq in items], tokens.pad)
    with torch.no_grad():
        logp = forward(model, rows).log_softmax(-1)
    labels = rows["labels"]
    exhaustive = (logp.gather(2, labels.clamp(min=0)[..., None])[..., 0] * (labels >= 0)).sum(1)
    assert ranked[0].tolist() == exhaustive.topk(4).indices.tolist()
    torch.testing.assert_close(scores[0], exhaustive.topk(4).values, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_targets_per_family(family, tokenizer, tokens):
    backbone = HFCausalLM(config=HF_CONFIGS[family])
    torch.manual_seed(0)
    network = backbone.build(tokenizer).eval()
    batch = one_sample(tokens, [10, 11], [20, 21])
    with torch.no_grad():
        ref = forward(network, batch)
    wrapped = backbone.add_lora(network, LoRA(r=4, alpha=8, dropout=0.0), tokenizer).eval()
    names = [n for n, p in wrapped.named_parameters() if p.requires_grad]
    expected = {"gpt2": ("c_attn", "c_proj", "c_fc")}.get(family, ("q_proj", "k_proj", "v_proj", "o_proj",
                                                                  "gate_proj", "up_proj", "down_proj"))
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in names if "lora_" in n} == set(expected)
    assert [n for n in names if "lora_" not in n] == ["block_position_embeddings.weight"]
    trainable, total = trainable_fraction(wrapped)
    assert 0 < trainable < total / 2
    with torch.no_grad():  # LoRA starts as the identity (GPT-2's Conv1D needs fan_in_fan_out to get here)
        torch.testing.assert_close(forward(wrapped, batch), ref)


@pytest.mark.parametrize("tied", [False, True])
def test_pretrained_folder_gets_glm_and_item_tokens_and_their_rows_train_under_lora(tmp_path, tied):
    base_vocab = write_pretrained(tmp_path / "llama", tied=tied)
    backbone = HFCausalLM(model=str(tmp_path / "llama"))
    tokenizer = backbone.tokenizer()
    glm = GLMTokens.of(tokenizer)
    assert glm.cls == tokenizer.convert_tokens_to_ids("<s>") and glm.eos == glm.pad == 2  # reuses bos / eos
    assert len(tokenizer) == base_vocab + 5  # [MASK], [gMASK], [sMASK], <|startofpiece|>, <|endofpiece|>
    assert tokenizer.decode(tokenizer("Guitar 42", add_special_tokens=False)["input_ids"]) == "Guitar 42"
    tokenizer.add_tokens(["<item_0>", "<item_1>"])  # atomic item ids, as the data module adds them
    items = tokenizer.convert_tokens_to_ids(["<item_0>", "<item_1>"])
    network = backbone.build(tokenizer)
    assert network.model.get_input_embeddings().num_embeddings == len(tokenizer)
    wrapped = backbone.add_lora(network, LoRA(r=2, dropout=0.0), tokenizer).train()
    trainable, total = trainable_fraction(wrapped)
    assert trainable / total < 0.5
    before_in = network.model.get_base_model().get_input_embeddings().weight.detach().clone()
    before_out = network.model.get_base_model().get_output_embeddings().weight.detach().clone()
    optimizer = torch.optim.SGD([p for p in wrapped.parameters() if p.requires_grad], lr=1.0)
    batch = one_sample(glm, [5, items[0], 7], [items[1], 9])
    for _ in range(2):  # LoRA's B starts at zero, so A moves from the second step
        optimizer.zero_grad()
        logits = forward(wrapped, batch)
        labels = batch["labels"][batch["labels"] != -100]
        torch.nn.functional.cross_entropy(logits[batch["labels"] != -100], labels).backward()
        optimizer.step()
    after_in = network.model.get_base_model().get_input_embeddings().weight.detach()
    after_out = network.model.get_base_model().get_output_embeddings().weight.detach()
    changed_in = (after_in != before_in).any(1).nonzero().flatten().tolist()
    changed_out = (after_out != before_out).any(1).nonzero().flatten().tolist()
    new = set(glm.all_ids) | set(items)
    assert set(changed_in) <= new and {glm.sop, *items} <= set(changed_in)  # only new rows move, as inputs...
    assert set(changed_out) <= new and {glm.eop, items[1]} <= set(changed_out)  # ...and as outputs
    if tied:  # peft ties the output rows to the input rows: one set of values serves both
        torch.testing.assert_close(after_in, after_out)
    assert not (tmp_path / "llama" / BLOCK_POSITIONS_FILE).exists()


def test_gradient_checkpointing_gives_the_same_gradients(tokenizer, tokens):
    batch = one_sample(tokens, [10, 11], [20, 21])
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        network = HFCausalLM(config=HF_CONFIGS["llama"], gradient_checkpointing=checkpointing).build(tokenizer)
        network.block_position_embeddings.weight.data.normal_()
        forward(network.train(), batch).sum().backward()
        assert network.model.is_activation_checkpointing == checkpointing
        grads.append((network.model.model.layers[0].mlp.up_proj.weight.grad,
                      network.block_position_embeddings.weight.grad))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_constructor_errors_name_the_key():
    with pytest.raises(ValueError, match="exactly one of `model`"):
        HFCausalLM()
    with pytest.raises(ValueError, match="model_type"):
        HFCausalLM(config={"hidden_size": 8})
    with pytest.raises(ValueError, match="adapter needs the pretrained"):
        HFCausalLM(config=HF_CONFIGS["llama"], adapter="x")
    with pytest.raises(FileNotFoundError, match="model.backbone.model '/path/to/Qwen2.5-7B': no such folder"):
        HFCausalLM(model="/path/to/Qwen2.5-7B")
