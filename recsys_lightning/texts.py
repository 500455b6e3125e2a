"""Free text as task families decode it (explanation, review): the typed decoding option and the decoded strings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from recsys_lightning.family import DecodingOption, FamilyContext
from recsys_lightning.generation.generator import Generator
from recsys_lightning.generation.text import TextDecoding


@dataclass(frozen=True)
class TextDecodingOption(TextDecoding, DecodingOption):
    """A family's text decoding (`generation/text.py`'s `TextDecoding`: greedy, beam, or seeded sampling with
    temperature, top-k and top-p); a DecodingOption, so changing it reuses the built examples."""


def generate_text(context: FamilyContext, generator: Generator, batch: dict[str, Any], max_new_tokens: int,
                  decoding: TextDecoding) -> list[str]:
    """Free text filling each prompt's blank under `decoding`, as strings."""
    return context.tokenizer.batch_decode(generator.generate(batch, max_new_tokens, decoding),
                                          skip_special_tokens=True)
