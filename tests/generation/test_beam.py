import torch

from recsys_lightning.generation.beam import trie_beam_search
from recsys_lightning.generation.trie import ItemTrie
from recsys_lightning.model.layout import Blank, blank_infilling_mask, collate_infill, collate_part_a, infill
from tests.conftest import make_glm


def brute_force_scores(model, part_a, mask_index, items, tokens):
    """Teacher-forced log-likelihood of every item (with <|endofpiece|>) in one full forward each."""
    rows = [infill(part_a, [Blank(mask_index, seq)], tokens) for seq in items]
    batch = collate_infill(rows, tokens.pad)
    mask = blank_infilling_mask(batch["segment_ids"], batch["part_a"])
    logp = model(batch["input_ids"], batch["position_ids"], mask).logits.log_softmax(-1)
    labels = batch["labels"]
    picked = logp.gather(2, labels.clamp(min=0)[..., None])[..., 0]
    return (picked * (labels >= 0)).sum(1)


def setup(tokenizer, tokens, n_items=40):
    gen = torch.Generator().manual_seed(0)
    items, seen = [], set()
    while len(items) < n_items:  # varying lengths, shared prefixes
        seq = tuple(int(t) for t in torch.randint(20, 26, (int(torch.randint(1, 4, (1,), generator=gen)),), generator=gen))
        if seq not in seen:
            seen.add(seq)
            items.append(list(seq))
    m = min(tokens.masks)
    prompts = [[tokens.cls, 30, 31, m, tokens.eos], [tokens.cls, 32, m, 33, 34, 35, tokens.eos]]
    return items, prompts


def test_beam_as_wide_as_catalog_equals_brute_force(tokenizer, tokens):
    model = make_glm(len(tokenizer))
    items, prompts = setup(tokenizer, tokens)
    trie = ItemTrie(items, tokens.eop)
    rows = [{"input_ids": p, "mask_index": p.index(min(tokens.masks))} for p in prompts]
    batch = collate_part_a(rows, tokens.pad)
    ranked, scores = trie_beam_search(model, batch["input_ids"], batch["lengths"], batch["mask_index"], trie,
                                      tokens.sop, beam_size=len(items), top_k=10)
    for b, row in enumerate(rows):
        ref = brute_force_scores(model, row["input_ids"], row["mask_index"], items, tokens)
        top = ref.topk(10)
        assert ranked[b].tolist() == top.indices.tolist()
        assert torch.allclose(scores[b], top.values, atol=1e-4)


def test_exclusion_removes_items_and_keeps_the_rest_in_order(tokenizer, tokens):
    model = make_glm(len(tokenizer))
    items, prompts = setup(tokenizer, tokens)
    trie = ItemTrie(items, tokens.eop)
    rows = [{"input_ids": p, "mask_index": p.index(min(tokens.masks))} for p in prompts]
    batch = collate_part_a(rows, tokens.pad)
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
