import torch

from recsys_lightning.model.glm import GLMConfig
from recsys_lightning.infilling.layout import Blank, blank_infilling_mask, collate_infill, infill
from tests.conftest import make_glm


def forward(model, batch):
    mask = blank_infilling_mask(batch["segment_ids"], batch["part_a"])
    return model(batch["input_ids"], batch["position_ids"], mask).logits


def layout(tokens, part_a_tail, span):
    m = min(tokens.masks)
    part_a = [tokens.cls, *part_a_tail, m, tokens.eos]
    return collate_infill([infill(part_a, [Blank(len(part_a) - 2, span)], tokens)], tokens.pad)


def test_attention_pattern_part_a_bidirectional_part_b_causal(tokenizer, tokens):
    model = make_glm(len(tokenizer))
    base = layout(tokens, [10, 11, 12], [20, 21, 22])
    out = forward(model, base)
    n_a = int(base["part_a"].sum())
    # change a later Part A token: earlier Part A outputs change (bidirectional)
    changed = {k: v.clone() for k, v in base.items()}
    changed["input_ids"][0, 3] = 40
    assert not torch.allclose(forward(model, changed)[0, 1], out[0, 1])
    # change the last Part B token: earlier Part B and all Part A outputs stay (causal, A never sees B)
    changed = {k: v.clone() for k, v in base.items()}
    changed["input_ids"][0, -1] = 41
    new = forward(model, changed)
    assert torch.allclose(new[0, :-1], out[0, :-1], atol=1e-6)
    assert not torch.allclose(new[0, -1], out[0, -1])
    assert n_a == 6


def test_2d_positions_are_both_used(tokenizer, tokens):
    model = make_glm(len(tokenizer))
    base = layout(tokens, [10, 11], [20, 21])
    out = forward(model, base)
    for row in (0, 1):
        moved = {k: v.clone() for k, v in base.items()}
        moved["position_ids"][0, row, -1] += 1
        assert not torch.allclose(forward(model, moved)[0, -1], out[0, -1])


def test_output_layer_is_tied_to_word_embeddings(tokenizer):
    model = make_glm(len(tokenizer))
    names = [n for n, _ in model.named_parameters()]
    assert "word_embeddings.weight" in names and not any("lm_head" in n or "output" in n for n in names)
    assert "transformer.block_position_embeddings.weight" in names
    assert "transformer.layers.0.attention.query_key_value.weight" in names


def test_kv_cache_step_equals_full_forward(tokenizer, tokens):
    model = make_glm(len(tokenizer))
    full = layout(tokens, [10, 11, 12], [20, 21])
    n_a = int(full["part_a"].sum())
    ref = forward(model, full)
    ids, pos = full["input_ids"], full["position_ids"]
    a_mask = torch.ones(1, 1, n_a, n_a, dtype=torch.bool)
    past = model(ids[:, :n_a], pos[:, :, :n_a], a_mask, use_cache=True).past_key_values
    for t in range(n_a, ids.shape[1]):
        step = model(ids[:, t:t + 1], pos[:, :, t:t + 1], torch.ones(1, 1, 1, t + 1, dtype=torch.bool),
                     past_key_values=past, use_cache=True)
        past = step.past_key_values
        assert torch.allclose(step.logits[0, 0], ref[0, t], atol=1e-5)


def test_gradient_checkpointing_gives_the_same_gradients(tokenizer, tokens):
    batch = layout(tokens, [10, 11], [20, 21])
    grads = []
    for ckpt in (False, True):
        model = make_glm(len(tokenizer)).train()
        model.gradient_checkpointing = ckpt
        forward(model, batch).sum().backward()
        grads.append(model.transformer.layers[0].mlp.dense_h_to_4h.weight.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_embedding_dropout_is_set_apart_from_hidden_dropout(tokenizer, tokens):
    assert GLMConfig(vocab_size=8, hidden_dropout=0.3).embedding_dropout == 0.3  # unset: the hidden dropout
    model = make_glm(len(tokenizer), embedding_dropout=1.0).train()  # hidden dropout 0, every embedding dropped
    base = layout(tokens, [10, 11, 12], [20, 21])
    changed = {k: v.clone() for k, v in base.items()}
    changed["input_ids"][0, 2] = 40
    assert torch.equal(forward(model, changed), forward(model, base))  # the blocks see no token
    assert not torch.equal(forward(model.eval(), changed), forward(model, base))
