"""Loading a checkpoint into an FSDP2-sharded network without any rank holding the full model.

The base model is built on the meta device. Its parameters become zero-strided stubs (one element of memory each) while
peft wraps it, so LoRA adapters are created and randomly initialised on the CPU exactly as for a loaded model (same
random stream); their values are kept, the network is moved to the meta device and sharded (`fully_shard`), and
`to_empty` allocates each rank's local shards alone. Every rank then fills its shards: base weights from the
checkpoint's blocks it owns (`checkpoints.load_blocks`), the new token rows (drawn before, as `resize_token_embeddings`
draws them) and the adapters from the kept values.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from peft.tuners.trainable_tokens.layer import TrainableTokensLayer
from torch import nn
from torch.distributed.tensor import DTensor
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

from recsys_lightning.model.checkpoints import Index, load_blocks, read_rows

# peft's wrappers around a base module's parameters: base_model.model.<name>, <module>.base_layer.<param>, ...
PEFT_WRAPPERS = re.compile(r"^base_model\.model\.|(?<=\.)(?:base_layer|token_adapter|original_module)\.|"
                           r"(?<=\.)modules_to_save\.[^.]+\.")
Tensors = dict[str, torch.Tensor]


def base_name(name: str) -> str:
    """The base model's name of a (possibly peft-wrapped) parameter: `base_model.model.x.base_layer.weight` ->
    `x.weight`."""
    return PEFT_WRAPPERS.sub("", name)


def stub_parameters(model: nn.Module) -> None:
    """Replace every parameter of `model` by a real, zero-strided stub of its shape and dtype (one element of memory),
    so wrappers that place new modules on the device of the weights they wrap (peft) create them on the CPU."""
    for module in model.modules():
        for name, p in list(module.named_parameters(recurse=False)):
            stub = torch.zeros((), dtype=p.dtype).expand(p.shape)
            setattr(module, name, nn.Parameter(stub, requires_grad=p.requires_grad))


def kept_values(network: nn.Module, base: Mapping[str, torch.Size]) -> Tensors:
    """The values of every parameter and buffer that does not stand for a base weight (LoRA adapters and the like)."""
    state = {**dict(network.named_parameters()), **dict(network.named_buffers())}
    return {name: t.detach().clone() for name, t in state.items() if base_name(name) not in base}


def token_values(network: nn.Module, rows: Callable[[str, list[int]], torch.Tensor]) -> Tensors:
    """peft's trainable token rows at initialisation (`trainable_tokens_delta` and `_original`): `rows(embedding's base
    name, token ids)`, the embedding's rows of those tokens, which the stubs could not give it."""
    values = {}
    for name, module in network.named_modules():
        if isinstance(module, TrainableTokensLayer):
            for adapter, ids in module.token_indices.items():
                init = rows(base_name(f"{name}.weight"), list(ids))
                for kind in ("trainable_tokens_delta", "trainable_tokens_original"):
                    values[f"{name}.{kind}.{adapter}"] = init
    return values


def local_block(tensor: torch.Tensor) -> tuple[torch.Tensor, Index]:
    """A (sharded) parameter's local tensor on this rank and the block of the full tensor it holds."""
    if not isinstance(tensor, DTensor):
        return tensor, tuple(slice(0, n) for n in tensor.shape)
    shape, offset = compute_local_shape_and_global_offset(tensor.shape, tensor.device_mesh, tensor.placements)
    return tensor.to_local(), tuple(slice(o, o + n) for o, n in zip(offset, shape))


def fill_local_shards(network: nn.Module, folder: Path, base: Mapping[str, torch.Size], values: Tensors,
                      extra_rows: Mapping[str, torch.Tensor]) -> None:
    """Fill every local shard of the sharded `network` (after `to_empty`): a base weight from its checkpoint block
    (rows past the checkpoint's, the new token rows, from `extra_rows`), anything else from `values`."""
    blocks: dict[str, list[tuple[Index, torch.Tensor]]] = {}
    state = {**dict(network.named_parameters()), **dict(network.named_buffers())}
    with torch.no_grad():
        for name, tensor in state.items():
            local, index = local_block(tensor)
            key = base_name(name)
            if key not in base:
                local.copy_(values[name][index])
                continue
            rows = base[key][0]  # the checkpoint's rows; more only where new token rows were added
            first, stop = index[0].start, index[0].stop
            if first < rows:
                blocks.setdefault(key, []).append(((slice(first, min(stop, rows)), *index[1:]),
                                                   local[: min(stop, rows) - first]))
            if stop > rows:
                start = max(first, rows)
                local[start - first:].copy_(extra_rows[key][(slice(start - rows, stop - rows), *index[1:])])
        load_blocks(folder, base, blocks)


def load_sharded(model: nn.Module, folder: Path, new_rows: Mapping[str, torch.Tensor],
                 wrap: Callable[[nn.Module], nn.Module], shard: Callable[[nn.Module], nn.Module],
                 device: torch.device) -> nn.Module:
    """`model` (on the meta device, its embeddings already resized) wrapped by `wrap` (LoRA), sharded by `shard`, and
    each rank's shards loaded from the checkpoint in `folder` and `new_rows` (name -> rows past the checkpoint's)."""
    base = {name: p.shape for name, p in model.state_dict().items()}
    dtypes = {name: p.dtype for name, p in model.state_dict().items()}
    checkpoint_shapes = {name: torch.Size((shape[0] - len(new_rows[name]), *shape[1:])) if name in new_rows else shape
                         for name, shape in base.items()}
    stub_parameters(model)
    network = wrap(model)

    def embedding_rows(name: str, ids: list[int]) -> torch.Tensor:
        """Rows `ids` of the resized embedding `name`, in its dtype: drawn new rows, or read from the checkpoint."""
        first = checkpoint_shapes[name][0]
        old = [i for i in ids if i < first]
        read = dict(zip(old, read_rows(folder, name, old).to(dtypes[name]))) if old else {}
        return torch.stack([read[i] if i < first else new_rows[name][i - first] for i in ids])

    values = {**kept_values(network, base), **token_values(network, embedding_rows)}
    network = shard(network.to("meta"))
    network.to_empty(device=device)
    fill_local_shards(network, folder, checkpoint_shapes, values, new_rows)
    return network
