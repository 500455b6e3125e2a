import pytest
import torch

from recsys_lightning.generation.trie import ItemTrie

EOP = 99


def walk(trie, seq):
    node = 0
    for tok in seq:
        toks, nodes = trie.allowed(torch.tensor([node]))
        hit = (toks[0] == tok).nonzero()
        if len(hit) == 0:
            return None
        node = int(nodes[0, hit[0, 0]])
    return node


def test_every_item_path_ends_at_its_leaf_and_nothing_else_is_allowed():
    seqs = [[1, 2], [1, 3], [1, 2, 4], [5]]
    trie = ItemTrie(seqs, EOP)
    for item, seq in enumerate(seqs):
        assert int(trie.leaf_item[walk(trie, [*seq, EOP])]) == item
    assert walk(trie, [2]) is None
    assert walk(trie, [1, 2, EOP, 1]) is None
    root_tokens = set(trie.allowed(torch.tensor([0]))[0][0].tolist()) - {-1}
    assert root_tokens == {1, 5}
    assert trie.depth == 4 and trie.num_items == 4


def test_identical_sequences_are_rejected():
    with pytest.raises(ValueError, match="same token sequence"):
        ItemTrie([[1, 2], [1, 2]], EOP)
