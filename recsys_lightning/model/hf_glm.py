"""Hugging Face causal LMs in GLM mode: the blank-infilling mask and 2D positions on a decoder-only model.

The Part A / Part B mask goes in as a 4D additive float mask (bool masks are ignored under eager attention),
inter-positions as `position_ids`, and intra-positions through an added block-position embedding (zero at
init, so the pretrained model starts unchanged) summed into `inputs_embeds`. KV caches travel as the
list-of-(k, v) contract the beam search reorders.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any, Literal

import peft
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from recsys_lightning.infilling.tokens import GLMTokens
from recsys_lightning.infilling.tokenizer import load_backbone_tokenizer
from recsys_lightning.model.backbones import Backbone, DType, torch_dtype
from recsys_lightning.model.checkpoints import check_source
from recsys_lightning.model.glm import GLMOutput, KVCache, select_positions
from recsys_lightning.model.lora import LoRA, LoRADefaults, apply_lora, merge_adapter

BLOCK_POSITIONS_FILE = "block_position_embeddings.safetensors"
LLAMA_LIKE = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA_TARGETS: dict[str, tuple[tuple[str, ...], bool]] = {
    # model_type -> (LoRA target modules, fan_in_fan_out)
    "llama": (LLAMA_LIKE, False), "qwen2": (LLAMA_LIKE, False), "qwen3": (LLAMA_LIKE, False),
    "mistral": (LLAMA_LIKE, False), "gpt2": (("c_attn", "c_proj", "c_fc"), True),
}


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Bool mask (True = attend) -> float mask: 0 where allowed, the dtype's minimum elsewhere (never -inf)."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


def unwrap(model: nn.Module) -> PreTrainedModel:
    """The transformers model inside a peft wrapper (LoRA layers stay injected in it)."""
    return model.get_base_model() if isinstance(model, peft.PeftModel) else model


class GLMModeLM(nn.Module):
    """A causal LM (`model`, possibly LoRA-wrapped) behind GLMModel's forward contract."""

    def __init__(self, model: nn.Module, max_block_positions: int) -> None:
        super().__init__()
        self.model = model
        hf = unwrap(model)
        embeddings = hf.get_input_embeddings()
        self.block_position_embeddings = nn.Embedding(max_block_positions, embeddings.embedding_dim)
        nn.init.zeros_(self.block_position_embeddings.weight)
        self.cache_argument = "cache" if "cache" in inspect.signature(hf.base_model.forward).parameters \
            else "past_key_values"

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor,
                past_key_values: KVCache | None = None, use_cache: bool = False,
                logits_positions: torch.Tensor | None = None) -> GLMOutput:
        hf = unwrap(self.model)
        embeds = hf.get_input_embeddings()(input_ids)
        embeds = embeds + self.block_position_embeddings(position_ids[:, 1]).to(embeds.dtype)
        cache = DynamicCache(past_key_values) if past_key_values is not None else DynamicCache() if use_cache else None
        out = hf.base_model(inputs_embeds=embeds, position_ids=position_ids[:, 0],
                            attention_mask=additive_mask(attention_mask, embeds.dtype), use_cache=use_cache,
                            **{self.cache_argument: cache})
        hidden = out.last_hidden_state
        if logits_positions is not None:
            hidden = select_positions(hidden, logits_positions)
        logits = hf.get_output_embeddings()(hidden)
        presents = [(layer.keys, layer.values) for layer in cache.layers] if use_cache else None
        return GLMOutput(logits, presents)


