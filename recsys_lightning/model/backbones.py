"""Backbone specifications: typed config objects that build the network once the tokenizer is known.

Every network keeps GLMModel's forward contract (input_ids, position_ids (B, 2, L), attention_mask (B, 1, L, S)
True = attend, past_key_values as [(k, v)] per layer, use_cache, logits_positions) and returns GLMOutput.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import peft
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from recsys_lightning.infilling.tokenizer import load_backbone_tokenizer
from recsys_lightning.model.checkpoints import check_source, glm_config, load_glm, read_json, resolve_folder, save_glm
from recsys_lightning.model.glm import AttentionMask, GLMConfig, GLMModel
from recsys_lightning.infilling.layout import blank_infilling_block_mask, blank_infilling_mask
from recsys_lightning.model.lora import LoRA, LoRADefaults, apply_lora, merge_adapter
from recsys_lightning.model.sharded import load_sharded

DType = Literal["float32", "bfloat16", "float16"]
GLM_LORA_TARGETS = ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")


class Backbone(ABC):
    """A recipe for a blank-infilling network: its tokenizer (when pretrained), the network, LoRA and export."""

    def tokenizer(self) -> PreTrainedTokenizerBase | None:
        """The pretrained backbone's own tokenizer, or None when the data module should train one."""
        return None

    @abstractmethod
    def build(self, tokenizer: PreTrainedTokenizerBase) -> nn.Module:
        """The network, sized for `tokenizer`."""

    @abstractmethod
    def lora_defaults(self, network: nn.Module, tokenizer: PreTrainedTokenizerBase) -> LoRADefaults:
        """Target modules, new embedding rows and modules to save for this backbone family."""

    def add_lora(self, network: nn.Module, lora: LoRA, tokenizer: PreTrainedTokenizerBase) -> nn.Module:
        """`network` with LoRA adapters; only they (and new embedding rows) remain trainable."""
        return apply_lora(network, lora, self.lora_defaults(network, tokenizer))

    def infilling_mask(self, segment_ids: torch.Tensor, part_a: torch.Tensor) -> AttentionMask:
        """The training attention mask in the form this backbone's attention consumes."""
        return blank_infilling_mask(segment_ids, part_a)

    @property
    def pretrained(self) -> bool:
        """True when the base weights come from a checkpoint (so an adapter alone can rebuild the network)."""
        return False

    @property
    def loads_sharded(self) -> bool:
        """True when `build_sharded` loads each rank's shards alone, so no FSDP2 rank ever holds the full model."""
        return False

    def build_sharded(self, tokenizer: PreTrainedTokenizerBase, lora: LoRA | None,
                      shard: Callable[[nn.Module], nn.Module], device: torch.device) -> nn.Module:
        """The network with its LoRA adapters, sharded by `shard`, each rank's shards loaded onto `device`."""
        raise NotImplementedError(f"{type(self).__name__} builds the full network, then shards it")

    def max_positions(self) -> int | None:
        """How many positions the network's position tables hold (the longest row it can take), None if unknown
        without building it (a hub model not downloaded yet)."""
        return None

    def block_positions(self) -> int | None:
        """Rows of the intra-position (block position) table: a blank's span indexes it 1..len + 1, so the longest
        span it takes is two less; None if unknown. The native GLM's two position tables are the same size."""
        return self.max_positions()

    @abstractmethod
    def save_merged(self, network: nn.Module, tokenizer: PreTrainedTokenizerBase, out: Path) -> dict[str, Any]:
        """Write LoRA-free weights, tokenizer and config to `out`; return the init args that reload them."""

    @abstractmethod
    def save_adapter(self, network: nn.Module, out: Path) -> dict[str, Any]:
        """Write the adapter alone to `out`; return the init args that rebuild the network from base + adapter."""


def torch_dtype(name: DType) -> torch.dtype:
    """The torch dtype named in a config."""
    return getattr(torch, name)


