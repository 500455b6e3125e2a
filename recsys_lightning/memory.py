"""The memory plan of a training step: per-device parameter, gradient, optimizer-state and activation bytes.

Parameters are counted exactly on the network built on the meta device (trainable vs frozen under LoRA, each
tensor's dtype, FSDP2's dim-0 shards). Activations follow a per-layer formula of the native GLM block: the bytes
autograd saves for the backward pass, term by term (`block_activations`), checked against what
`torch.autograd.graph.saved_tensors_hooks` sees at small shapes on CPU; the peak is the largest of the step's
phases (`Plan.phases`), checked against the bytes alive in a step (`PeakBytes`; torch's FSDPMemTracker under
FSDP2). `recsys-lightning plan` prints it for a config (docs/memory.md; tests/test_memory.py).
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from recsys_lightning.distributed import transformer_blocks
from recsys_lightning.model.backbones import GLM_LORA_TARGETS, NativeGLM, torch_dtype
from recsys_lightning.model.checkpoints import glm_config
from recsys_lightning.model.glm import GLMConfig, GLMModel
from recsys_lightning.model.lora import LoRA, LoRADefaults, apply_lora

Strategy = Literal["single", "ddp", "fsdp2"]
GiB = 1024 ** 3
ADAMW_STATES = 2  # exp_avg and exp_avg_sq, each in its parameter's dtype (torch.optim.AdamW)
STEP_BYTES = 4  # AdamW's float32 `step` tensor per trainable parameter tensor
INDEX_BYTES = 24  # per token: input_ids (int64) and the (B, 2, L) int64 position_ids trained embeddings keep
LN_STATS_BYTES = 8  # per token and LayerNorm: float32 mean and rstd


@dataclass(frozen=True)
class Setup:
    """How a step runs: strategy over `devices`, rows per device, precision and the attention kernel's device.

    Args:
        strategy: one device, DDP (full replicas, gradients bucketed) or FSDP2 (parameters, gradients and optimizer
            states sharded on dim 0 over `devices`).
        devices: data-parallel processes.
        batch_size: rows per device and step (`data.batch_size`).
        row_length: tokens per row (`data.pack_length`, else `data.max_length`: the longest row).
        targets: Part B tokens per device and step whose logits the loss takes (None: `target_fraction` of the tokens).
        target_fraction: Part B share of the tokens when `targets` is None (0.06 in the demo's packed sequential
            rows; generated reviews and explanations have longer Part B).
        bf16_mixed: trainer precision bf16-mixed (autocast; FSDP2 gathers bf16 weights and reduces in float32).
        device_type: "cuda" (dropout keeps a 1-byte mask) or "cpu" (it keeps a mask in the activation dtype).
    """

    strategy: Strategy = "single"
    devices: int = 1
    batch_size: int = 16
    row_length: int = 512
    targets: int | None = None
    target_fraction: float = 0.25
    bf16_mixed: bool = False
    device_type: Literal["cuda", "cpu"] = "cuda"

    def __post_init__(self) -> None:
        if self.strategy == "single" and self.devices != 1:
            raise ValueError(f"plan: strategy 'single' runs on 1 device, got devices={self.devices}; use ddp or fsdp2")
        if self.devices < 1 or self.batch_size < 1 or self.row_length < 1:
            raise ValueError("plan: devices, batch_size and row_length must be at least 1")
        if not 0.0 < self.target_fraction <= 1.0:
            raise ValueError(f"plan: target_fraction must be in (0, 1], got {self.target_fraction}")

    @property
    def tokens(self) -> int:
        return self.batch_size * self.row_length

    @property
    def num_targets(self) -> int:
        return self.targets if self.targets is not None else math.ceil(self.target_fraction * self.tokens)


@dataclass(frozen=True)
class Tensor:
    """One parameter as the plan sees it: shape, bytes per element, trainable, and its FSDP unit (block or root)."""

    shape: tuple[int, ...]
    itemsize: int
    trainable: bool
    block: int | None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def shard_numel(self, shards: int) -> int:
        """Elements of the largest dim-0 shard (rank 0's): FSDP2 pads every shard to ceil(dim 0 / shards) rows."""
        if shards == 1 or not self.shape:
            return self.numel
        return math.ceil(self.shape[0] / shards) * math.prod(self.shape[1:])


@dataclass(frozen=True)
class Network:
    """What the plan needs of a built network: its parameters, the GLM sizes and the LoRA settings."""

    tensors: tuple[Tensor, ...]
    config: GLMConfig
    lora: LoRA | None
    gradient_checkpointing: bool

    @property
    def total(self) -> int:
        return sum(t.numel for t in self.tensors)

    @property
    def trainable(self) -> int:
        return sum(t.numel for t in self.tensors if t.trainable)


@dataclass
class Plan:
    """Bytes per device of one training step, by component, with the assumptions they rest on."""

    parameters: int
    gradients: int
    optimizer: int
    activations: int  # saved by the forward pass, plus `backward`
    working_weights: int  # FSDP2's gathered units (plus one block's unsharded gradients in backward), autocast casts
    optimizer_step: int
    backward: int = 0  # of the activations: the recomputed block and the widest layer's gradients in backward
    backward_weights: int = 0  # of the working weights: FSDP2's unsharded gradients of one block, in backward
    assumptions: list[str] = field(default_factory=list)

    def phases(self) -> dict[str, int]:
        """Bytes alive at the moments that can peak. Lightning zeroes (frees) the previous step's gradients after the
        forward pass: they are alive at its end, not at the start of backward, when the backward's own working set
        joins the saved activations; by the end of backward the gradients are back and the saved activations gone;
        the optimizer step adds its temporaries to the gradients."""
        weights = self.parameters + self.optimizer
        forward = self.activations - self.backward
        return {"end of forward": weights + self.gradients + forward + self.working_weights - self.backward_weights,
                "start of backward": weights + self.activations + self.working_weights,
                "end of backward": weights + self.gradients + self.backward + self.working_weights,
                "optimizer step": weights + self.gradients + self.optimizer_step}

    @property
    def total(self) -> int:
        """The peak: the largest of `phases`."""
        return max(self.phases().values())

    def rows(self) -> list[tuple[str, int]]:
        return [("parameters", self.parameters), ("gradients", self.gradients), ("optimizer states", self.optimizer),
                ("activations", self.activations), ("gathered / cast weights", self.working_weights),
                ("optimizer step temporaries", self.optimizer_step), ("total (peak)", self.total)]

    def table(self) -> str:
        """The plan as text: one line per component in GiB, the peak and its phase, then the assumptions."""
        lines = [f"{name:<28}{value / GiB:>10.2f} GiB" for name, value in self.rows()]
        phases = self.phases()
        peak = max(phases, key=phases.__getitem__)
        return "\n".join([f"{'per device':<28}{'memory':>14}", *lines, f"(the peak: at the {peak})", "",
                          "assumptions:", *(f"  - {a}" for a in self.assumptions)])


# --- the network on the meta device --------------------------------------------------------------------------------
def meta_network(backbone: NativeGLM, lora: LoRA | None, vocab_size: int | None = None) -> nn.Module:
    """The backbone's network with LoRA applied, built on the meta device (no weights read or allocated): sizes from
    its checkpoint's config.json (the folder needs nothing else) or its random-init sizes; `vocab_size` grows the
    word embeddings as a longer tokenizer would."""
    if not isinstance(backbone, NativeGLM):
        raise ValueError(f"plan: model.backbone is {type(backbone).__name__}; the memory plan models the native GLM "
                         "block (recsys_lightning.model.backbones.NativeGLM)")
    if backbone.checkpoint is not None:
        folder = Path(backbone.checkpoint).expanduser()
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"plan: model.backbone.init_args.checkpoint {folder}: no config.json (the plan "
                                    "needs only the checkpoint's config.json)")
        config = glm_config(folder, **backbone.dropout)
    else:
        config = GLMConfig(vocab_size=vocab_size or 0, **backbone.sizes, **backbone.dropout)
    with torch.device("meta"):
        network = GLMModel(config)
        added = network.resize_token_embeddings(vocab_size) if vocab_size else []
        network = network.to(torch_dtype(backbone.dtype))
        network.gradient_checkpointing = backbone.gradient_checkpointing
        if lora is not None:
            tokens = {"word_embeddings": added} if added else {}
            network = apply_lora(network, lora, LoRADefaults(GLM_LORA_TARGETS, trainable_tokens=tokens))
    return network