class HFCausalLM(Backbone):
    """A Hugging Face causal LM (Llama, Qwen2, Mistral, GPT-2, ...) trained in GLM mode."""

    def __init__(
        self,
        model: str | None = None,
        config: dict[str, Any] | None = None,
        tokenizer: str | None = None,
        dtype: DType = "float32",
        attn_implementation: Literal["sdpa", "eager"] = "sdpa",
        max_block_positions: int = 256,
        gradient_checkpointing: bool = False,
        trust_remote_code: bool = False,
        adapter: str | None = None,
    ) -> None:
        """
        Args:
            model: a pretrained causal LM: local folder or hub name (the hub needs network).
            config: instead of `model`, a random-init model from these config values (`model_type` plus sizes);
                the data module then trains the tokenizer.
            tokenizer: tokenizer folder or hub name when it is not `model`'s own.
            dtype: dtype of the base weights (bfloat16 halves memory; meant for LoRA).
            attn_implementation: transformers attention kernel; both take the 4D float mask.
            max_block_positions: rows of the added intra-position embedding (longest span + 2).
            gradient_checkpointing: recompute decoder-layer activations in the backward pass.
            trust_remote_code: run the model folder's own code; only when its config requires it.
            adapter: a LoRA adapter folder (from `recsys-lightning export`) merged into `model` on build.
        """
        if (model is None) == (config is None):
            raise ValueError("model.backbone (HFCausalLM): give exactly one of `model` (pretrained) or `config`")
        if config is not None and "model_type" not in config:
            raise ValueError(f"model.backbone.config: needs a 'model_type' (e.g. llama), got keys {sorted(config)}")
        if adapter and model is None:
            raise ValueError("model.backbone (HFCausalLM): an adapter needs the pretrained `model` it was trained on")
        for key, source in (("model", model), ("tokenizer", tokenizer), ("adapter", adapter)):
            if source is not None:
                check_source(source, f"model.backbone.{key}")
        self.model = model
        self.config = dict(config) if config is not None else None
        self.tokenizer_path = tokenizer or model
        self.dtype = dtype
        self.attn_implementation = attn_implementation
        self.max_block_positions = max_block_positions
        self.gradient_checkpointing = gradient_checkpointing
        self.trust_remote_code = trust_remote_code
        self.adapter = adapter
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._own_tokens: int | None = None  # the backbone tokenizer's size, GLM's tokens included

    @property
    def pretrained(self) -> bool:
        return self.model is not None

    def max_positions(self) -> int | None:
        """The rows of a learned position table (GPT-2's `n_positions`), given or in a local model folder's
        config.json; None for rotary models (Llama, Qwen2, Mistral: no table to index past) and hub models."""
        config = self.config
        if config is None and self.model is not None and (Path(self.model) / "config.json").is_file():
            config = json.loads((Path(self.model) / "config.json").read_text())
        value = (config or {}).get("n_positions")
        return value if isinstance(value, int) else None

    def tokenizer(self) -> PreTrainedTokenizerBase | None:
        if self.tokenizer_path is not None and self._tokenizer is None:
            self._tokenizer = load_backbone_tokenizer(self.tokenizer_path, self.trust_remote_code)
            self._own_tokens = len(self._tokenizer)  # tokens added later (atomic item ids) are new to the model
        return self._tokenizer

    def _load(self, vocab_size: int) -> PreTrainedModel:
        """The pretrained model, or a random-init one from `config` with one embedding row per token."""
        kwargs = dict(dtype=torch_dtype(self.dtype), attn_implementation=self.attn_implementation,
                      trust_remote_code=self.trust_remote_code)
        if self.model is None:
            config = {**self.config, "vocab_size": vocab_size}
            hf_config = AutoConfig.for_model(config.pop("model_type"), **config)
            return AutoModelForCausalLM.from_config(hf_config, **kwargs)
        return AutoModelForCausalLM.from_pretrained(self.model, **kwargs)

    def build(self, tokenizer: PreTrainedTokenizerBase) -> GLMModeLM:
        hf = self._load(len(tokenizer))
        if len(tokenizer) > hf.get_input_embeddings().num_embeddings:
            hf.resize_token_embeddings(len(tokenizer), mean_resizing=self.pretrained)
        if self.gradient_checkpointing:
            enable_activation_checkpointing(hf)
        hf.config.use_cache = False
        network = GLMModeLM(hf, self._block_positions())
        if self.adapter:
            network.model = merge_adapter(hf, self.adapter)
            network.block_position_embeddings.load_state_dict(read_block_positions(Path(self.adapter)))
        elif self.model is not None and (Path(self.model) / BLOCK_POSITIONS_FILE).is_file():
            network.block_position_embeddings.load_state_dict(read_block_positions(Path(self.model)))
        return network.train()  # from_pretrained returns eval mode; training sets the mode it needs

    def block_positions(self) -> int | None:
        return self._block_positions()

    def _block_positions(self) -> int:
        """Rows of the intra-position table: a saved table's own size wins over `max_block_positions`."""
        for folder in (self.adapter, self.model):
            if folder is not None and (Path(folder) / BLOCK_POSITIONS_FILE).is_file():
                return read_block_positions(Path(folder))["weight"].shape[0]
        return self.max_block_positions

    def lora_defaults(self, network: nn.Module, tokenizer: PreTrainedTokenizerBase) -> LoRADefaults:
        """Per model_type targets; for a pretrained model also the rows of GLM's tokens and of every token added to
        the pretrained vocabulary (atomic item tokens), in both embeddings."""
        hf = unwrap(network.model)
        targets, fan_in_fan_out = LORA_TARGETS.get(hf.config.model_type, ((), False))
        rows: dict[str, list[int]] = {}
        if self.pretrained:
            names = {id(module): name for name, module in hf.named_modules()}
            added = range(self._own_tokens or len(tokenizer), len(tokenizer))
            ids = sorted({*GLMTokens.of(tokenizer).all_ids, *added})
            rows = {names[id(m)]: ids for m in (hf.get_input_embeddings(), hf.get_output_embeddings()) if m is not None}
        return LoRADefaults(targets, fan_in_fan_out, trainable_tokens=rows)

    def add_lora(self, network: nn.Module, lora: LoRA, tokenizer: PreTrainedTokenizerBase) -> nn.Module:
        """LoRA on the inner causal LM (peft sees its config and tied embeddings); the block-position embedding
        stays trainable beside it and is saved with the adapter."""
        network.model = apply_lora(unwrap(network.model), lora, self.lora_defaults(network, tokenizer))
        return network

    def save_merged(self, network: nn.Module, tokenizer: PreTrainedTokenizerBase, out: Path) -> dict[str, Any]:
        assert isinstance(network, GLMModeLM)
        hf = network.model.merge_and_unload() if isinstance(network.model, peft.PeftModel) else network.model
        hf.save_pretrained(str(out))
        tokenizer.save_pretrained(str(out))
        write_block_positions(network, out)
        return {"model": str(out), "config": None, "tokenizer": None, "adapter": None}

    def save_adapter(self, network: nn.Module, out: Path) -> dict[str, Any]:
        assert isinstance(network, GLMModeLM)
        if not isinstance(network.model, peft.PeftModel):
            raise ValueError("the checkpoint was trained without LoRA: there is no adapter to export")
        # GLM's new embedding rows are in the adapter as trainable tokens: the full embeddings need not be
        network.model.save_pretrained(str(out), save_embedding_layers=False)
        write_block_positions(network, out)
        return {"adapter": str(out)}


def enable_activation_checkpointing(hf: PreTrainedModel) -> None:
    """Recompute decoder-layer activations in the backward pass (non-reentrant: frozen inputs need no hooks)."""
    if hasattr(hf, "activation_checkpointing_enable"):  # the name since transformers 5.x
        hf.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def write_block_positions(network: GLMModeLM, folder: Path) -> None:
    """Save the added intra-position embedding beside a model or adapter."""
    folder.mkdir(parents=True, exist_ok=True)
    weight = network.block_position_embeddings.weight.detach().contiguous()
    save_file({"weight": weight}, str(folder / BLOCK_POSITIONS_FILE), metadata={"format": "pt"})


def read_block_positions(folder: Path) -> dict[str, torch.Tensor]:
    """The intra-position embedding saved in `folder`."""
    return load_file(str(folder / BLOCK_POSITIONS_FILE))
