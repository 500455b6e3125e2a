import pytest
import torch

from recsys_lightning.generation.beam import trie_beam_search
from recsys_lightning.generation.hf_generate import (CACHE_FIELD, DictTrie, GLMForGenerate, hf_trie_beam_search,
                                                     left_padded_prompts)
from recsys_lightning.generation.trie import ItemTrie
from recsys_lightning.infilling.layout import collate_part_a
from tests.conftest import make_glm
from tests.generation.reference import brute_force_scores, prompts, random_catalog


def part_a_batch(tokens):
    rows = [{"input_ids": p, "mask_index": p.index(min(tokens.masks))} for p in prompts(tokens)]
    return rows, collate_part_a(rows, tokens.pad)


def test_wrapper_keeps_the_weights_and_scores_like_a_full_forward(tokenizer, tokens):
    model = make_glm(len(tokenizer), seed=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    wrapper = GLMForGenerate(model, len(tokenizer))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    rows, batch = part_a_batch(tokens)
    item = [21, 22, 23]
    prompt, attention_mask = left_padded_prompts(batch["input_ids"], batch["lengths"], tokens.sop, tokens.pad)
    out = wrapper(prompt, attention_mask, batch["mask_index"])
    total = out.logits[:, -1].log_softmax(-1)[:, item[0]]
    for prev, nxt in zip(item, [*item[1:], tokens.eop]):
        attention_mask = torch.cat([attention_mask, torch.ones(2, 1, dtype=torch.long)], 1)
        out = wrapper(torch.full((2, 1), prev), attention_mask, batch["mask_index"],
                      cache=getattr(out, CACHE_FIELD))
        total = total + out.logits[:, -1].log_softmax(-1)[:, nxt]
    ref = torch.cat([brute_force_scores(model, r["input_ids"], r["mask_index"], [item], tokens) for r in rows])
    assert torch.allclose(total, ref, atol=1e-4)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("beam, top_k", [(2, 2), (5, 3), (10, 10)])
def test_our_search_returns_what_hf_generate_returns(tokenizer, tokens, seed, beam, top_k):
    """Beams narrower than the catalog: the same items in the same order as `generate` over the same Trie."""
    model = make_glm(len(tokenizer), seed=seed, init_std=0.2 if seed else 0.02)
    items = random_catalog(150, seed=seed, low=20, high=30, max_len=4)
    trie = ItemTrie(items, tokens.eop)
    _, batch = part_a_batch(tokens)
    ours, _ = trie_beam_search(model, batch["input_ids"], batch["lengths"], batch["mask_index"], trie, tokens.sop,
                               beam, top_k)
    hf = hf_trie_beam_search(GLMForGenerate(model, len(tokenizer)), DictTrie(items, tokens.eop), trie.depth,
                             batch["input_ids"], batch["lengths"], batch["mask_index"], tokens.sop, tokens.pad, beam,
                             top_k)
    assert ours.tolist() == hf.tolist()


def test_dict_trie_walks_the_same_items():
    walk = DictTrie([[1, 2], [1, 3], [1, 2, 4]], end_token=9)
    assert sorted(walk.allowed([])) == [1] and sorted(walk.allowed([1, 2])) == [4, 9]
    assert walk.item([1, 2, 9]) == 0 and walk.item([1, 2, 4, 9]) == 2 and walk.item([1, 9]) == -1
    assert walk.allowed([5]) == [9]