class NativeGLM(Backbone):
    """The native GLM: random-init of the given size, or THUDM weights from `checkpoint`."""

    def __init__(
        self,
        hidden_size: int = 128,
        num_layers: int = 2,
        num_attention_heads: int = 4,
        max_sequence_length: int = 512,
        hidden_dropout: float = 0.1,
        attention_dropout: float = 0.1,
        embedding_dropout: float | None = None,
        gradient_checkpointing: bool = False,
        checkpoint: str | None = None,
        dtype: DType = "float32",
        attention: Literal["auto", "sdpa", "flex"] = "auto",
        adapter: str | None = None,
    ) -> None:
        """
        Args:
            hidden_size: width of the residual stream (random init only).
            num_layers: number of transformer blocks (random init only).
            num_attention_heads: attention heads per block (random init only).
            max_sequence_length: rows of both position tables (random init only).
            hidden_dropout: dropout on block outputs, and on embeddings unless `embedding_dropout` is set.
            attention_dropout: dropout on attention probabilities (sdpa only).
            embedding_dropout: dropout on the summed word and position embeddings (None: hidden_dropout), to tune
                the embeddings' regularization apart from the blocks' (docs/results.md measures .1 and .7).
            gradient_checkpointing: recompute block activations in the backward pass to save memory.
            checkpoint: a THUDM GLM folder (config.json, .bin/.safetensors weights, tokenizer) or hub name;
                sizes then come from its config.json.
            dtype: dtype of the base weights (bfloat16 halves memory; meant for LoRA).
            attention: sdpa (dense mask), flex (FlexAttention block mask, no attention dropout), or auto: sdpa,
                the faster at the row lengths measured (2.2x flex's training step on an H100, GLM-Large size,
                16 x 512 rows; compare with `benchmarks/gpu_train.sh --attention flex`); flex saves the dense
                (B, L, L) mask's memory on very long rows.
            adapter: a LoRA adapter folder (from `recsys-lightning export`) merged into the checkpoint's weights.
        """
        self.sizes = dict(hidden_size=hidden_size, num_layers=num_layers, num_attention_heads=num_attention_heads,
                          max_sequence_length=max_sequence_length)
        self.dropout = dict(hidden_dropout=hidden_dropout, attention_dropout=attention_dropout,
                            embedding_dropout=embedding_dropout)
        self.gradient_checkpointing = gradient_checkpointing
        self.checkpoint = checkpoint
        self.dtype = dtype
        self.attention = attention
        self.adapter = adapter
        if attention == "flex" and attention_dropout:
            raise ValueError("model.backbone: attention 'flex' has no attention dropout; set attention_dropout: 0")
        if adapter and not checkpoint:
            raise ValueError("model.backbone: an adapter needs the checkpoint it was trained on (set checkpoint)")
        for key, source in (("checkpoint", checkpoint), ("adapter", adapter)):
            if source is not None:
                check_source(source, f"model.backbone.{key}")
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._added_rows: list[int] = []

    @property
    def pretrained(self) -> bool:
        return self.checkpoint is not None

    def max_positions(self) -> int | None:
        if self.checkpoint is None:
            return self.sizes["max_sequence_length"]
        config = Path(self.checkpoint).expanduser() / "config.json"  # a local THUDM folder (see glm_config)
        value = read_json(config).get("max_sequence_length") if config.is_file() else None
        return value + 1 if isinstance(value, int) else None

    @property
    def loads_sharded(self) -> bool:
        return self.checkpoint is not None and self.adapter is None  # an adapter merges into full weights

    def build_sharded(self, tokenizer: PreTrainedTokenizerBase, lora: LoRA | None,
                      shard: Callable[[nn.Module], nn.Module], device: torch.device) -> nn.Module:
        """`build`'s network from the checkpoint (same weights, new token rows and adapters: the same random draws,
        in the same order), built on the meta device, sharded, and each rank's shards read from the checkpoint."""
        folder = resolve_folder(self.checkpoint)
        with torch.device("meta"):
            model = GLMModel(glm_config(folder, **self.dropout)).to(torch_dtype(self.dtype))
        rows = model.new_token_rows(max(0, len(tokenizer) - model.config.vocab_size))
        self._added_rows = model.resize_token_embeddings(len(tokenizer), rows)
        model.gradient_checkpointing = self.gradient_checkpointing
        new_rows = {"word_embeddings.weight": rows} if self._added_rows else {}
        return load_sharded(model, folder, new_rows, lambda m: self.add_lora(m, lora, tokenizer) if lora else m,
                            shard, device)

    def tokenizer(self) -> PreTrainedTokenizerBase | None:
        if self.checkpoint is not None and self._tokenizer is None:
            self._tokenizer = load_backbone_tokenizer(resolve_folder(self.checkpoint))
        return self._tokenizer

    def build(self, tokenizer: PreTrainedTokenizerBase) -> GLMModel:
        if self.checkpoint is None:
            model = GLMModel(GLMConfig(vocab_size=len(tokenizer), **self.sizes, **self.dropout))
        else:
            model = load_glm(resolve_folder(self.checkpoint), torch_dtype(self.dtype), **self.dropout)
            self._added_rows = model.resize_token_embeddings(len(tokenizer))
            if self.adapter:
                model = merge_adapter(model, self.adapter)
        model.gradient_checkpointing = self.gradient_checkpointing
        return model.to(torch_dtype(self.dtype))

    def lora_defaults(self, network: nn.Module, tokenizer: PreTrainedTokenizerBase) -> LoRADefaults:
        tokens = {"word_embeddings": self._added_rows} if self._added_rows else {}
        return LoRADefaults(GLM_LORA_TARGETS, trainable_tokens=tokens)

    def infilling_mask(self, segment_ids: torch.Tensor, part_a: torch.Tensor) -> AttentionMask:
        flex = self.attention == "flex"
        return (blank_infilling_block_mask if flex else blank_infilling_mask)(segment_ids, part_a)

    def save_merged(self, network: nn.Module, tokenizer: PreTrainedTokenizerBase, out: Path) -> dict[str, Any]:
        model = network.merge_and_unload() if isinstance(network, peft.PeftModel) else network
        save_glm(model, out)
        tokenizer.save_pretrained(str(out))
        return {"checkpoint": str(out), "adapter": None}

    def save_adapter(self, network: nn.Module, out: Path) -> dict[str, Any]:
        if not isinstance(network, peft.PeftModel):
            raise ValueError("the checkpoint was trained without LoRA: there is no adapter to export")
        network.save_pretrained(str(out))
        return {"checkpoint": self.checkpoint, "adapter": str(out)}