def describe(network: nn.Module, lora: LoRA | None) -> Network:
    """The plan's view of a (meta or real) native GLM network, LoRA-wrapped or not."""
    glm = next(m for m in network.modules() if isinstance(m, GLMModel))
    block_of = {id(p): i for i, block in enumerate(transformer_blocks(network)) for p in block.parameters()}
    tensors = tuple(Tensor(tuple(p.shape), p.element_size(), p.requires_grad, block_of.get(id(p)))
                    for p in network.parameters())
    return Network(tensors, glm.config, lora, glm.gradient_checkpointing)


# --- the plan ------------------------------------------------------------------------------------------------------
def plan(net: Network, setup: Setup) -> Plan:
    """Per-device bytes of `net` trained with AdamW under `setup` (rank 0's, the largest shard under FSDP2)."""
    shards = setup.devices if setup.strategy == "fsdp2" else 1
    trainable = [t for t in net.tensors if t.trainable]
    parameters = sum(t.shard_numel(shards) * t.itemsize for t in net.tensors)
    gradients = sum(t.shard_numel(shards) * t.itemsize for t in trainable)
    if setup.strategy == "ddp":
        gradients *= 2  # DDP's reducer keeps its own bucket copy of every gradient (gradient_as_bucket_view off)
    optimizer = sum(ADAMW_STATES * t.shard_numel(shards) * t.itemsize + STEP_BYTES for t in trainable)
    backward = backward_activations(net, setup)
    step = optimizer_step_bytes(trainable, shards, setup)
    working, backward_weights = working_weights(net, setup)
    return Plan(parameters, gradients, optimizer, forward_activations(net, setup) + backward, working, step,
                backward, backward_weights, assumptions(net, setup))


