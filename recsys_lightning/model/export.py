"""`recsys-lightning export`: a training checkpoint -> merged safetensors weights + tokenizer + a backbone config
that reloads them with the same class, and (for LoRA on pretrained weights) the adapter alone."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml
from lightning.pytorch.cli import instantiate_class
from tokenizers import Tokenizer
from torch import nn
from transformers import PreTrainedTokenizerBase

from recsys_lightning.infilling.tokenizer import wrap_tokenizer
from recsys_lightning.errors import read_checkpoint
from recsys_lightning.model.backbones import Backbone, NativeGLM
from recsys_lightning.model.lora import LoRA

CONFIG_FILE = "backbone.yaml"


@dataclass
class Restored:
    """A trained network rebuilt from a Lightning checkpoint, with what made it."""

    backbone: Backbone
    backbone_config: dict[str, Any]
    network: nn.Module
    tokenizer: PreTrainedTokenizerBase
    lora: LoRA | None


def backbone_config(hparams: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's backbone as `{class_path, init_args}` (the default tiny native GLM when none was given)."""
    config = hparams.get("backbone")
    if config is None:
        return {"class_path": f"{NativeGLM.__module__}.{NativeGLM.__name__}", "init_args": {}}
    if not isinstance(config, dict) or "class_path" not in config:
        raise ValueError("the checkpoint's hyper_parameters.backbone is not a class_path config; export needs a "
                         "checkpoint written by `recsys-lightning fit`")
    return {"class_path": config["class_path"], "init_args": dict(config.get("init_args") or {})}


def restore(ckpt_path: Path) -> Restored:
    """Rebuild the backbone, tokenizer, LoRA wrapping and trained weights of a `recsys-lightning fit` checkpoint."""
    ckpt = read_checkpoint(ckpt_path)  # weights-only; a missing, truncated or corrupt file is named
    hparams = ckpt.get("hyper_parameters")
    if not isinstance(hparams, dict) or "state_dict" not in ckpt:
        raise ValueError(f"{ckpt_path}: not a Lightning checkpoint with hyper_parameters and state_dict")
    config = backbone_config(hparams)
    backbone = instantiate_class((), config)
    tokenizer = backbone.tokenizer()
    saved = ckpt.get("tokenizer")
    if tokenizer is None:
        if not isinstance(saved, str) or not saved.startswith("{"):
            raise ValueError(f"{ckpt_path}: the checkpoint carries no tokenizer and the backbone has none")
        tokenizer = wrap_tokenizer(Tokenizer.from_str(saved))
    else:
        add_item_tokens(tokenizer, saved)
    lora = LoRA(**hparams["lora"]) if hparams.get("lora") else None
    network = backbone.build(tokenizer)
    if lora is not None:
        network = backbone.add_lora(network, lora, tokenizer)
    state = {k.removeprefix("network."): v for k, v in ckpt["state_dict"].items() if k.startswith("network.")}
    network.load_state_dict(state, strict=True)
    return Restored(backbone, config, network.eval(), tokenizer, lora)


def add_item_tokens(tokenizer: PreTrainedTokenizerBase, saved: Any) -> None:
    """Give a backbone's own tokenizer the tokens the data module added in training (atomic or semantic item ids),
    read from the checkpoint's serialized tokenizer and added in id order, so the trained rows line up."""
    if not isinstance(saved, str) or not saved.startswith("{"):
        return
    added = sorted((t for t in json.loads(saved).get("added_tokens", []) if t["id"] >= len(tokenizer)),
                   key=lambda t: t["id"])
    tokenizer.add_tokens([t["content"] for t in added if not t.get("special")])


def write_config(folder: Path, class_path: str, init_args: dict[str, Any]) -> None:
    """A config fragment that rebuilds the exported network: `--config FOLDER/backbone.yaml`."""
    config = {"model": {"backbone": {"class_path": class_path, "init_args": init_args}, "lora": None}}
    header = f"# Exported network; combine with a dataset config: --config <data>.yaml --config {folder / CONFIG_FILE}\n"
    (folder / CONFIG_FILE).write_text(header + yaml.safe_dump(config, sort_keys=False))


def export(ckpt_path: Path, out: Path, extra: Callable[[Restored, Path], None] | None = None) -> list[Path]:
    """Write `out` (merged weights) and, for LoRA on pretrained weights, `out/adapter`; return the folders written.
    `extra(restored, folder)` then adds what a caller above this layer writes (the recommender's catalog).

    An existing non-empty `out` is never touched; a failed export removes the folder it created.
    """
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"--out {out}: exists and is not an empty folder; choose a new one")
    restored = restore(ckpt_path)
    out.mkdir(parents=True, exist_ok=True)
    try:
        written = write_export(restored, out.resolve())
        if extra is not None:
            extra(restored, out.resolve())
        return written
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise


def write_export(restored: Restored, folder: Path) -> list[Path]:
    """The adapter first (merging consumes the LoRA wrapping), then the merged network, each with its config."""
    class_path, init_args = restored.backbone_config["class_path"], restored.backbone_config["init_args"]
    written = []
    if restored.lora is not None and restored.backbone.pretrained:
        adapter = folder / "adapter"
        args = restored.backbone.save_adapter(restored.network, adapter)
        write_config(adapter, class_path, {**init_args, **args})
        written.append(adapter)
    args = restored.backbone.save_merged(restored.network, restored.tokenizer, folder)
    write_config(folder, class_path, {**init_args, **args})
    return [folder, *written]
