"""LoRA through `peft`: which modules get adapters, and the wrapping that freezes the rest."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

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


@dataclass(frozen=True)
class LoRADefaults:
    """What a backbone family adapts unless the user says otherwise.

    Args:
        targets: module-name suffixes that get LoRA adapters.
        fan_in_fan_out: the targets store weights as (in, out) (GPT-2's Conv1D).
        modules_to_save: modules trained in full and saved with the adapter.
        trainable_tokens: embedding module name -> token ids whose rows train (tokens the backbone added).
    """

    targets: tuple[str, ...]
    fan_in_fan_out: bool = False
    modules_to_save: tuple[str, ...] = ()
    trainable_tokens: dict[str, list[int]] = field(default_factory=dict)


def apply_lora(model: nn.Module, lora: LoRA, defaults: LoRADefaults) -> peft.PeftModel:
    """Wrap `model` with LoRA adapters; only adapters, `modules_to_save` and new token rows stay trainable."""
    targets = list(lora.target_modules or defaults.targets)
    if not targets:
        raise ValueError("model.lora.target_modules is empty and the backbone declares no default targets")
    to_save = list(dict.fromkeys([*defaults.modules_to_save, *lora.modules_to_save]))
    config = peft.LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
                             fan_in_fan_out=defaults.fan_in_fan_out, modules_to_save=to_save or None,
                             trainable_token_indices=dict(defaults.trainable_tokens) or None)
    return peft.get_peft_model(model, config)


def merge_adapter(model: nn.Module, adapter: str | Path) -> nn.Module:
    """`model` with a saved adapter (peft `save_pretrained` folder) folded into its weights."""
    folder = Path(adapter)
    if not (folder / "adapter_config.json").is_file():
        raise FileNotFoundError(f"adapter {folder}: no adapter_config.json (expected a peft save_pretrained folder)")
    return peft.PeftModel.from_pretrained(model, str(folder)).merge_and_unload()


def trainable_fraction(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())
