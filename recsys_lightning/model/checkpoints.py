"""THUDM GLM checkpoints: config.json -> GLMConfig, weights from .bin or .safetensors (sharded or not), and the
same layout written back, so an exported native GLM reloads through the loader it came from.

Parameter names are those of THUDM's Hugging Face ports (`glm.word_embeddings.weight`,
`glm.transformer.layers.N.attention.query_key_value.weight`, ...); the `glm.` prefix is optional.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, PretrainedConfig

from recsys_lightning.model.glm import GLMConfig, GLMModel

PREFIX = "glm."
MODEL_TYPE = "recsys_lightning_glm"  # what an exported native GLM's config.json says (THUDM's own say "glm")


class ExportedGLMConfig(PretrainedConfig):
    """transformers' reading of an exported native GLM's config.json (`AutoConfig` knows its model_type, so
    `AutoTokenizer` loads the folder's tokenizer without taking the folder for another model)."""

    model_type = MODEL_TYPE


AutoConfig.register(MODEL_TYPE, ExportedGLMConfig, exist_ok=True)
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")
Index = tuple[slice, ...]  # a block of a tensor: one slice per dimension


def check_source(name_or_path: str, key: str) -> None:
    """Fail before training when `name_or_path` is written as a local path but is no folder (hub names pass)."""
    path = Path(name_or_path).expanduser()
    if not path.is_dir() and (path.exists() or name_or_path.startswith((".", "/", "~"))):
        raise FileNotFoundError(f"{key} {name_or_path!r}: no such folder (expected a local model folder or a hub name)")


def resolve_folder(name_or_path: str) -> Path:
    """A local checkpoint folder, or a hub name fetched into the local cache (needs network and huggingface_hub)."""
    check_source(name_or_path, "model.backbone.checkpoint")
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(name_or_path, allow_patterns=["*.json", "*.safetensors", "*.bin", "*.txt"]))


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`, with the file named in the error when it is missing or malformed."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def glm_config(folder: Path, **overrides: Any) -> GLMConfig:
    """GLMConfig from a THUDM config.json (the HF port's keys; position tables hold max_sequence_length + 1 rows).

    `overrides` replace fields (e.g. the dropout rates used for fine-tuning).
    """
    path = folder / "config.json"
    config = read_json(path)
    for key in ("vocab_size", "hidden_size", "num_layers", "num_attention_heads", "max_sequence_length"):
        if not isinstance(config.get(key), int):
            raise ValueError(f"{path}: key {key!r} must be an integer, got {config.get(key)!r}")
    if config.get("relative_encoding") or config.get("block_position_encoding") is False:
        raise ValueError(f"{path}: only GLM with 2D (block) position encoding is supported, not relative encoding")
    sizes = dict(
        vocab_size=config["vocab_size"], hidden_size=config["hidden_size"], num_layers=config["num_layers"],
        num_attention_heads=config["num_attention_heads"], max_sequence_length=config["max_sequence_length"] + 1,
        intermediate_size=config.get("intermediate_size"),
        hidden_dropout=config.get("output_dropout_prob", 0.1), attention_dropout=config.get("attention_dropout_prob", 0.1),
        embedding_dropout=config.get("embedding_dropout_prob"),
        layernorm_epsilon=config.get("layernorm_epsilon", 1e-5), init_std=config.get("initializer_range", 0.02))
    return GLMConfig(**{**sizes, **overrides})


def weight_files(folder: Path) -> list[Path]:
    """The checkpoint's weight files: every shard named by an index json, or the single weights file."""
    for name in INDEX_FILES:
        if (folder / name).is_file():
            index = read_json(folder / name)
            if not isinstance(index.get("weight_map"), dict):
                raise ValueError(f"{folder / name}: no 'weight_map' object")
            shards = sorted(set(index["weight_map"].values()))
            missing = [s for s in shards if not (folder / s).is_file()]
            if missing:
                raise FileNotFoundError(f"{folder / name}: shards {missing} are missing")
            return [folder / s for s in shards]
    for name in SINGLE_FILES:
        if (folder / name).is_file():
            return [folder / name]
    raise FileNotFoundError(f"{folder}: no {' or '.join(INDEX_FILES + SINGLE_FILES)}")


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """One weight file: safetensors, or a torch pickle read weights-only."""
    if path.suffix == ".safetensors":
        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


class WeightFile(Protocol):
    """One opened weight file whose tensors are read block by block."""

    def keys(self) -> list[str]: ...

    def shape(self, key: str) -> tuple[int, ...]: ...

    def read(self, key: str, index: Index) -> torch.Tensor: ...


class SafetensorsFile:
    """A .safetensors file through `safe_open`: shapes from its header, a block read as just that block's bytes."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    def keys(self) -> list[str]:
        return list(self.handle.keys())

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.handle.get_slice(key).get_shape())

    def read(self, key: str, index: Index) -> torch.Tensor:
        return self.handle.get_slice(key)[index]


class PickleFile:
    """A torch pickle memory-mapped (`torch.load(weights_only=True, mmap=True)`): a block's pages alone are read."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors

    def keys(self) -> list[str]:
        return list(self.tensors)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.tensors[key].shape)

    def read(self, key: str, index: Index) -> torch.Tensor:
        return self.tensors[key][index]


@contextmanager
def open_weights(path: Path) -> Iterator[WeightFile]:
    """One weight file opened for block reads, closed (unmapped) on exit."""
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            yield SafetensorsFile(handle)
        return
    tensors = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if not isinstance(tensors, dict):
        raise ValueError(f"{path}: expected a state dict (name -> tensor), got {type(tensors).__name__}")
    yield PickleFile(tensors)


def load_blocks(folder: Path, expected: Mapping[str, torch.Size], blocks: Mapping[str, list[tuple[Index, torch.Tensor]]]
                ) -> None:
    """Copy into each destination of `blocks` (parameter name -> [(block of the checkpoint tensor, destination)])
    that block of the checkpoint's tensor, one file after another, reading nothing else: how an FSDP2 rank loads its
    shards. Names and shapes are checked against `expected` as `load_glm` checks them, each file's before its blocks
    are read."""
    seen: set[str] = set()
    for path in weight_files(folder):
        with open_weights(path) as file:
            for key in file.keys():
                name = key.removeprefix(PREFIX)
                check_tensor(path, name, file.shape(key), expected)
                seen.add(name)
            for key in file.keys():
                for index, out in blocks.get(key.removeprefix(PREFIX), []):
                    if out.numel():
                        out.copy_(file.read(key, index))
    check_complete(folder, expected, seen)


def read_rows(folder: Path, name: str, rows: list[int]) -> torch.Tensor:
    """Rows `rows` of the checkpoint's tensor `name` (a few embedding rows), read alone."""
    for path in weight_files(folder):
        with open_weights(path) as file:
            for key in file.keys():
                if key.removeprefix(PREFIX) == name:
                    return torch.cat([file.read(key, (slice(i, i + 1),)) for i in rows])
    raise ValueError(f"{folder}: the checkpoint lacks parameters {[name]}")


def check_tensor(path: Path, name: str, shape: tuple[int, ...], expected: Mapping[str, torch.Size]) -> None:
    """A checkpoint tensor must be one of the model's parameters, of the shape config.json implies."""
    if name not in expected:
        raise ValueError(f"{path}: unexpected parameter {name!r}; is this a THUDM GLM checkpoint?")
    if tuple(shape) != tuple(expected[name]):
        raise ValueError(f"{path}: {name!r} has shape {tuple(shape)}, config.json implies {tuple(expected[name])}")


def check_complete(folder: Path, expected: Mapping[str, torch.Size], found: set[str]) -> None:
    """Every parameter of the model must be in the checkpoint."""
    missing = sorted(set(expected) - found)
    if missing:
        raise ValueError(f"{folder}: the checkpoint lacks parameters {missing[:5]}{' ...' if len(missing) > 5 else ''}")


def load_glm(folder: Path, dtype: torch.dtype = torch.float32, **overrides: Any) -> GLMModel:
    """A native GLM with a THUDM checkpoint's weights in `dtype`; every parameter must be present, shapes exact.

    The model is built on the meta device and takes the loaded tensors as they are, so memory peaks at one copy.
    """
    config = glm_config(folder, **overrides)
    with torch.device("meta"):
        model = GLMModel(config)
    expected = {name: p.shape for name, p in model.state_dict().items()}
    state: dict[str, torch.Tensor] = {}
    for path in weight_files(folder):
        for name, tensor in read_weights(path).items():
            name = name.removeprefix(PREFIX)
            check_tensor(path, name, tuple(tensor.shape), expected)
            state[name] = tensor.to(dtype)
    check_complete(folder, expected, set(state))
    model.load_state_dict(state, assign=True)
    return model


def save_glm(model: GLMModel, folder: Path, max_shard_size: int | str = "5GB") -> None:
    """Write `model` as a THUDM-layout checkpoint: config.json (HF port keys) and model.safetensors, or shards of at
    most `max_shard_size` with model.safetensors.index.json (Hugging Face's layout, `split_torch_state_dict_into_
    shards`). `model_type` is our own, so transformers never takes the folder for its GLM-4 (`glm`)."""
    folder.mkdir(parents=True, exist_ok=True)
    c = model.config
    config = {"architectures": ["GLMModel"], "model_type": MODEL_TYPE, "block_position_encoding": True,
              "relative_encoding": False, "vocab_size": c.vocab_size, "hidden_size": c.hidden_size,
              "num_layers": c.num_layers, "num_attention_heads": c.num_attention_heads,
              "max_sequence_length": c.max_sequence_length - 1, "intermediate_size": c.intermediate_size,
              "output_dropout_prob": c.hidden_dropout, "embedding_dropout_prob": c.embedding_dropout,
              "attention_dropout_prob": c.attention_dropout, "layernorm_epsilon": c.layernorm_epsilon,
              "initializer_range": c.init_std}
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    state = {PREFIX + name: t.detach().contiguous() for name, t in model.state_dict().items()}
    split = split_torch_state_dict_into_shards(state, max_shard_size=max_shard_size)
    for file, names in split.filename_to_tensors.items():
        save_file({name: state[name] for name in names}, str(folder / file), metadata={"format": "pt"})
    if split.is_sharded:
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        (folder / INDEX_FILES[0]).write_text(json.dumps(index, indent=2) + "\n")
