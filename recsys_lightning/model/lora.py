"""LoRA through `peft`: which modules get adapters, and the wrapping that freezes the rest."""

from __future__ import annotations

import dataclasses
from dataclasses import MISSING, dataclass, field, fields, make_dataclass
from pathlib import Path
from typing import Any, Mapping, Union, get_args, get_type_hints

import peft
from torch import nn

# our short names -> peft.LoraConfig's
PEFT_NAMES = {"alpha": "lora_alpha", "dropout": "lora_dropout"}
# PeftConfig's own fields: set by peft and the wrapping (task, version, paths, inference mode), not LoRA settings
MANAGED = frozenset(f.name for f in fields(peft.PeftConfig))
# peft's Literal cannot spell "pissa_niter_16"; LoftQ's settings stay a mapping ({} = none), as peft takes them
LOOSER_TYPES = {"init_lora_weights": Union[bool, str], "loftq_config": dict[str, Any]}


@dataclass
class LoRASettings:
    """The settings with our names or the backbone's defaults: `target_modules` empty (the backbone family's
    targets; a string such as "all-linear" or a regex is peft's), `modules_to_save` added to the backbone's,
    `fan_in_fan_out` and `trainable_token_indices` None (the backbone's: Conv1D layout, rows of added tokens)."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: Union[list[str], str] = field(default_factory=list)
    modules_to_save: list[str] = field(default_factory=list)
    fan_in_fan_out: bool | None = None
    trainable_token_indices: Union[list[int], dict[str, list[int]], None] = None

    def __post_init__(self) -> None:
        """Nested peft configs given as mappings (a checkpoint's saved hyperparameters) become their dataclass."""
        hints = get_type_hints(type(self))
        for f in fields(self):
            value, kinds = getattr(self, f.name), get_args(hints[f.name]) or (hints[f.name],)
            config = next((k for k in kinds if dataclasses.is_dataclass(k)), None)
            if isinstance(value, Mapping) and config is not None and dict not in kinds:
                setattr(self, f.name, config(**value))

    @classmethod
    def of(cls, settings: Mapping[str, Any], key: str = "model.lora") -> LoRASettings:
        """Settings from a mapping (saved hyperparameters), an unknown field named in the error."""
        known = [f.name for f in fields(LoRA)]
        unknown = [name for name in settings if name not in known]
        if unknown:
            renamed = {peft_name: ours for ours, peft_name in PEFT_NAMES.items()}
            hints = [f"{name!r} is written {renamed[name]!r}" for name in unknown if name in renamed]
            raise ValueError(f"{key}: unknown LoRA field(s) {unknown}{' (' + '; '.join(hints) + ')' if hints else ''}"
                             f"; expected peft.LoraConfig's fields with lora_alpha as alpha and lora_dropout as "
                             f"dropout: {sorted(known)}")
        return LoRA(**settings)


def _peft_fields() -> list[tuple[str, Any, Any]]:
    """Every other field of the installed `peft.LoraConfig`, with its type and default (DoRA `use_dora`, rsLoRA
    `use_rslora`, `init_lora_weights`, `bias`, `layers_to_transform`, `exclude_modules`, ...)."""
    hints = get_type_hints(peft.LoraConfig)
    own = {f.name for f in fields(LoRASettings)} | set(PEFT_NAMES.values()) | MANAGED
    passed = []
    for f in fields(peft.LoraConfig):
        if f.init and f.name not in own:
            default = field(default=f.default) if f.default is not MISSING else field(default_factory=f.default_factory)
            passed.append((f.name, LOOSER_TYPES.get(f.name, hints[f.name]), default))
    return passed


LoRA = make_dataclass("LoRA", _peft_fields(), bases=(LoRASettings,))
LoRA.__module__ = __name__  # for pickling and jsonargparse (make_dataclass has `module=` from Python 3.12)
LoRA.__doc__ = """LoRA settings: every `peft.LoraConfig` field, `lora_alpha` and `lora_dropout` written `alpha` and
`dropout`, the backbone's defaults where `LoRASettings` says."""


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


def lora_config(lora: LoRASettings, defaults: LoRADefaults) -> peft.LoraConfig:
    """The `peft.LoraConfig` of `lora`, the backbone's defaults filling what it leaves unset."""
    options = {PEFT_NAMES.get(f.name, f.name): getattr(lora, f.name) for f in fields(lora)}
    targets = lora.target_modules or list(defaults.targets)
    if not targets:
        raise ValueError("model.lora.target_modules is empty and the backbone declares no default targets")
    to_save = list(dict.fromkeys([*defaults.modules_to_save, *lora.modules_to_save]))
    tokens = lora.trainable_token_indices if lora.trainable_token_indices is not None else \
        dict(defaults.trainable_tokens) or None
    fan_in_fan_out = defaults.fan_in_fan_out if lora.fan_in_fan_out is None else lora.fan_in_fan_out
    return peft.LoraConfig(**{**options, "target_modules": targets, "modules_to_save": to_save or None,
                              "fan_in_fan_out": fan_in_fan_out, "trainable_token_indices": tokens})


def apply_lora(model: nn.Module, lora: LoRASettings, defaults: LoRADefaults) -> peft.PeftModel:
    """Wrap `model` with LoRA adapters; only adapters, `modules_to_save` and new token rows stay trainable."""
    return peft.get_peft_model(model, lora_config(lora, defaults))


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
