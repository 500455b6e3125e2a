"""LoRA through `peft`: which modules get adapters, and the wrapping that freezes the rest."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import peft
from torch import nn


@dataclass
class LoRA:
    """LoRA settings; `target_modules` empty means the backbone family's defaults."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=list)
    modules_to_save: list[str] = field(default_factory=list)


def apply_lora(model: nn.Module, lora: LoRA, default_targets: Sequence[str]) -> peft.PeftModel:
    """Wrap `model` with LoRA adapters; only adapters (and `modules_to_save`) stay trainable."""
    targets = list(lora.target_modules or default_targets)
    if not targets:
        raise ValueError("lora.target_modules is empty and the backbone declares no default targets")
    config = peft.LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
                             modules_to_save=list(lora.modules_to_save) or None)
    return peft.get_peft_model(model, config)


def trainable_fraction(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())
