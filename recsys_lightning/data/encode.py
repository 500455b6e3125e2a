"""Tokenization bound late: rendered prompts -> Part A token ids (and, for training, the full blank-infilling layout)."""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedTokenizerBase

from recsys_lightning.data.tokenizer import GLMTokens
from recsys_lightning.model.layout import Blank, infill


class EncodingError(ValueError):
    """A prompt that cannot be laid out within the configured length."""


def part_a_ids(prompt: list[int], tokens: GLMTokens, budget: int, where: str) -> tuple[list[int], int]:
    """`[CLS] prompt <|endoftext|>` cut from the left to `budget` tokens, never past the mask; and the mask index."""
    masks = [i for i, t in enumerate(prompt) if t in tokens.masks]
    if len(masks) != 1:
        raise EncodingError(f"{where}: expected exactly one mask token in the prompt, found {len(masks)}")
    overflow = len(prompt) + 2 - budget
    if overflow > 0:
        if overflow > masks[0]:
            raise EncodingError(f"{where}: the prompt needs {len(prompt) + 2} tokens but data.max_length leaves "
                                f"{budget}; raise data.max_length or shorten the prompt")
        prompt = prompt[overflow:]
    ids = [tokens.cls, *prompt, tokens.eos]
    return ids, 1 + masks[0] - max(overflow, 0)


def encode_rows(batch: dict[str, list[Any]], tokenizer: PreTrainedTokenizerBase, tokens: GLMTokens,
                max_length: int, train: bool) -> dict[str, list[Any]]:
    """`datasets.map` function: add Part A ids and mask index (eval) or the full layout (train)."""
    prompts = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
    targets = tokenizer(batch["target"], add_special_tokens=False)["input_ids"]
    out: dict[str, list[Any]] = {}
    for prompt, target, template in zip(prompts, targets, batch["template"]):
        where = f"template {template!r}"
        ids, mask_index = part_a_ids(prompt, tokens, max_length - len(target) - 2, where)
        if train:
            row = infill(ids, [Blank(mask_index, target)], tokens)
        else:
            row = {"input_ids": ids, "mask_index": mask_index, "target_ids": target}
        for key, value in row.items():
            out.setdefault(key, []).append(value)
    return out
