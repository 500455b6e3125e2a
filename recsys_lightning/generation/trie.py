"""A Trie of valid item token sequences stored as per-depth tensors, so allowed continuations are a gather.

Beam search advances every beam one token per step, so at step d all beams sit at depth d of the Trie. Each
depth therefore gets its own table, padded only to the widest node of that depth: a catalog whose first
tokens are thousands of distinct words costs one wide root row, not a width of thousands for every node.
"""

from __future__ import annotations

from typing import Sequence

import torch


def _padded(rows: Sequence[Sequence[tuple[int, ...]]], fields: int) -> torch.Tensor:
    """Ragged rows of `fields`-tuples -> (fields, len(rows), widest row) long, -1 padded, in one scatter."""
    width = max(len(row) for row in rows)
    out = torch.full((fields, len(rows), width), -1, dtype=torch.long)
    flat = [entry for row in rows for entry in row]
    row_idx = [r for r, row in enumerate(rows) for _ in row]
    col_idx = [c for row in rows for c in range(len(row))]
    out[:, row_idx, col_idx] = torch.tensor(flat, dtype=torch.long).T
    return out


class ItemTrie:
    """Every item's token sequence, ending with the end token (<|endofpiece|>), as per-depth child tables.

    A node at depth d is named by its row in that depth's tables (the root is row 0 of depth 0). Row n of
    depth d lists its children, padded with -1: `tokens[d][n, c]` is the token, `nodes[d][n, c]` the child's
    row at depth d + 1 (-1 when the token ends an item), and `items[d][n, c]` the item it ends (else -1).
    `item_tokens` (num_items, depth - 1) holds each item's sequence without the end token, -1 padded.
    `prefix_free` says no item's sequence begins another's, so an item ends where its tokens do, end token or not.
    `sole_items[d][n]` is the one item below node n of depth d, or -1 where several are: the first node at which
    a beam's item is decided (one token deep for atomic ids), where a per-item score can be added exactly.
    """

    def __init__(self, sequences: Sequence[Sequence[int]], end_token: int) -> None:
        if not sequences:
            raise ValueError("an item Trie needs at least one item")
        if any(len(seq) == 0 for seq in sequences):
            empty = next(i for i, seq in enumerate(sequences) if len(seq) == 0)
            raise ValueError(f"item {empty} has an empty token sequence")
        if any(end_token in seq for seq in sequences):
            bad = next(i for i, seq in enumerate(sequences) if end_token in seq)
            raise ValueError(f"item {bad} contains the end token {end_token} inside its sequence")
        self.end_token = end_token
        self.num_items = len(sequences)
        self.depth = max(len(s) for s in sequences) + 1
        self.tokens, self.nodes, self.items = [], [], []
        levels = self._levels(sequences, end_token)
        self.prefix_free = not any(len(node) > 1 and any(item >= 0 for _, _, item in node)
                                   for level in levels for node in level)
        for level in levels:
            tables = _padded(level, 3)
            self.tokens.append(tables[0])
            self.nodes.append(tables[1])
            self.items.append(tables[2])
        self.item_tokens = _padded([[(t,) for t in seq] for seq in sequences], 1)[0]
        self.sole_items = self._sole_items(sequences, levels)

    @staticmethod
    def _sole_items(sequences: Sequence[Sequence[int]], levels: list[list[list[tuple[int, int, int]]]]
                    ) -> list[torch.Tensor]:
        """Per depth, per node row: the only item whose sequence passes through the node, else -1."""
        child = [{(row, tok): nxt for row, node in enumerate(level) for tok, nxt, _ in node} for level in levels]
        sole = [[-2] * len(level) for level in levels]  # -2: no item seen below the node yet
        for item, seq in enumerate(sequences):
            row = 0
            for depth in range(len(seq) + 1):
                sole[depth][row] = item if sole[depth][row] == -2 else -1
                if depth < len(seq):
                    row = child[depth][row, seq[depth]]
        return [torch.tensor(level, dtype=torch.long) for level in sole]

    @staticmethod
    def _levels(sequences: Sequence[Sequence[int]], end_token: int) -> list[list[list[tuple[int, int, int]]]]:
        """Per depth, per node row: its children as (token, child row at the next depth or -1, item or -1)."""
        levels: list[list[dict[int, list[int]]]] = [[{}]]
        for item, seq in enumerate(sequences):
            row = 0
            for depth, tok in enumerate(seq):
                children = levels[depth][row]
                if tok not in children:
                    if len(levels) == depth + 1:
                        levels.append([])
                    children[tok] = [len(levels[depth + 1]), -1]
                    levels[depth + 1].append({})
                row = children[tok][0]
            ends = levels[len(seq)][row]
            if end_token in ends:
                raise ValueError(f"items {ends[end_token][1]} and {item} have the same token sequence {list(seq)}")
            ends[end_token] = [-1, item]
        return [[[(tok, child, item) for tok, (child, item) in node.items()] for node in level] for level in levels]

    def to(self, device: torch.device | str) -> ItemTrie:
        """Move the tables to `device` (in place) and return self."""
        for name in ("tokens", "nodes", "items", "sole_items"):
            setattr(self, name, [t.to(device) for t in getattr(self, name)])
        self.item_tokens = self.item_tokens.to(device)
        return self

    def children(self, depth: int, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(tokens, child rows, items ended) of the depth-`depth` nodes `rows`, each `rows.shape + (width,)`."""
        return self.tokens[depth][rows], self.nodes[depth][rows], self.items[depth][rows]
