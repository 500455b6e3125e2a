"""The memory plan (`recsys-lightning plan`, recsys_lightning/memory.py): the GLM-10B network counted on the meta
device; the activation formula against the bytes autograd saves (float32, and under bf16 autocast); the planned peak
against every storage alive during a step on one process; and the whole plan against two FSDP2 processes (gloo)
that measure their parameter, gradient and AdamW-state shards, their saved activations and their step's peak."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker

from recsys_lightning.cli import main
from recsys_lightning.infilling.layout import blank_infilling_mask
from recsys_lightning.memory import (PeakBytes, SavedTensorBytes, Setup, activation_bytes, backward_activations,
                                     describe, forward_activations, local_bytes, meta_network, optimizer_bytes, plan,
                                     working_weights)
from recsys_lightning.model.backbones import GLM_LORA_TARGETS, NativeGLM
from recsys_lightning.model.glm import GLMConfig, GLMModel
from recsys_lightning.model.lora import LoRA, LoRADefaults, apply_lora
from tests.conftest import write_reviews
from tests.test_cli import refused
from tests.test_distributed import cli
from tests.test_resume import launch

# THUDM/glm-10b's config.json (the sizes; the remote-code keys are tests/model/conftest.py's THUDM_CONFIG)
GLM_10B = {"vocab_size": 50304, "hidden_size": 4096, "num_layers": 48, "num_attention_heads": 64,
           "max_sequence_length": 1024, "block_position_encoding": True, "relative_encoding": False}
# its parameter count: word embeddings 50304 x 4096, two position tables of 1025 x 4096, 48 blocks of
# 12 x 4096^2 weights + 13 x 4096 biases and norms, the final LayerNorm
GLM_10B_PARAMETERS = 9_880_682_496


@pytest.fixture(autouse=True)
def one_thread():
    """The tiny models here run on one intra-op thread (more only contend on a shared machine), restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_glm_10b_is_counted_on_the_meta_device_and_its_lora_adapters_by_the_hand_formula(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(GLM_10B))  # no weights: the plan reads config.json alone
    network = meta_network(NativeGLM(checkpoint=str(tmp_path), dtype="bfloat16"), None)
    assert all(p.is_meta for p in network.parameters())
    full = describe(network, None)
    assert abs(full.total - GLM_10B_PARAMETERS) <= 0.01 * GLM_10B_PARAMETERS
    assert full.total == GLM_10B_PARAMETERS and full.trainable == full.total
    lora = LoRA(r=8)
    adapted = describe(meta_network(NativeGLM(checkpoint=str(tmp_path), dtype="bfloat16"), lora), lora)
    h, layers = 4096, 48
    # r x (in + out) per adapted linear: query_key_value h -> 3h, dense h -> h, h -> 4h, 4h -> h
    assert adapted.trainable == layers * lora.r * ((h + 3 * h) + (h + h) + (h + 4 * h) + (4 * h + h))
    assert adapted.total == GLM_10B_PARAMETERS + adapted.trainable
    sharded = plan(full, Setup(strategy="fsdp2", devices=8, bf16_mixed=True))
    assert sharded.parameters == sum(math.ceil(t.shape[0] / 8) * math.prod(t.shape[1:]) * 2 for t in full.tensors)
    assert sharded.optimizer == sum(2 * math.ceil(t.shape[0] / 8) * math.prod(t.shape[1:]) * 2 + 4
                                    for t in full.tensors)


def test_plan_prints_the_components_and_assumptions_for_a_config(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps(GLM_10B))
    args = ["plan", "--config", "demo", "--config", "backbones/glm_10b", "--model.backbone.init_args.checkpoint",
            str(tmp_path), "--batch_size", "16", "--row_length", "512"]
    main(args)
    out = capsys.readouterr().out
    for line in ("parameters", "gradients", "optimizer states", "activations", "total", "LoRA r=8",
                 "activation checkpointing on", "16 rows x 512 = 8,192", "weights stored in bf16"):
        assert line in out, out
    main([*args, "--json", "--strategy", "fsdp2", "--devices", "8", "--model.lora", "null"])
    components = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    bf16_shard = GLM_10B_PARAMETERS * 2 / 8  # full fine-tuning of bf16 weights over 8 devices
    assert abs(components["parameters"] - bf16_shard) < 0.01 * bf16_shard
    assert components["gradients"] == components["parameters"] and components["backward"] > 0


def test_plan_refuses_a_backbone_it_does_not_model_and_a_checkpoint_without_its_config(tmp_path, capsys):
    with refused(capsys, r"plan: model.backbone is HFCausalLM; the memory plan models the native GLM block"):
        main(["plan", "--config", "demo", "--config", "backbones/llama_tiny"])
    with pytest.raises(FileNotFoundError, match=rf"checkpoint {tmp_path}: no config.json \(the plan needs only"):
        meta_network(NativeGLM(checkpoint=str(tmp_path)), None)


