"""Hugging Face `generate` over a GLM-contract model, constrained by a Trie (the approach of P5 and OpenP5).

This is the reference our search is checked and timed against: `GLMForGenerate` lets `generate` drive the
very same network (2D positions, bidirectional Part A, causal Part B, as THUDM's HF GLM port does), and
`hf_trie_beam_search` runs beam search with `prefix_allowed_tokens_fn` walking a dict Trie of the same item
token sequences. `generate` is decoder-only here, so it encodes Part A once per beam and reorders the
whole cache every step; that is what our search avoids.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from transformers import GenerationConfig, GenerationMixin, PreTrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from recsys_lightning.generation.blank import Model
from recsys_lightning.model.glm import KVCache


# transformers renamed the model output's cache field from `past_key_values` (<= 5.17) to `cache` (5.24)
CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


class GLMGenerateConfig(PreTrainedConfig):
    """Just enough configuration for `generate`: the vocabulary size."""

    model_type = "recsys_glm_generate"

    def __init__(self, vocab_size: int = 1, **kwargs: Any) -> None:
        self.vocab_size = vocab_size
        super().__init__(**kwargs)


class PromptCache:
    """The GLM's per-layer key/value cache plus the prompt length, reordered by `generate` between steps."""

    def __init__(self, layers: KVCache, prompt_length: int) -> None:
        self.layers = layers
        self.prompt_length = prompt_length

    def select(self, beam_idx: torch.Tensor) -> PromptCache:
        """Keep the rows `beam_idx` (what beam search does with every cache after each step)."""
        return PromptCache([(k[beam_idx], v[beam_idx]) for k, v in self.layers], self.prompt_length)


class GLMForGenerate(PreTrainedModel, GenerationMixin):
    """`generate` over a GLM: prompts are left-padded `Part A + <|startofpiece|>`; `mask_position` (B,) names
    each prompt's mask index inside its own (unpadded) Part A, the inter-position of the whole Part B."""

    config_class = GLMGenerateConfig
    main_input_name = "input_ids"

    def __init__(self, glm: Model, vocab_size: int) -> None:
        super().__init__(GLMGenerateConfig(vocab_size=vocab_size))
        self.glm = glm
        self.post_init()

    def init_weights(self) -> None:
        """Leave the wrapped network's weights alone (`post_init` would re-initialise its linear layers)."""

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        """No `DynamicCache`: the GLM keeps its own (key, value) list, which `_reorder_cache` reorders."""
        return False

    def _reorder_cache(self, cache: PromptCache, beam_idx: torch.Tensor) -> PromptCache:
        """Called by beam search after each step with the surviving beams' rows."""
        return cache.select(beam_idx)

    def prepare_inputs_for_generation(self, input_ids: torch.Tensor, cache: PromptCache | None = None,
                                      attention_mask: torch.Tensor | None = None,
                                      mask_position: torch.Tensor | None = None, **kwargs: Any) -> dict[str, Any]:
        """The whole prompt on the first call, then only the newest token (the rest is in the cache)."""
        cache = kwargs.get(CACHE_FIELD, cache)
        if cache is not None:
            input_ids = input_ids[:, -1:]
        return {"input_ids": input_ids, "cache": cache, "attention_mask": attention_mask,
                "mask_position": mask_position}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, mask_position: torch.Tensor,
                cache: PromptCache | None = None, **kwargs: Any) -> CausalLMOutputWithPast:
        """The prompt (first call) or one new Part B token per row; logits of the last token only."""
        cache = kwargs.get(CACHE_FIELD, cache)
        b, n = input_ids.shape
        valid = attention_mask.bool()
        if cache is None:
            part_a = valid.clone()
            part_a[:, -1] = False
            inter = torch.where(part_a, (part_a.cumsum(1) - 1).clamp(min=0), mask_position[:, None])
            intra = (~part_a & valid).long()
            mask = part_a[:, None, :].expand(b, n, n) | torch.eye(n, dtype=torch.bool, device=input_ids.device)
            past, prompt_length = None, n
        else:
            prompt_length = cache.prompt_length
            inter = mask_position[:, None]
            intra = torch.full_like(inter, valid.shape[1] - prompt_length + 1)
            mask = valid[:, None, :]
            past = cache.layers
        last = torch.zeros(b, n, dtype=torch.bool, device=input_ids.device)
        last[:, -1] = True
        out = self.glm(input_ids=input_ids, position_ids=torch.stack([inter, intra], 1), attention_mask=mask[:, None],
                       past_key_values=past, use_cache=True, logits_positions=last)
        return CausalLMOutputWithPast(logits=out.logits.view(b, 1, -1),
                                      **{CACHE_FIELD: PromptCache(out.past_key_values, prompt_length)})


