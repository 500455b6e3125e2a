"""Training throughput: our full step (Lightning loop, GLM blank-infilling masks, packed multitask batches) against a
plain causal-SDPA pre-LN transformer of the same size (fwd + bwd + AdamW), side by side in one process.

Prints tokens/s, padding fraction and MFU per round, and one JSON line last. Imports only torch, lightning and
recsys_lightning's infilling/layout and pipeline/packing modules, so it runs on a bare GPU box:
    PYTHONPATH=. python benchmarks/bench_train.py --layers 24 --hidden 1024 --heads 16 --vocab 50304 --compile on

MFU is model FLOPs per second over the device's peak (989 TFLOP/s bf16 on an H100; on CPUs an assumed AVX-512
fp32 peak, stated in the output). Model FLOPs per token: 6 x 12 L d^2 (weights) + 12 L d S (attention, S = row
length) for every token, + 6 V d (output layer) for the tokens that have a loss: all of them in the causal
reference, the Part B tokens in ours. The goal metric is the tokens/s ratio, the median of per-round ratios.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import statistics
import time
import warnings
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from recsys_lightning.pipeline.packing import collate_packed, pack_steps, padding_fraction
from recsys_lightning.model.glm import GLMConfig, GLMModel
from recsys_lightning.infilling.layout import IGNORE, Blank, blank_infilling_block_mask, blank_infilling_mask, infill

H100_BF16_TFLOPS = 989.0
CPU_GHZ, CPU_FP32_FLOPS_PER_CYCLE = 2.5, 64  # AVX-512: 2 FMA units x 16 fp32 lanes x 2 FLOPs
# (prompt tokens, target tokens, share) per task family: what the RecSysLLM task mix lays out
FAMILIES = {"sequential": ((40, 200), (4, 10), 0.3), "rating": ((30, 90), (1, 2), 0.2),
            "explanation": ((40, 110), (10, 40), 0.2), "review": ((80, 300), (5, 30), 0.15),
            "direct": ((150, 400), (4, 10), 0.15)}
TOKENS = SimpleNamespace(pad=0, cls=1, eos=2, sop=3, eop=4, masks=frozenset({5}))  # GLMTokens' fields


@dataclass
class Shape:
    layers: int
    hidden: int
    heads: int
    vocab: int
    seq: int

    def flops(self, tokens: int, predicted: int) -> float:
        """Training FLOPs of `tokens` tokens through the blocks, `predicted` of them through the output layer."""
        d, n = self.hidden, self.layers
        return tokens * (6 * 12 * n * d * d + 12 * n * d * self.seq) + predicted * 6 * self.vocab * d


def multitask_samples(count: int, shape: Shape, rng: random.Random) -> list[dict[str, Any]]:
    """Laid-out blank-infilling samples with the task mix's prompt and target lengths, random token ids."""
    names = list(FAMILIES)
    shares = [FAMILIES[n][2] for n in names]
    out = []
    for name in rng.choices(names, shares, k=count):
        (lo, hi), (tlo, thi), _ = FAMILIES[name]
        target = [rng.randrange(8, shape.vocab) for _ in range(rng.randint(tlo, thi))]
        prompt = [rng.randrange(8, shape.vocab) for _ in range(min(rng.randint(lo, hi), shape.seq - len(target) - 4))]
        mask = rng.randrange(len(prompt) + 1)
        part_a = [TOKENS.cls, *prompt[:mask], min(TOKENS.masks), *prompt[mask:], TOKENS.eos]
        out.append(infill(part_a, [Blank(mask + 1, target)], TOKENS))
    return out


def packed_batches(shape: Shape, rows: int, steps: int, seed: int) -> tuple[list[dict[str, torch.Tensor]], float]:
    """`steps` packed batches of `rows` x seq tokens, and the padding fraction of the same samples unpacked."""
    rng = random.Random(seed)
    samples = multitask_samples(int(2.5 * steps * rows * shape.seq / 150), shape, rng)
    lengths = [len(s["input_ids"]) for s in samples]
    plan = pack_steps(list(range(len(samples))), lengths, rows, shape.seq)[:steps]
    if len(plan) < steps:
        raise ValueError(f"only {len(plan)} packed steps from {len(samples)} samples")
    used = [i for step in plan for row in step for i in row]
    unpacked = [lengths[i] for i in used]
    slots = sum(max(unpacked[s: s + rows]) * len(unpacked[s: s + rows]) for s in range(0, len(unpacked), rows))
    batches = [collate_packed([[samples[i] for i in row] for row in step], TOKENS.pad, shape.seq) for step in plan]
    return batches, 1 - sum(unpacked) / slots


