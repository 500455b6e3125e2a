"""A Trie of valid item token sequences stored as tensors, so allowed continuations are a gather, not a Python loop."""

from __future__ import annotations

from typing import Sequence

import torch


class ItemTrie:
    """Every item's token sequence (ending with <|endofpiece|>) as an automaton over padded child tables.

    Node 0 is the root. `child_token[n, c]` / `child_node[n, c]` list node n's children (-1 padding);
    `leaf_item[n]` is the item whose sequence ends at node n, else -1.
    """

    def __init__(self, sequences: Sequence[Sequence[int]], end_token: int) -> None:
        children: list[dict[int, int]] = [{}]
        leaf: list[int] = [-1]
        for item, seq in enumerate(sequences):
            node = 0
            for tok in (*seq, end_token):
                nxt = children[node].get(tok)
                if nxt is None:
                    nxt = len(children)
                    children[node][tok] = nxt
                    children.append({})
                    leaf.append(-1)
                node = nxt
            if leaf[node] != -1:
                raise ValueError(f"items {leaf[node]} and {item} have the same token sequence {list(seq)}")
            leaf[node] = item
        width = max(len(c) for c in children)
        self.child_token = torch.full((len(children), width), -1, dtype=torch.long)
        self.child_node = torch.full((len(children), width), -1, dtype=torch.long)
        for n, c in enumerate(children):
            if c:
                self.child_token[n, : len(c)] = torch.tensor(list(c.keys()))
                self.child_node[n, : len(c)] = torch.tensor(list(c.values()))
        self.leaf_item = torch.tensor(leaf, dtype=torch.long)
        self.num_items = len(sequences)
        self.depth = max(len(s) for s in sequences) + 1

    def to(self, device: torch.device | str) -> ItemTrie:
        """Move the tables to `device` (in place) and return self."""
        for name in ("child_token", "child_node", "leaf_item"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def allowed(self, nodes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens, next nodes) of each node in `nodes`, padded with -1."""
        return self.child_token[nodes], self.child_node[nodes]
