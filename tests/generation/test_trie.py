import pytest
import torch

from recsys_lightning.generation.trie import ItemTrie

EOP = 99


def walk(trie, seq):
    """Follow `seq` (ending with EOP) through the per-depth tables: the item it ends, or None if not allowed."""
    row = 0
    for depth, tok in enumerate(seq):
        toks, rows, items = (t[0] for t in trie.children(depth, torch.tensor([row])))
        hit = (toks == tok).nonzero()
        if len(hit) == 0:
            return None
        c = int(hit[0, 0])
        if tok == EOP:
            return int(items[c])
        row = int(rows[c])
    return None


def test_every_item_path_ends_at_its_item_and_nothing_else_is_allowed():
    seqs = [[1, 2], [1, 3], [1, 2, 4], [5]]
    trie = ItemTrie(seqs, EOP)
    for item, seq in enumerate(seqs):
        assert walk(trie, [*seq, EOP]) == item
    assert walk(trie, [2, EOP]) is None
    assert walk(trie, [1, EOP]) is None
    root_tokens = set(trie.children(0, torch.tensor([0]))[0][0].tolist()) - {-1}
    assert root_tokens == {1, 5}
    assert trie.depth == 4 and trie.num_items == 4 and len(trie.tokens) == 4
    assert trie.item_tokens.tolist() == [[1, 2, -1], [1, 3, -1], [1, 2, 4], [5, -1, -1]]


def test_prefix_free_says_whether_an_item_begins_another():
    assert ItemTrie([[1, 2], [1, 3], [5]], EOP).prefix_free
    assert not ItemTrie([[1, 2], [1, 2, 4], [5]], EOP).prefix_free


def test_tables_are_padded_per_depth_not_to_the_widest_node():
    seqs = [[t] for t in range(50)] + [[0, 1, 2]]
    trie = ItemTrie(seqs, EOP)
    assert trie.tokens[0].shape == (1, 50)
    assert [t.shape[1] for t in trie.tokens[1:]] == [2, 1, 1]


@pytest.mark.parametrize("seqs, match", [
    ([[1, 2], [1, 2]], "same token sequence"),
    ([[1], []], "empty token sequence"),
    ([[1, EOP, 2]], "contains the end token"),
    ([], "at least one item"),
])
def test_bad_catalogs_are_rejected(seqs, match):
    with pytest.raises(ValueError, match=match):
        ItemTrie(seqs, EOP)


def test_sole_items_name_the_node_where_each_item_is_decided():
    trie = ItemTrie([[5, 6], [5, 7], [8], [5, 7, 9]], end_token=4)
    assert trie.sole_items[0].tolist() == [-1]  # the root: every item
    assert trie.sole_items[1].tolist() == [-1, 2]  # after 5: items 0, 1, 3; after 8: item 2
    assert trie.sole_items[2].tolist() == [0, -1]  # after 5 6: item 0; after 5 7: items 1 and 3
    assert trie.sole_items[3].tolist() == [3]  # after 5 7 9: item 3