def optimizer_step_bytes(trainable: list[Tensor], shards: int, setup: Setup) -> int:
    """AdamW's temporaries: on CUDA its foreach kernels hold one tensor per trainable shard (sqrt of exp_avg_sq); on
    CPU it steps one tensor at a time (two temporaries of the largest)."""
    sizes = [t.shard_numel(shards) * t.itemsize for t in trainable]
    return sum(sizes) if setup.device_type == "cuda" else 2 * max(sizes, default=0)


def base_itemsize(net: Network) -> int:
    """Bytes per element of the blocks' weights (their largest tensor's: LoRA adapters may be float32 over bf16)."""
    blocks = [t for t in net.tensors if t.block is not None] or list(net.tensors)
    return max(blocks, key=lambda t: t.numel).itemsize


def adapter_itemsize(net: Network) -> int:
    """Bytes per element of the trainable block tensors (LoRA adapters: float32 as peft makes them)."""
    return max((t.itemsize for t in net.tensors if t.trainable and t.block is not None), default=base_itemsize(net))


def element_sizes(net: Network, setup: Setup) -> tuple[int, int]:
    """(activation, residual stream) bytes per element: bf16 under bf16 weights or autocast; the residual stream
    stays float32 when autocast runs over float32 embeddings (not under FSDP2, which gathers bf16 weights)."""
    weights = base_itemsize(net)
    act = 2 if setup.bf16_mixed or weights == 2 else 4
    residual = 4 if setup.bf16_mixed and weights == 4 and setup.strategy != "fsdp2" else act
    return act, residual


