"""Tokenization bound late: rendered prompts -> Part A token ids (and, for training, the full blank-infilling
layout), with entity character spans carried over as token ranges."""

from __future__ import annotations

import bisect
from typing import Any, Sequence

from transformers import PreTrainedTokenizerBase

from recsys_lightning.infilling.tokens import GLMTokens
from recsys_lightning.infilling.layout import Blank, infill
from recsys_lightning.infilling.masking import Masking, fitted_masked_sample
from recsys_lightning.infilling.tokenizer import without_call_settings


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


def entity_token_spans(offsets: Sequence[tuple[int, int]], entities: Sequence[Sequence[Any]]) -> list[tuple[int, int]]:
    """Token ranges [start, end) covering each character span (start, end, ...): every token that overlaps an
    entity's characters belongs to it, so masking a whole token range never cuts an entity."""
    starts = [a for a, _ in offsets]
    ends = [b for _, b in offsets]
    spans = []
    for entity in entities:
        first = bisect.bisect_right(ends, int(entity[0]))  # first token ending after the entity starts
        stop = bisect.bisect_left(starts, int(entity[1]))  # tokens starting before the entity ends
        if first < stop:
            spans.append((first, stop))
    return spans


def tokenize(tokenizer: PreTrainedTokenizerBase,
             texts: list[str]) -> tuple[list[list[int]], list[list[tuple[int, int]]]]:
    """Token ids and character offsets of each text, without special tokens. Fast tokenizers go straight to
    their Rust backend (the transformers wrapper costs more than the tokenization itself on large builds)."""
    backend = getattr(without_call_settings(tokenizer), "backend_tokenizer", None)
    if backend is not None:
        encodings = backend.encode_batch(texts, add_special_tokens=False)
        return [e.ids for e in encodings], [e.offsets for e in encodings]
    encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    return encoded["input_ids"], encoded["offset_mapping"]


def encode_described(tokenizer: PreTrainedTokenizerBase, text: str,
                     entities: Sequence[Sequence[Any]]) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of a described text (see `data/textualize.py`) and its entities as token ranges."""
    ids, offsets = tokenize(tokenizer, [text])
    return ids[0], entity_token_spans(offsets[0], entities)


def encode_rows(batch: dict[str, list[Any]], tokenizer: PreTrainedTokenizerBase, tokens: GLMTokens,
                max_length: int, train: bool) -> dict[str, list[Any]]:
    """`datasets.map` function: add Part A ids and mask index (eval) or the full layout (train), and each
    entity's token range in Part A (`entity_tokens`; entities cut off by a long prompt are dropped).

    A row's `opening` (a template's prefix slot, see `prompts.py`) opens the blank: in training it is predicted
    with the target; in evaluation it is kept as `part_b_ids`, given to the decoder."""
    prompts, offsets = tokenize(tokenizer, batch["text"])
    targets, _ = tokenize(tokenizer, batch["target"])
    openings, _ = tokenize(tokenizer, batch["opening"])
    out: dict[str, list[Any]] = {}
    for i, (prompt, opening, target, template) in enumerate(zip(prompts, openings, targets, batch["template"])):
        where = f"template {template!r}"
        ids, mask_index = part_a_ids(prompt, tokens, max_length - len(opening) - len(target) - 2, where)
        if train:
            row = infill(ids, [Blank(mask_index, [*opening, *target])], tokens)
        else:
            row = {"input_ids": ids, "mask_index": mask_index, "target_ids": target, "part_b_ids": opening}
        shift = mask_index - prompt.index(ids[mask_index])
        spans = entity_token_spans(offsets[i], batch["entity_spans"][i])
        row["entity_tokens"] = [[a + shift, b + shift] for a, b in spans if a + shift >= 1]
        for key, value in row.items():
            out.setdefault(key, []).append(value)
    return out


def encode_masked_rows(batch: dict[str, list[Any]], tokenizer: PreTrainedTokenizerBase, tokens: GLMTokens,
                       max_length: int, masking: Masking, seed: int) -> dict[str, list[Any]]:
    """`datasets.map` function for entity-masked training rows: each row's whole `text` laid out by
    `infilling/masking.py` around its `entity_spans`, with a generator seeded by (seed, request id); a text too long
    for `max_length` keeps its longest head that fits, cut between entities."""
    texts, offsets = tokenize(tokenizer, batch["text"])
    out: dict[str, list[Any]] = {}
    for ids, offset, spans, request, template in zip(texts, offsets, batch["entity_spans"], batch["request_id"],
                                                      batch["template"]):
        try:
            row = fitted_masked_sample(ids, entity_token_spans(offset, spans), tokens, masking, (seed, request),
                                       max_length)
        except ValueError as err:
            raise EncodingError(f"template {template!r}, request {request}: {err}") from None
        for key, value in row.items():
            out.setdefault(key, []).append(value)
    return out