class PackedGLMStep(L.LightningModule):
    """RecSysLLM's training step with a native GLM (tests/benchmarks check the equality): the blank-infilling mask
    (dense for SDPA, or a FlexAttention block mask) from the batch's segments and Part A, logits at the collator's
    Part B `target_positions` only, cross-entropy; the forward compiled as `RecSysLLM(compile=True)` does; AdamW,
    fused on CUDA."""

    def __init__(self, shape: Shape, compile: bool, flex: bool = False, lr: float = 1e-4) -> None:
        super().__init__()
        self.shape, self.compile_forward, self.flex, self.lr = shape, compile, flex, lr
        self.network: nn.Module | None = None

    def configure_model(self) -> None:
        if self.network is None:
            s = self.shape
            self.network = GLMModel(GLMConfig(vocab_size=s.vocab, hidden_size=s.hidden, num_layers=s.layers,
                                              num_attention_heads=s.heads, max_sequence_length=s.seq,
                                              hidden_dropout=0.0, attention_dropout=0.0))
            if self.compile_forward:
                self.compile()

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        infilling_mask = blank_infilling_block_mask if self.flex else blank_infilling_mask
        mask = infilling_mask(batch["segment_ids"], batch["part_a"])
        return self.network(input_ids=batch["input_ids"], position_ids=batch["position_ids"], attention_mask=mask,
                            logits_positions=batch["target_positions"]).logits

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if self.compile_forward:  # as RecSysLLM: one dynamic graph for every Part B target count
            torch._dynamo.mark_dynamic(batch["target_positions"], 0)
        return F.cross_entropy(self(batch).float(), batch["targets"], ignore_index=IGNORE)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.lr, fused=self.device.type == "cuda")


class CausalBlock(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        x = x + self.proj(F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, n, d))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x)), approximate="tanh"))


class CausalLM(nn.Module):
    """The reference: a plain pre-LN causal transformer, SDPA with `is_causal`, output layer tied to the input."""

    def __init__(self, shape: Shape) -> None:
        super().__init__()
        self.embed, self.pos = nn.Embedding(shape.vocab, shape.hidden), nn.Embedding(shape.seq, shape.hidden)
        self.blocks = nn.ModuleList(CausalBlock(shape.hidden, shape.heads) for _ in range(shape.layers))
        self.norm = nn.LayerNorm(shape.hidden)
        self.gradient_checkpointing = False  # as GLMModel's: recompute each block in the backward pass

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids) + self.pos.weight[: ids.shape[1]]
        for block in self.blocks:
            recompute = self.gradient_checkpointing and self.training
            x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False) if recompute else block(x)
        return F.linear(self.norm(x), self.embed.weight)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class StepClock(L.Callback):
    """Wall-clock time at the end of the `untimed`-th and the last training step, synchronized there only: in
    between the host runs ahead of the device, as in the reference's timed loop."""

    def __init__(self, untimed: int = 1) -> None:
        self.untimed = untimed
        self.times: list[float] = []

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if batch_idx == self.untimed - 1 or trainer.global_step >= trainer.max_steps:
            sync(trainer.strategy.root_device)
            self.times.append(time.perf_counter())


def run_ours(module: PackedGLMStep, batches: list[dict[str, torch.Tensor]], precision: str, untimed: int = 1
             ) -> tuple[float, float]:
    """Real (non-padding) tokens per second and model FLOPs per second over batches[untimed:], through a
    Lightning fit of len(batches) steps."""
    clock = StepClock(untimed)
    trainer = L.Trainer(accelerator="auto", devices=1, precision=precision, max_steps=len(batches), logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, num_sanity_val_steps=0, callbacks=[clock])
    trainer.fit(module, DataLoader(batches, batch_size=None, collate_fn=lambda b: b))
    tokens = sum(int((b["segment_ids"] >= 0).sum()) for b in batches[untimed:])
    predicted = sum(int((b["labels"] != IGNORE).sum()) for b in batches[untimed:])
    seconds = clock.times[-1] - clock.times[0]
    return tokens / seconds, module.shape.flops(tokens, predicted) / seconds


def reference_step(shape: Shape, device: torch.device, compile: bool, precision: str
                   ) -> Callable[[torch.Tensor], None]:
    """One fwd + bwd + AdamW (fused on CUDA) step of the compiled causal reference, in bf16 autocast when our step
    is (`precision` bf16-mixed)."""
    model = CausalLM(shape).to(device)
    return next_token_step(model, torch.compile(model) if compile else model, device, precision)


