"""Backbone specifications: typed config objects that build the network once the tokenizer is known."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from torch import nn
from transformers import PreTrainedTokenizerBase

from recsys_lightning.model.glm import GLMConfig, GLMModel


class Backbone(ABC):
    """A recipe for a blank-infilling network; `build` must return a module with GLMModel's forward signature."""

    lora_targets: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def build(self, tokenizer: PreTrainedTokenizerBase) -> nn.Module:
        """The network, sized for `tokenizer`."""


class NativeGLM(Backbone):
    """A randomly initialised native GLM of the given size."""

    lora_targets = ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")

    def __init__(
        self,
        hidden_size: int = 128,
        num_layers: int = 2,
        num_attention_heads: int = 4,
        max_sequence_length: int = 512,
        hidden_dropout: float = 0.1,
        attention_dropout: float = 0.1,
        gradient_checkpointing: bool = False,
    ) -> None:
        """
        Args:
            hidden_size: width of the residual stream.
            num_layers: number of transformer blocks.
            num_attention_heads: attention heads per block.
            max_sequence_length: rows of both position tables (inter- and intra-position).
            hidden_dropout: dropout on embeddings and block outputs.
            attention_dropout: dropout on attention probabilities.
            gradient_checkpointing: recompute block activations in the backward pass to save memory.
        """
        self.sizes = dict(hidden_size=hidden_size, num_layers=num_layers, num_attention_heads=num_attention_heads,
                          max_sequence_length=max_sequence_length, hidden_dropout=hidden_dropout,
                          attention_dropout=attention_dropout)
        self.gradient_checkpointing = gradient_checkpointing

    def build(self, tokenizer: PreTrainedTokenizerBase) -> GLMModel:
        model = GLMModel(GLMConfig(vocab_size=len(tokenizer), **self.sizes))
        model.gradient_checkpointing = self.gradient_checkpointing
        return model