def block_activations(net: Network, setup: Setup) -> int:
    """Bytes one GLM block saves for backward at `setup`'s batch, without activation checkpointing.

    Per token: both LayerNorms' inputs (residual dtype) and float32 statistics; q, k, v (3h) and the attention
    output (h, SDPA keeps it; it is also the dense layer's input); the GeLU input (f); each linear's input when its
    weight trains (LN1 out h, LN2 out h, GeLU out f); under LoRA each adapted linear keeps its adapter's input instead
    (the dropout output and mask when LoRA dropout is on) and lora_B's input (r); the two hidden-dropout masks; the
    attention's log-sum-exp (float32 per head). Per row: SDPA's additive float mask (L x L) built from the bool one.
    """
    c, lora = net.config, net.lora
    h, f, heads = c.hidden_size, c.intermediate_size, c.num_attention_heads
    act, residual = element_sizes(net, setup)
    mask = 1 if setup.device_type == "cuda" else act  # dropout: CUDA's fused kernel keeps a bool mask
    per_token = 2 * h * residual + 2 * LN_STATS_BYTES + (3 * h + h + f) * act + 4 * heads
    if c.hidden_dropout:
        per_token += 2 * h * mask
    targets = set(lora.target_modules or GLM_LORA_TARGETS) if lora is not None else set()
    # peft casts an adapter's input to the adapter's dtype (float32 adapters over bf16 activations): the dropout
    # mask is then float32 on CPU, and the input autocast hands lora_A is a fresh copy, shared with nothing
    cast = adapter_itemsize(net) != act
    lora_mask = mask if setup.device_type == "cuda" or not cast else adapter_itemsize(net)
    # linear -> (input width, input kept anyway: the attention output is SDPA's saved output)
    linears = {"query_key_value": (h, False), "dense": (h, True), "dense_h_to_4h": (h, False),
               "dense_4h_to_h": (f, False)}
    for name, (width, kept) in linears.items():
        if lora is None:
            per_token += 0 if kept else width * act
        elif name in targets:
            per_token += lora.r * act
            per_token += width * (act + lora_mask) if lora.dropout else (0 if kept and not cast else width * act)
    return setup.tokens * per_token + setup.batch_size * setup.row_length ** 2 * act


def activation_bytes(net: Network, setup: Setup) -> int:
    """Saved activations at the end of the forward pass plus the backward pass's own working set."""
    return forward_activations(net, setup) + backward_activations(net, setup)


def backward_activations(net: Network, setup: Setup) -> int:
    """What the backward pass adds while saved activations are still alive: the gradients of the widest layer's
    input and output (GeLU's, 2 x intermediate per token) and, under activation checkpointing, the one block
    recomputed at a time."""
    act, _ = element_sizes(net, setup)
    widest = setup.tokens * 2 * net.config.intermediate_size * act
    return widest + (block_activations(net, setup) if net.gradient_checkpointing else 0)


def forward_activations(net: Network, setup: Setup) -> int:
    """What the forward pass and the loss save for backward: embedding indices (and dropout mask), every block's
    activations (under checkpointing only its input, plus the bool mask once), the final LayerNorm's input, the
    output layer's input (when the tied embeddings train) and the float32 log-softmax of the Part B logits."""
    c = net.config
    act, residual = element_sizes(net, setup)
    tokens, targets = setup.tokens, setup.num_targets
    tables_train = any(t.trainable and t.block is None and len(t.shape) == 2 for t in net.tensors)
    word_trains = any(t.trainable and t.block is None and t.shape == (c.vocab_size, c.hidden_size)
                      for t in net.tensors)
    embedding_mask = 1 if setup.device_type == "cuda" else residual  # dropout on the summed embeddings
    embeddings = tokens * ((INDEX_BYTES if tables_train else 0)
                           + (c.hidden_size * embedding_mask if c.embedding_dropout else 0))
    head = (tokens * (c.hidden_size * residual + LN_STATS_BYTES) + targets * 8  # final LayerNorm, Part B indices
            + targets * (c.hidden_size * act if word_trains else 0)  # the tied output layer's input
            + targets * c.vocab_size * 4 + targets * 8)  # float32 log-softmax, cross-entropy targets
    if net.gradient_checkpointing:
        layers = c.num_layers * tokens * c.hidden_size * residual + setup.batch_size * setup.row_length ** 2
    else:
        layers = c.num_layers * block_activations(net, setup)
    return embeddings + layers + head