def glm_batch(batch: int, length: int, vocab: int) -> dict[str, torch.Tensor]:
    """A blank-infilling batch: Part A the first 60% of each row, Part B (the loss's targets) the rest."""
    positions = torch.stack([torch.arange(length).expand(batch, length),
                             torch.zeros(batch, length, dtype=torch.long)], 1)
    part_a = torch.arange(length).expand(batch, length) < int(0.6 * length)
    return {"input_ids": torch.randint(0, vocab, (batch, length)), "position_ids": positions,
            "attention_mask": blank_infilling_mask(torch.zeros(batch, length, dtype=torch.long), part_a),
            "target_positions": torch.nonzero(~part_a.flatten()).flatten()}


def small_glm(adapter: bool, checkpointing: bool, dropout: bool, hidden: int = 64,
              dtype: torch.dtype = torch.float32) -> tuple[nn.Module, LoRA | None]:
    """A 3-block GLM in training mode, LoRA (r=4, float32 as peft makes it) on the default targets or not; dropout
    0.1 (LoRA's .05) or none."""
    torch.manual_seed(0)
    p = 0.1 if dropout else 0.0
    network = GLMModel(GLMConfig(vocab_size=300, hidden_size=hidden, num_layers=3, num_attention_heads=4,
                                 max_sequence_length=64, hidden_dropout=p, attention_dropout=0.0)).to(dtype)
    network.gradient_checkpointing = checkpointing
    lora = LoRA(r=4, dropout=0.05 if dropout else 0.0) if adapter else None
    if lora is not None:
        network = apply_lora(network, lora, LoRADefaults(GLM_LORA_TARGETS))
    return network.train(), lora