class DictTrie:
    """The item Trie as nested dicts, walked in Python from the root per call (as P5's `prefix_allowed_tokens_fn`).

    Built from the same item token sequences as the `ItemTrie`; a leaf (after the end token) holds the item.
    """

    def __init__(self, sequences: Sequence[Sequence[int]], end_token: int) -> None:
        self.end_token = end_token
        self.root: dict[int, Any] = {}
        for item, seq in enumerate(sequences):
            node = self.root
            for tok in seq:
                node = node.setdefault(tok, {})
            node[end_token] = item

    def allowed(self, prefix: list[int]) -> list[int]:
        """Tokens that may follow `prefix`; the end token alone once the prefix has left the Trie."""
        node: Any = self.root
        for tok in prefix:
            node = node.get(tok) if isinstance(node, dict) else None
            if node is None:
                return [self.end_token]
        return list(node) if isinstance(node, dict) and node else [self.end_token]

    def item(self, generated: list[int]) -> int:
        """The item a generated span (ending with the end token) names, or -1."""
        node: Any = self.root
        for tok in generated:
            node = node.get(tok) if isinstance(node, dict) else None
            if node is None:
                return -1
            if tok == self.end_token:
                return node if isinstance(node, int) else -1
        return -1


def left_padded_prompts(input_ids: torch.Tensor, lengths: torch.Tensor, sop: int, pad: int
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded Part A (B, L) -> left-padded `Part A + <|startofpiece|>` (B, L + 1) and its 0/1 mask."""
    b, n = input_ids.shape
    idx = torch.arange(n + 1, device=input_ids.device)
    shift = (n - lengths)[:, None]
    source = (idx[None, :] - shift).clamp(0, n - 1)
    prompt = torch.where(idx[None, :] >= shift, input_ids.gather(1, source), pad)
    prompt[:, -1] = sop
    return prompt, (idx[None, :] >= shift).long()


@torch.no_grad()
def hf_trie_beam_search(model: GLMForGenerate, dict_trie: DictTrie, depth: int, input_ids: torch.Tensor,
                        lengths: torch.Tensor, mask_index: torch.Tensor, sop: int, pad: int, beam_size: int,
                        top_k: int) -> torch.Tensor:
    """Top-k items (B, k) by `generate` (beam search, `length_penalty=0`: scores are sums of log-probs)."""
    prompt, attention_mask = left_padded_prompts(input_ids, lengths, sop, pad)
    prompt_length = prompt.shape[1]

    def allowed(batch_id: int, sent: torch.Tensor) -> list[int]:
        return dict_trie.allowed(sent[prompt_length:].tolist())

    config = GenerationConfig(num_beams=beam_size, num_return_sequences=top_k, max_new_tokens=depth,
                              length_penalty=0.0, early_stopping=False, do_sample=False,
                              eos_token_id=dict_trie.end_token, pad_token_id=pad, use_cache=True)
    out = model.generate(prompt, generation_config=config, attention_mask=attention_mask,
                         mask_position=mask_index, prefix_allowed_tokens_fn=allowed)
    spans = out[:, prompt_length:].tolist()
    return torch.tensor([dict_trie.item(s) for s in spans]).view(-1, top_k)