def working_weights(net: Network, setup: Setup) -> tuple[int, int]:
    """Transient full-size weights, and the part of them only the backward pass holds: under FSDP2 the root unit
    (kept gathered from forward to backward) and two blocks (the current one and the prefetched next), plus one
    block's unsharded gradients in backward; under autocast elsewhere the bf16 copies of float32 weight matrices
    the linears keep for backward (under checkpointing: the output layer's and the recomputed block's)."""
    if setup.strategy == "fsdp2":
        gather = 2 if setup.bf16_mixed else None
        units: dict[int | None, int] = {}
        grads: dict[int | None, int] = {}
        for t in net.tensors:
            size = t.numel * (gather or t.itemsize)
            units[t.block] = units.get(t.block, 0) + size
            grads[t.block] = grads.get(t.block, 0) + (size if t.trainable else 0)
        blocks = sorted((v for k, v in units.items() if k is not None), reverse=True)
        block_grads = max((v for k, v in grads.items() if k is not None), default=0)
        return units.get(None, 0) + sum(blocks[:2]) + block_grads, block_grads
    if setup.bf16_mixed:  # the linears' float32 weights, trainable or frozen, cast to bf16 and kept for backward
        c = net.config
        word = sum(t.numel * 2 for t in net.tensors if t.block is None and t.itemsize == 4
                   and t.shape == (c.vocab_size, c.hidden_size))  # the tied output layer's
        casts: dict[int | None, int] = {}
        for t in net.tensors:
            if t.block is not None and t.itemsize == 4 and len(t.shape) == 2:
                casts[t.block] = casts.get(t.block, 0) + t.numel * 2
        if net.gradient_checkpointing:  # cast again when its block is recomputed, one block at a time
            block = max(casts.values(), default=0)
            return word + block, block
        return word + sum(casts.values()), 0
    return 0, 0


def assumptions(net: Network, setup: Setup) -> list[str]:
    """What the numbers assume, one line each."""
    c = net.config
    base = base_itemsize(net)
    names = {1: "8-bit", 2: "bf16", 4: "float32", 8: "float64"}
    act, residual = element_sizes(net, setup)
    lora = net.lora
    adapters = adapter_itemsize(net)
    checkpointing = "on (each block keeps its input; one block recomputed at a time)" \
        if net.gradient_checkpointing else "off"
    masks = "1 byte (CUDA)" if setup.device_type == "cuda" else "the activation dtype (CPU)"
    return [
        f"GLM {c.num_layers} layers x hidden {c.hidden_size}, {c.num_attention_heads} heads, intermediate "
        f"{c.intermediate_size}, vocabulary {c.vocab_size:,}: {net.total:,} parameters, {net.trainable:,} trainable"
        + (f" (LoRA r={lora.r} on {', '.join(lora.target_modules or GLM_LORA_TARGETS)}, dropout {lora.dropout})"
           if lora is not None else " (full fine-tuning)"),
        f"strategy {setup.strategy} over {setup.devices} device(s)"
        + ("; parameters, gradients and AdamW states sharded on dim 0 (rank 0's shard)" if setup.strategy == "fsdp2"
           else "; DDP: gradients twice (its bucket copy)" if setup.strategy == "ddp" else ""),
        f"weights stored in {names.get(base, base)}"
        + (f", LoRA adapters in {names.get(adapters, adapters)}" if lora is not None else "")
        + (" (float32 master weights computed in bf16: bf16-mixed)" if setup.bf16_mixed and base == 4 else "")
        + f"; activations in {names[act]}, residual stream in {names[residual]}",
        "optimizer AdamW: 2 states per trainable parameter in that parameter's dtype, a float32 step count each",
        f"activation checkpointing {checkpointing}",
        f"tokens per step and device = {setup.batch_size} rows x {setup.row_length} = {setup.tokens:,}; "
        f"{setup.num_targets:,} Part B targets whose float32 logits the loss keeps",
        f"SDPA attention under the dense (L x L) mask (not FlexAttention); dropout masks of {masks}",
        "peak: the largest of the end of forward, the start and end of backward and the optimizer step "
        "(Lightning frees the previous gradients between forward and backward)",
    ]


