import torch

from recsys_lightning.generation.beam import trie_beam_search
from recsys_lightning.generation.trie import ItemTrie
from recsys_lightning.infilling.layout import collate_part_a
from tests.conftest import make_glm
from tests.generation.reference import OPENINGS, brute_force_scores, prefix_free_catalog, prompts, random_catalog


def part_a_batch(tokens, openings=None):
    rows = [{"input_ids": p, "mask_index": p.index(min(tokens.masks))} for p in prompts(tokens)]
    for row, opening in zip(rows, openings or []):
        row["part_b_ids"] = opening
    return rows, collate_part_a(rows, tokens.pad)


def test_beam_as_wide_as_catalog_equals_brute_force(tokenizer, tokens):
    model = make_glm(len(tokenizer))
    items = random_catalog(40)
    trie = ItemTrie(items, tokens.eop)
    rows, batch = part_a_batch(tokens)
    ranked, scores = trie_beam_search(model, batch["input_ids"], batch["lengths"], batch["mask_index"], trie,
                                      tokens.sop, beam_size=len(items), top_k=10)
    for b, row in enumerate(rows):
        ref = brute_force_scores(model, row["input_ids"], row["mask_index"], items, tokens)
        top = ref.topk(10)
        assert ranked[b].tolist() == top.indices.tolist()
        assert torch.allclose(scores[b], top.values, atol=1e-4)


def test_beam_after_a_given_opening_equals_brute_force_of_the_opened_blank(tokenizer, tokens):
    model = make_glm(len(tokenizer), seed=3)
    items = random_catalog(40, seed=3)
    trie = ItemTrie(items, tokens.eop)
    rows, batch = part_a_batch(tokens, OPENINGS)
    assert batch["part_b_ids"].tolist() == [[40, 41, 42], [-1, -1, -1]]
    ranked, scores = trie_beam_search(model, batch["input_ids"], batch["lengths"], batch["mask_index"], trie,
                                      tokens.sop, len(items), 10, part_b_ids=batch["part_b_ids"])
    for b, (row, opening) in enumerate(zip(rows, OPENINGS)):
        ref = brute_force_scores(model, row["input_ids"], row["mask_index"], items, tokens, opening)
        top = ref.topk(10)
        assert ranked[b].tolist() == top.indices.tolist()
        assert torch.allclose(scores[b], top.values, atol=1e-4)
    plain, _ = trie_beam_search(model, batch["input_ids"], batch["lengths"], batch["mask_index"], trie, tokens.sop,
                                len(items), 10)
    assert plain[1].tolist() == ranked[1].tolist() and plain[0].tolist() != ranked[0].tolist()


def test_beam_without_the_end_token_ranks_items_by_their_own_tokens(tokenizer, tokens):
    model = make_glm(len(tokenizer), seed=4)
    items = prefix_free_catalog(30)
    trie = ItemTrie(items, tokens.eop)
    rows, batch = part_a_batch(tokens, OPENINGS)
    ranked, scores = trie_beam_search(model, batch["input_ids"], batch["lengths"], batch["mask_index"], trie,
                                      tokens.sop, len(items), 10, part_b_ids=batch["part_b_ids"], score_end=False)
    for b, (row, opening) in enumerate(zip(rows, OPENINGS)):
        ref = brute_force_scores(model, row["input_ids"], row["mask_index"], items, tokens, opening, score_end=False)
        top = ref.topk(10)
        assert ranked[b].tolist() == top.indices.tolist()
        assert torch.allclose(scores[b], top.values, atol=1e-4)
        with_end = brute_force_scores(model, row["input_ids"], row["mask_index"], items, tokens, opening)
        assert with_end.topk(10).indices.tolist() != top.indices.tolist()


