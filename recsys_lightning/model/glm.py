"""The native GLM: pre-LN transformer, GeLU, 2D position embeddings and an output layer tied to the word embeddings.

Module and parameter names follow THUDM's GLM (`word_embeddings`, `transformer.position_embeddings`,
`transformer.block_position_embeddings`, `transformer.layers.N.attention.query_key_value`, ...), so its
checkpoints map onto this class by name.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.flex_attention import BlockMask, flex_attention

KVCache = list[tuple[torch.Tensor, torch.Tensor]]
AttentionMask = torch.Tensor | BlockMask


@functools.cache
def compiled_flex_attention():
    """FlexAttention compiled once per process into its fused kernel."""
    return torch.compile(flex_attention)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: AttentionMask, dropout: float) -> torch.Tensor:
    """SDPA under a dense bool mask (True = attend); FlexAttention under a block mask.

    Flex is the fused, compiled kernel on GPU; on CPU its unfused reference (tests, debugging).
    """
    if isinstance(mask, BlockMask):
        if dropout:
            raise ValueError("FlexAttention has no attention dropout: set attention_dropout to 0 or use attention: sdpa")
        return (compiled_flex_attention() if q.is_cuda else flex_attention)(q, k, v, block_mask=mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)


def select_positions(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Rows of x (B, L, d) at `positions`, flattened to (N, d): a (B, L) bool mask, or (N,) flat indices into B x L.

    Flat indices (the training batches' `target_positions`, made by the collator) need no device sync and keep
    shapes static under torch.compile; a bool mask makes the GPU wait for the CPU to count its True entries.
    """
    if positions.dtype == torch.bool:
        return x[positions]
    return x.flatten(0, 1).index_select(0, positions)


@dataclass
class GLMConfig:
    """Sizes of a GLM; `intermediate_size` defaults to 4 x hidden as in GLM."""

    vocab_size: int
    hidden_size: int = 128
    num_layers: int = 2
    num_attention_heads: int = 4
    max_sequence_length: int = 512
    intermediate_size: int | None = None
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    embedding_dropout: float | None = None
    layernorm_epsilon: float = 1e-5
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by {self.num_attention_heads} heads")
        self.intermediate_size = self.intermediate_size or 4 * self.hidden_size
        self.embedding_dropout = self.hidden_dropout if self.embedding_dropout is None else self.embedding_dropout


class GLMOutput(NamedTuple):
    logits: torch.Tensor
    past_key_values: KVCache | None


class SelfAttention(nn.Module):
    def __init__(self, config: GLMConfig) -> None:
        super().__init__()
        self.heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.query_key_value = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.attention_dropout = config.attention_dropout
        self.output_dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, x: torch.Tensor, mask: AttentionMask, past: tuple[torch.Tensor, torch.Tensor] | None
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        b, n, _ = x.shape
        # GLM packs [all query heads | all key heads | all value heads] along the last dimension.
        q, k, v = self.query_key_value(x).view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        dropout = self.attention_dropout if self.training else 0.0
        out = attend(q, k, v, mask, dropout)
        out = out.transpose(1, 2).reshape(b, n, -1)
        return self.output_dropout(self.dense(out)), (k, v)


class MLP(nn.Module):
    def __init__(self, config: GLMConfig) -> None:
        super().__init__()
        self.dense_h_to_4h = nn.Linear(config.hidden_size, config.intermediate_size)
        self.dense_4h_to_h = nn.Linear(config.intermediate_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.dense_4h_to_h(F.gelu(self.dense_h_to_4h(x), approximate="tanh")))


class GLMBlock(nn.Module):
    def __init__(self, config: GLMConfig) -> None:
        super().__init__()
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon)
        self.attention = SelfAttention(config)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, mask: AttentionMask, past: tuple[torch.Tensor, torch.Tensor] | None
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        attn, present = self.attention(self.input_layernorm(x), mask, past)
        x = x + attn
        return x + self.mlp(self.post_attention_layernorm(x)), present