# --- measuring a real step -----------------------------------------------------------------------------------------
def local_bytes(tensors: Iterable[torch.Tensor | None]) -> int:
    """Bytes of the distinct storages behind `tensors` on this process (a DTensor's local shard, padding included)."""
    seen: dict[int, int] = {}
    for t in tensors:
        if t is None:
            continue
        local = t.to_local() if hasattr(t, "to_local") else t
        storage = local.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def optimizer_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor in the optimizer's state (AdamW: exp_avg, exp_avg_sq, step)."""
    return local_bytes(v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor))


class SavedTensorBytes(torch.autograd.graph.saved_tensors_hooks):
    """Counts the bytes of distinct storages autograd saves for backward while open, parameters (sharded or gathered)
    excluded: the activations a forward pass keeps. `parameters` is called at each save (FSDP2 swaps in gathered
    weights block by block)."""

    def __init__(self, parameters: Callable[[], Iterable[torch.Tensor]]) -> None:
        self.storages: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            storage = t.untyped_storage()
            if storage.data_ptr() not in self.storages and storage.data_ptr() not in _storages(parameters()):
                self.storages[storage.data_ptr()] = storage.nbytes()
            return t

        super().__init__(pack, lambda t: t)

    def __enter__(self) -> SavedTensorBytes:
        super().__enter__()
        return self

    @property
    def total(self) -> int:
        return sum(self.storages.values())


class PeakBytes(TorchDispatchMode):
    """The peak of the bytes alive while open: the storages of `existing` (weights, gradients, optimizer states)
    and of every tensor an operator returns, each counted until it is freed. One process without FSDP (FSDP2 frees
    gathered weights by resizing storages, which this does not see: use torch's FSDPMemTracker there)."""

    def __init__(self, existing: Iterable[torch.Tensor | None] = ()) -> None:
        super().__init__()
        self.live = self.peak = 0
        self.alive: set[int] = set()
        for t in existing:
            self._track(t)

    def _track(self, t: Any) -> None:
        if not isinstance(t, torch.Tensor) or t.device.type == "meta":
            return
        storage = (t.to_local() if hasattr(t, "to_local") else t).untyped_storage()
        key, size = storage._cdata, storage.nbytes()
        if key in self.alive:
            return
        self.alive.add(key)
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, key, size)

    def _free(self, key: int, size: int) -> None:
        self.alive.discard(key)
        self.live -= size

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            self._track(t)
        return out


def _storages(tensors: Iterable[torch.Tensor]) -> set[int]:
    return {(t.to_local() if hasattr(t, "to_local") else t).untyped_storage().data_ptr() for t in tensors}


def as_dict(p: Plan) -> dict[str, Any]:
    """The plan's components in bytes (JSON); `backward` is the part of the activations the backward pass adds."""
    keys = ("parameters", "gradients", "optimizer", "activations", "gathered", "optimizer_step", "total")
    return {**{key: value for key, (_, value) in zip(keys, p.rows())}, "backward": p.backward}