def next_token_step(model: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor], device: torch.device,
                    precision: str) -> Callable[[torch.Tensor], None]:
    """One step of next-token cross-entropy on every position of `forward`'s logits, backward and AdamW (fused on
    CUDA) over `model`'s trainable parameters, in bf16 autocast when `precision` is bf16-mixed."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4,
                                  fused=device.type == "cuda")
    autocast = torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16-mixed")

    def step(ids: torch.Tensor) -> None:
        with autocast:
            logits = forward(ids[:, :-1])
        F.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def run_reference(step: Callable[[torch.Tensor], None], ids: torch.Tensor, steps: int) -> float:
    """Tokens per second over `steps` steps (after one untimed)."""
    step(ids)
    sync(ids.device)
    start = time.perf_counter()
    for _ in range(steps):
        step(ids)
    sync(ids.device)
    return ids[:, :-1].numel() * steps / (time.perf_counter() - start)


def device_peak(device: torch.device, given: float | None = None) -> tuple[float, str]:
    """The device's peak TFLOP/s for MFU and how it was found: `given`, the H100's (and H200's) bf16 dense, or an
    assumed AVX-512 fp32 peak of this process's CPU cores."""
    if given is not None:
        return given, "given"
    if device.type == "cuda":
        return H100_BF16_TFLOPS, "H100/H200 bf16 dense"
    cores = len(os.sched_getaffinity(0))
    return (cores * CPU_GHZ * CPU_FP32_FLOPS_PER_CYCLE / 1e3,
            f"assumed: {cores} cores x {CPU_GHZ} GHz x {CPU_FP32_FLOPS_PER_CYCLE} fp32 FLOP/cycle (AVX-512)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=8, help="rows per step")
    parser.add_argument("--seq", type=int, default=512, help="tokens per row")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds; medians are reported")
    parser.add_argument("--compile", choices=("auto", "on", "off"), default="auto", help="auto: on CUDA only")
    parser.add_argument("--attention", choices=("auto", "sdpa", "flex"), default="auto",
                        help="our step's attention, as NativeGLM(attention=...); auto: sdpa")
    parser.add_argument("--precision", choices=("auto", "32-true", "bf16-mixed"), default="auto",
                        help="auto: bf16-mixed on CUDA, 32-true on CPU (bf16-mixed is faster there only with AMX)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak (default: H100 bf16 or CPU)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.warmup < 2 or args.steps < 1:
        parser.error("--warmup must be at least 2 and --steps at least 1")

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)  # one Trainer per round: keep the output short
    warnings.filterwarnings("ignore", module="lightning")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    compile = args.compile == "on" or (args.compile == "auto" and device.type == "cuda")
    precision = args.precision if args.precision != "auto" else "bf16-mixed" if device.type == "cuda" else "32-true"
    flex = args.attention == "flex"
    if flex and device.type != "cuda":
        parser.error("--attention flex trains on CUDA only (FlexAttention has no CPU backward)")
    cores = len(os.sched_getaffinity(0))
    peak, peak_note = device_peak(device, args.peak_tflops)
    shape = Shape(args.layers, args.hidden, args.heads, args.vocab, args.seq)
    torch.manual_seed(args.seed)

    batches, unpacked_padding = packed_batches(shape, args.batch, args.warmup + args.rounds * (args.steps + 1),
                                               args.seed)
    ours = PackedGLMStep(shape, compile, flex)
    reference = reference_step(shape, device, compile, precision)
    ids = torch.randint(0, shape.vocab, (args.batch, shape.seq + 1), device=device)
    run_ours(ours, batches[: args.warmup], precision)
    run_reference(reference, ids, args.warmup)

    rates: dict[str, list[float]] = {"ours": [], "reference": []}
    flops: dict[str, list[float]] = {"ours": [], "reference": []}
    for r in range(args.rounds):
        start = args.warmup + r * (args.steps + 1)
        rate, flop_rate = run_ours(ours, batches[start: start + args.steps + 1], precision)
        rates["ours"].append(rate)
        flops["ours"].append(flop_rate)
        rates["reference"].append(run_reference(reference, ids, args.steps))
        flops["reference"].append(rates["reference"][-1] * shape.flops(1, 1))
        print(f"round {r}: ours {rates['ours'][-1]:,.0f} tokens/s, reference {rates['reference'][-1]:,.0f} tokens/s",
              flush=True)
    median = {k: statistics.median(v) for k, v in rates.items()}
    mfu = {k: statistics.median(v) / (peak * 1e12) for k, v in flops.items()}
    ratio = statistics.median(o / r for o, r in zip(rates["ours"], rates["reference"]))
    result = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({cores} cores)",
        "shape": vars(shape), "batch": [args.batch, args.seq], "precision": precision, "compiled": compile,
        "attention": "flex" if flex else "sdpa",
        "peak_tflops": peak, "peak": peak_note, "reference_flops_per_token": shape.flops(1, 1),
        "tokens_per_s": round(median["ours"]), "padding_fraction": round(statistics.mean(
            padding_fraction(b) for b in batches[args.warmup:]), 4),
        "unpacked_padding_fraction": round(unpacked_padding, 4), "mfu": round(mfu["ours"], 4),
        "reference_tokens_per_s": round(median["reference"]), "reference_mfu": round(mfu["reference"], 4),
        "ratio": round(ratio, 3), "rounds": {k: [round(x) for x in v] for k, v in rates.items()},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