def loss_of(network: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """RecSysLLM.training_step's loss: cross-entropy of the float32 Part B logits."""
    logits = network(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                     attention_mask=batch["attention_mask"], logits_positions=batch["target_positions"]).logits
    return F.cross_entropy(logits.float(), torch.randint(0, 300, (len(logits),), generator=torch.Generator()))


@pytest.mark.parametrize(("adapter", "checkpointing", "dropout"), list(itertools.product((False, True), repeat=3)))
def test_the_activation_formula_is_what_autograd_saves(adapter, checkpointing, dropout):
    """Every term of the GLM block's formula, on CPU in float32: the bytes of the distinct storages saved during the
    forward pass and the loss (under checkpointing, each block's input)."""
    network, lora = small_glm(adapter, checkpointing, dropout)
    batch = glm_batch(3, 40, 300)
    with SavedTensorBytes(network.parameters) as saved:
        loss_of(network, batch)
    setup = Setup(batch_size=3, row_length=40, targets=len(batch["target_positions"]), device_type="cpu")
    net = describe(network, lora)
    assert abs(forward_activations(net, setup) - saved.total) <= 8  # the loss's float32 total weight apart
    assert activation_bytes(net, setup) == forward_activations(net, setup) + backward_activations(net, setup)


@pytest.mark.parametrize("weights", [torch.bfloat16, torch.float32], ids=["bf16", "float32"])
@pytest.mark.parametrize(("adapter", "checkpointing"), [(False, False), (True, True)])
def test_under_bf16_autocast_the_formula_counts_the_casts_autograd_saves(weights, adapter, checkpointing):
    """bf16-mixed on CPU (autocast) over bf16 or float32 base weights: the activations in bf16 and the bf16 copies
    autocast makes of float32 weights (the plan's cast weights), peft's float32 copy of each adapter's input."""
    network, lora = small_glm(adapter, checkpointing, True, dtype=weights)
    batch = glm_batch(3, 40, 300)
    with torch.autocast("cpu", dtype=torch.bfloat16), SavedTensorBytes(network.parameters) as saved:
        loss_of(network, batch)
    setup = Setup(batch_size=3, row_length=40, targets=len(batch["target_positions"]), device_type="cpu",
                  bf16_mixed=True)
    net = describe(network, lora)
    casts, recomputed = working_weights(net, setup)  # a recomputed block's casts come in backward
    assert abs(forward_activations(net, setup) + casts - recomputed - saved.total) <= 0.01 * saved.total


@pytest.mark.parametrize(("adapter", "checkpointing"), list(itertools.product((False, True), repeat=2)))
def test_the_planned_total_is_within_10_percent_of_the_peak_of_a_step(adapter, checkpointing):
    """The bytes alive at the peak of a whole step (forward, Lightning's zero_grad, backward, AdamW step) on one
    process, weights, the previous step's gradients and the optimizer states included."""
    network, lora = small_glm(adapter, checkpointing, True, hidden=128)
    optimizer = torch.optim.AdamW([p for p in network.parameters() if p.requires_grad])
    batch = glm_batch(4, 48, 300)

    def step() -> None:
        loss = loss_of(network, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()
    existing = itertools.chain(network.parameters(), (p.grad for p in network.parameters()),
                               (v for state in optimizer.state.values() for v in state.values()))
    with PeakBytes(existing) as peak:  # holds no reference: zero_grad frees the previous gradients
        step()
    planned = plan(describe(network, lora), Setup(batch_size=4, row_length=48,
                                                  targets=len(batch["target_positions"]), device_type="cpu"))
    assert abs(planned.total - peak.peak) <= 0.1 * peak.peak, (planned.total, peak.peak)


class MeasureMemory(L.Callback):
    """During the second training step, on each rank: the local shards' parameter bytes before it, the saved
    activations of its forward and loss, the gradient shards before the optimizer step, the AdamW state after it,
    and the step's peak (torch's FSDPMemTracker); written with the batch's shape to `memory.rank<r>.json` in the
    run's root folder."""

    def __init__(self) -> None:
        self.found: dict[str, int] = {}
        self.saved: SavedTensorBytes | None = None
        self.tracker: FSDPMemTracker | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 1:
            rows, length = batch["input_ids"].shape
            self.found = {"parameters": local_bytes(pl_module.network.parameters()), "batch_size": rows,
                          "row_length": length, "targets": batch["target_positions"].numel(),
                          "vocab": len(pl_module.tokenizer)}
            self.tracker = FSDPMemTracker(pl_module.network, trainer.optimizers[0])
            self.tracker.__enter__()
            self.saved = SavedTensorBytes(pl_module.network.parameters).__enter__()

    def on_before_backward(self, trainer, pl_module, loss):
        if self.saved is not None:
            self.saved.__exit__()
            self.found["activations"], self.saved = self.saved.total, None

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if trainer.global_step == 1:
            self.found["gradients"] = local_bytes(p.grad for p in pl_module.network.parameters())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.tracker is not None:  # after the second step's optimizer step
            self.tracker.__exit__(None, None, None)
            self.found["optimizer"] = optimizer_bytes(trainer.optimizers[0])
            self.found["peak"] = sum(device["Total"] for device in self.tracker.get_tracker_snapshot("peak").values())
            self.tracker = None
            path = Path(trainer.default_root_dir) / f"memory.rank{trainer.global_rank}.json"
            path.write_text(json.dumps(self.found))


SMALL = ["--model.backbone.init_args.hidden_size", "64", "--model.backbone.init_args.num_attention_heads", "4",
         "--model.backbone.init_args.hidden_dropout", "0.1", "--data.batch_size", "4", "--trainer.max_steps", "2",
         "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0", "--checkpoint.monitor", "null",
         "--checkpoint.save_top_k", "0", "--checkpoint.save_last", "false"]
RUNS = {"lora": ["--model.lora", "{r: 4, alpha: 8, dropout: 0.05}",
                 "--model.backbone.init_args.gradient_checkpointing", "true"],
        "full": ["--model.lora", "null"]}
COMPONENTS = ("parameters", "gradients", "optimizer", "activations")


def test_the_plan_is_within_10_percent_of_two_fsdp2_processes(tmp_path, capsys):
    """LoRA with activation checkpointing and full fine-tuning without, each on two gloo processes: every component
    of rank 0 (the larger shard) and the peak of its step."""
    data = write_reviews(tmp_path / "reviews", users=8)
    launch([cli("fit", tmp_path / name, "fsdp2", data, *SMALL, *extra,
                "--trainer.callbacks+=tests.test_memory.MeasureMemory") for name, extra in RUNS.items()], 2, False)
    for name, extra in RUNS.items():
        found = json.loads((tmp_path / name / "memory.rank0.json").read_text())
        main(["plan", *cli("fit", tmp_path, "fsdp2", data, *SMALL, *extra)[1:], "--json", "--devices", "2",
              "--strategy", "fsdp2", "--device_type", "cpu", "--vocab_size", str(found["vocab"]),
              "--batch_size", str(found["batch_size"]), "--row_length", str(found["row_length"]),
              "--targets", str(found["targets"])])
        planned = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        planned["activations"] -= planned["backward"]  # what the forward saves: the measured part
        for key in COMPONENTS:
            assert abs(planned[key] - found[key]) <= 0.1 * found[key], (name, key, planned[key], found[key])
        measured, total = sum(found[k] for k in COMPONENTS), sum(planned[k] for k in COMPONENTS)
        assert abs(total - measured) <= 0.1 * measured, (name, total, measured)
        assert abs(planned["total"] - found["peak"]) <= 0.1 * found["peak"], (name, planned, found)