def test_narrow_beam_returns_true_scores_of_real_items(tokenizer, tokens):
    model = make_glm(len(tokenizer), seed=1)
    items = random_catalog(60, seed=1, max_len=4)
    trie = ItemTrie(items, tokens.eop)
    rows, batch = part_a_batch(tokens)
    ranked, scores = trie_beam_search(model, batch["input_ids"], batch["lengths"], batch["mask_index"], trie,
                                      tokens.sop, beam_size=3, top_k=3)
    for b, row in enumerate(rows):
        ref = brute_force_scores(model, row["input_ids"], row["mask_index"], items, tokens)
        assert (ranked[b] >= 0).all() and len(set(ranked[b].tolist())) == 3
        assert torch.allclose(scores[b], ref[ranked[b]], atol=1e-4)
        assert (scores[b][:-1] >= scores[b][1:]).all()


def test_exclusion_removes_items_and_keeps_the_rest_in_order(tokenizer, tokens):
    model = make_glm(len(tokenizer))
    items = random_catalog(40)
    trie = ItemTrie(items, tokens.eop)
    _, batch = part_a_batch(tokens)
    args = (model, batch["input_ids"], batch["lengths"], batch["mask_index"], trie, tokens.sop, len(items), 10)
    ranked, _ = trie_beam_search(*args)
    exclude = torch.zeros(2, len(items), dtype=torch.bool)
    exclude[0, ranked[0, :3]] = True
    again, _ = trie_beam_search(*args, exclude=exclude)
    assert again[0, :7].tolist() == ranked[0, 3:].tolist()
    assert again[1].tolist() == ranked[1].tolist()


def test_small_catalog_pads_with_minus_one(tokenizer, tokens):
    model = make_glm(len(tokenizer))
    trie = ItemTrie([[20], [21, 22]], tokens.eop)
    m = min(tokens.masks)
    batch = collate_part_a([{"input_ids": [tokens.cls, m, tokens.eos], "mask_index": 1}], tokens.pad)
    ranked, scores = trie_beam_search(model, batch["input_ids"], batch["lengths"], batch["mask_index"], trie,
                                      tokens.sop, beam_size=4, top_k=5)
    assert sorted(ranked[0, :2].tolist()) == [0, 1]
    assert ranked[0, 2:].tolist() == [-1, -1, -1] and torch.isinf(scores[0, 2:]).all()


def test_item_bias_is_added_where_the_item_is_decided_exact_for_a_narrow_beam_on_atomic_ids(tokenizer, tokens):
    model = make_glm(len(tokenizer), seed=5)
    items = [[t] for t in range(20, 60)]  # atomic ids: the first token decides the item
    trie = ItemTrie(items, tokens.eop)
    rows, batch = part_a_batch(tokens)
    bias = torch.randn(2, len(items), generator=torch.Generator().manual_seed(5)) * 3
    ranked, scores = trie_beam_search(model, batch["input_ids"], batch["lengths"], batch["mask_index"], trie,
                                      tokens.sop, beam_size=10, top_k=10, item_bias=bias)
    for b, row in enumerate(rows):
        top = (brute_force_scores(model, row["input_ids"], row["mask_index"], items, tokens) + bias[b]).topk(10)
        assert ranked[b].tolist() == top.indices.tolist()  # a beam of 10 finds the biased top 10 of 40
        assert torch.allclose(scores[b], top.values, atol=1e-4)
    plain, _ = trie_beam_search(model, batch["input_ids"], batch["lengths"], batch["mask_index"], trie, tokens.sop,
                                10, 10)
    assert plain.tolist() != ranked.tolist()


def test_item_bias_on_shared_prefixes_counts_once_per_item(tokenizer, tokens):
    model = make_glm(len(tokenizer), seed=6)
    items = random_catalog(40, seed=6)
    trie = ItemTrie(items, tokens.eop)
    rows, batch = part_a_batch(tokens)
    bias = torch.randn(2, len(items), generator=torch.Generator().manual_seed(6))
    ranked, scores = trie_beam_search(model, batch["input_ids"], batch["lengths"], batch["mask_index"], trie,
                                      tokens.sop, beam_size=len(items), top_k=10, item_bias=bias)
    for b, row in enumerate(rows):
        top = (brute_force_scores(model, row["input_ids"], row["mask_index"], items, tokens) + bias[b]).topk(10)
        assert ranked[b].tolist() == top.indices.tolist()
        assert torch.allclose(scores[b], top.values, atol=1e-4)
