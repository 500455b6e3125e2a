"""Trie beam search under bf16 autocast whose final beam is re-scored in float32 (`Generator(rescore_float32=True)`):
bf16 logits reorder near-tied items, the re-scored ranking is float32's."""

import pytest
import torch

from recsys_lightning.generation.generator import Generator
from recsys_lightning.generation.trie import ItemTrie
from recsys_lightning.infilling.layout import collate_part_a
from recsys_lightning.module import RecSysLLM
from tests.conftest import make_glm

# two-token items, 6 first tokens: the search keeps every prefix, so its final beam holds float32's top 10
CATALOG = [[a, b] for a in range(20, 26) for b in range(26, 46)]


def prompts(tokens, users: int = 8) -> dict[str, torch.Tensor]:
    """Part A prompts of random tokens and lengths, the mask at random places."""
    gen, mask, rows = torch.Generator().manual_seed(0), min(tokens.masks), []
    for _ in range(users):
        body = torch.randint(20, 80, (int(torch.randint(3, 9, (1,), generator=gen)),), generator=gen).tolist()
        cut = int(torch.randint(0, len(body) + 1, (1,), generator=gen))
        ids = [tokens.cls, *body[:cut], mask, *body[cut:], tokens.eos]
        rows.append({"input_ids": ids, "mask_index": cut + 1})
    return collate_part_a(rows, tokens.pad)


def test_a_bf16_search_rescored_in_float32_ranks_the_top_10_as_float32_decoding(tokenizer, tokens):
    model = make_glm(len(tokenizer), seed=2, init_std=0.3)  # peaked enough that bf16 reorders some users' items
    trie, batch = ItemTrie(CATALOG, tokens.eop), prompts(tokens)
    items, scores = Generator(model, tokens, 20).rank_items(batch, trie, 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16, _ = Generator(model, tokens, 20).rank_items(batch, trie, 10)
        rescored, rescores = Generator(model, tokens, 20, rescore_float32=True).rank_items(batch, trie, 10)
    assert not torch.equal(bf16, items)  # bf16 alone does not give float32's top 10
    torch.testing.assert_close(rescores, scores, atol=1e-5, rtol=0)
    apart = scores.diff(dim=1).abs() > 1e-4  # neighbours that no float32 rounding can swap
    distinct = torch.cat([apart[:, :1], apart[:, 1:] & apart[:, :-1], apart[:, -1:]], 1)
    assert distinct.float().mean() > 0.9 and torch.equal(rescored[distinct], items[distinct])


def test_float32_rescoring_refuses_bf16_weights(tokenizer, tokens):
    model = make_glm(len(tokenizer)).to(torch.bfloat16)
    with pytest.raises(ValueError, match="float32 re-scoring needs float32 weights"):
        Generator(model, tokens, 4, rescore_float32=True)


def test_the_module_option_decodes_with_a_rescoring_generator(tokenizer, tokens):
    module = RecSysLLM(rescore_float32=True)
    module.network, module.tokens = make_glm(len(tokenizer)), tokens
    assert module.generator.rescore_float32 and not RecSysLLM().hparams.rescore_float32