class GLMStack(nn.Module):
    def __init__(self, config: GLMConfig) -> None:
        super().__init__()
        self.position_embeddings = nn.Embedding(config.max_sequence_length, config.hidden_size)
        self.block_position_embeddings = nn.Embedding(config.max_sequence_length, config.hidden_size)
        self.embedding_dropout = nn.Dropout(config.embedding_dropout)
        self.layers = nn.ModuleList(GLMBlock(config) for _ in range(config.num_layers))
        self.final_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon)


class GLMModel(nn.Module):
    """GLM for blank infilling: `forward(input_ids, position_ids (B, 2, L), attention_mask (B, 1, L, S))`.

    `attention_mask` is a bool tensor (True = attend, SDPA) or a FlexAttention `BlockMask` over the same pattern.

    `logits_positions` ((B, L) bool, or (N,) flat indices: `select_positions`) keeps only those positions' logits,
    flattened to (N, vocab): training needs them for Part B alone, which saves most of the output layer's work.
    """

    def __init__(self, config: GLMConfig) -> None:
        super().__init__()
        self.config = config
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.transformer = GLMStack(config)
        self.gradient_checkpointing = False
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GLM's init: N(0, std) everywhere, output projections scaled by 1/sqrt(2 * layers)."""
        std = self.config.init_std
        for name, p in self.named_parameters():
            if "layernorm" in name:
                nn.init.ones_(p) if name.endswith("weight") else nn.init.zeros_(p)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
            elif name.endswith(("attention.dense.weight", "dense_4h_to_h.weight")):
                nn.init.normal_(p, std=std / math.sqrt(2 * self.config.num_layers))
            else:
                nn.init.normal_(p, std=std)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.word_embeddings

    def new_token_rows(self, count: int) -> torch.Tensor:
        """`count` new word-embedding rows, N(0, init_std), drawn on the CPU in the embeddings' dtype: the same rows
        (and random stream) whether the model is real or on the meta device (a sharded load draws them too)."""
        weight = self.word_embeddings.weight
        return torch.empty(count, weight.shape[1], dtype=weight.dtype).normal_(std=self.config.init_std)

    def resize_token_embeddings(self, vocab_size: int, rows: torch.Tensor | None = None) -> list[int]:
        """Grow the (tied) word embeddings to `vocab_size` rows, the new ones `rows` (default `new_token_rows`);
        return the new rows' ids. On the meta device only the shape grows."""
        old = self.word_embeddings
        if vocab_size <= old.num_embeddings:
            return []
        rows = self.new_token_rows(vocab_size - old.num_embeddings) if rows is None else rows
        weight = torch.empty(vocab_size, old.embedding_dim, device=old.weight.device, dtype=old.weight.dtype)
        if not weight.is_meta:
            with torch.no_grad():
                weight[: old.num_embeddings] = old.weight
                weight[old.num_embeddings:] = rows
        self.word_embeddings = nn.Embedding(vocab_size, old.embedding_dim, _weight=weight)
        added = list(range(self.config.vocab_size, vocab_size))
        self.config.vocab_size = vocab_size
        return added

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask: AttentionMask,
                past_key_values: KVCache | None = None, use_cache: bool = False,
                logits_positions: torch.Tensor | None = None) -> GLMOutput:
        stack = self.transformer
        x = (self.word_embeddings(input_ids) + stack.position_embeddings(position_ids[:, 0])
             + stack.block_position_embeddings(position_ids[:, 1]))
        x = stack.embedding_dropout(x)
        presents: KVCache = []
        for i, layer in enumerate(stack.layers):
            past = past_key_values[i] if past_key_values is not None else None
            if self.gradient_checkpointing and self.training:
                x, present = torch.utils.checkpoint.checkpoint(layer, x, attention_mask, past, use_reentrant=False)
            else:
                x, present = layer(x, attention_mask, past)
            presents.append(present)
        x = stack.final_layernorm(x)
        if logits_positions is not None:
            x = select_positions(x, logits_positions)
        logits = F.linear(x, self.word_embeddings.weight)
        return GLMOutput(logits, presents if use_cache else None)
