"""LoRA training at paper scale (issue 53): the native GLM at GLM-10B shape and a 7B Llama in GLM mode, each beside a
compiled causal reference of the same shape with the same LoRA, in one run.

Each model is built on the meta device through the project's backbone (`NativeGLM`, `HFCausalLM` from a
transformers config: nothing is downloaded), materialised in bf16 on the device with random weights, and given LoRA
(r=8, alpha 16, no dropout, on the attention and MLP projections) by `Backbone.add_lora` (peft; adapters in fp32).
Per config (activation checkpointing on and off x packed multitask rows of each length, the same tokens per step)
it trains bench_train's packed GLM step (RecSysLLM's objective) through a Lightning fit in bf16-mixed, then the
reference (next-token loss on every position of unpacked random rows of the same length) on as many tokens per
step, and prints one JSON line: real tokens/s, MFU and peak memory of both, and their ratio.

    PYTHONPATH=. python benchmarks/bench_scale.py --preset cpu-small    # a minute on a CPU: the same code path
    benchmarks/gpu_scale.sh                                             # glm10b and llama7b on one H100 or H200

MFU counts the FLOPs LoRA performs, per token: 4 per weight of a frozen matrix (forward 2, input gradient 2, no
weight gradient), 6 per LoRA weight (forward and both gradients), 12 x layers x hidden x row length for attention
(bench_train's convention: whole rows), and per predicted token (Part B targets in ours, every token in the
reference) 4 x vocab x hidden for the frozen output layer. Activation checkpointing's recompute is not counted as
model FLOPs, so it shows as lower MFU. Autograd skips the first block's frozen input gradient where the embeddings
are frozen (native GLM: 1/(8 x layers) of the frozen work, counted anyway). On CUDA both models compile block by
block (regional torch.compile: one compilation serves every layer); peak memory is torch.cuda.max_memory_allocated
(the weights included), on a CPU the process's peak RSS.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import logging
import resource
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import peft
import torch
import transformers
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_train beside this file
import bench_train as train  # noqa: E402

from recsys_lightning.model.backbones import Backbone, NativeGLM  # noqa: E402
from recsys_lightning.model.glm import GLMModel  # noqa: E402
from recsys_lightning.model.hf_glm import (  # noqa: E402
    LLAMA_LIKE, GLMModeLM, HFCausalLM, enable_activation_checkpointing, unwrap)
from recsys_lightning.model.lora import LoRA, LoRADefaults, apply_lora  # noqa: E402

LORA = LoRA(r=8, alpha=16, dropout=0.0)
CAUSAL_TARGETS = ("qkv", "proj", "fc1", "fc2")  # bench_train.CausalLM's names for GLM's four projections
# THUDM glm-10b config.json (our position tables hold its max_sequence_length + 1 rows, as load_glm reads them)
GLM_10B = dict(hidden_size=4096, num_layers=48, num_attention_heads=64, max_sequence_length=1025)
# Llama-2-7B's config.json
LLAMA_7B = dict(model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5,
                tie_word_embeddings=False)


@dataclass(frozen=True)
class ModelSpec:
    """One backbone to measure: `glm` (NativeGLM sizes) or `llama` (an HFCausalLM config), and its vocabulary."""

    kind: Literal["glm", "llama"]
    sizes: dict[str, Any]
    vocab: int

    @property
    def layers(self) -> int:
        return self.sizes["num_layers" if self.kind == "glm" else "num_hidden_layers"]

    @property
    def hidden(self) -> int:
        return self.sizes["hidden_size"]

    @property
    def heads(self) -> int:
        return self.sizes["num_attention_heads"]

    @property
    def name(self) -> str:
        return f"native GLM {self.layers} x {self.hidden}" if self.kind == "glm" else \
            f"{self.sizes['model_type']} {self.layers} x {self.hidden} in GLM mode"


@dataclass(frozen=True)
class Preset:
    """What one `--preset` runs: its models, row lengths, tokens per step, untimed and timed steps."""

    models: tuple[ModelSpec, ...]
    seqs: tuple[int, ...]
    tokens_per_step: int
    warmup: int
    steps: int
    checkpointing: tuple[bool, ...] = (False, True)
    description: str = field(default="", compare=False)


PRESETS = {
    "glm10b": Preset((ModelSpec("glm", GLM_10B, 50304),), (512, 1024), 4096, 3, 5,
                     description="THUDM GLM-10B shape, one H100/H200"),
    "llama7b": Preset((ModelSpec("llama", LLAMA_7B, 32000),), (512, 1024), 4096, 3, 5,
                      description="Llama-2-7B shape in GLM mode, one H100/H200"),
    "cpu-small": Preset((ModelSpec("glm", dict(hidden_size=64, num_layers=2, num_attention_heads=4,
                                               max_sequence_length=129), 512),
                         ModelSpec("llama", dict(LLAMA_7B, hidden_size=64, intermediate_size=172, num_hidden_layers=2,
                                                 num_attention_heads=4, num_key_value_heads=4), 512)),
                        (64, 128), 256, 1, 1, description="both code paths at 2 x 64, about a minute on 2 CPU cores"),
}


class Vocabulary:
    """A vocabulary of `size` token ids: all that a random-init backbone's `build` and `add_lora` read from a
    tokenizer (its length)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size


@dataclass(frozen=True)
class FlopCount:
    """Training FLOPs of a LoRA model per token, from its matrices (the module docstring's accounting)."""

    frozen: int  # weights of frozen matrices, the output layer's excluded
    trained: int  # weights of trained matrices (LoRA's A and B)
    output: int  # weights of the output layer (vocab x hidden)
    output_trained: bool
    attention: int  # layers x hidden (all heads' width)

    @classmethod
    def of(cls, model: nn.Module, output: torch.Tensor, attention: int) -> FlopCount:
        """Count `model`'s nn.Linear weights by whether they train; `output` is the output layer's weight."""
        frozen = trained = 0
        for module in model.modules():
            if isinstance(module, nn.Linear) and module.weight is not output:
                if module.weight.requires_grad:
                    trained += module.weight.numel()
                else:
                    frozen += module.weight.numel()
        return cls(frozen, trained, output.numel(), output.requires_grad, attention)

    def per_token(self, seq: int) -> int:
        """FLOPs of one token through the blocks in rows of `seq` tokens: forward, backward, no recompute."""
        return 4 * self.frozen + 6 * self.trained + 12 * self.attention * seq

    def per_predicted(self) -> int:
        """FLOPs of one token through the output layer."""
        return (6 if self.output_trained else 4) * self.output

    def flops(self, tokens: int, predicted: int, seq: int) -> float:
        return tokens * self.per_token(seq) + predicted * self.per_predicted()


@dataclass
class LoRAShape(train.Shape):
    """bench_train's shape (packing reads `seq` and `vocab`) with the LoRA FLOP count for `run_ours`' MFU."""

    count: FlopCount | None = None

    def flops(self, tokens: int, predicted: int) -> float:
        assert self.count is not None
        return self.count.flops(tokens, predicted, self.seq)


class ScaleStep(train.PackedGLMStep):
    """bench_train's packed GLM step on a network built outside Lightning, AdamW over its trainable weights only."""

    def __init__(self, network: nn.Module, shape: LoRAShape) -> None:
        super().__init__(shape, compile=False)
        self.network = network

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=self.lr,
                                 fused=self.device.type == "cuda")


def init_hf_weights(model: PreTrainedModel) -> None:
    """transformers' own init (normals, norms at 1, rotary frequencies) of every module, including those it marked
    initialised while they were still on the meta device."""
    for module in model.modules():
        for item in (module, *module.parameters(recurse=False), *module.buffers(recurse=False)):
            item.__dict__.pop("_is_hf_initialized", None)
    model.init_weights()


def materialise(model: nn.Module, device: torch.device) -> nn.Module:
    """Allocate a meta-device model's tensors on `device` (dtypes kept) and fill them with its own random init."""
    model.to_empty(device=device)
    with torch.no_grad():
        if isinstance(model, GLMModeLM):
            init_hf_weights(unwrap(model.model))
            nn.init.zeros_(model.block_position_embeddings.weight)
        elif isinstance(model, PreTrainedModel):
            init_hf_weights(model)
        elif isinstance(model, GLMModel):
            model.reset_parameters()
        else:
            for module in model.modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
    return model


def backbone(spec: ModelSpec) -> Backbone:
    """The project's backbone for `spec`, random-init, bf16, no dropout."""
    if spec.kind == "glm":
        return NativeGLM(**spec.sizes, hidden_dropout=0.0, attention_dropout=0.0, dtype="bfloat16", attention="sdpa")
    return HFCausalLM(config=spec.sizes, dtype="bfloat16", attn_implementation="sdpa")


def output_weight(model: nn.Module) -> torch.Tensor:
    """The output layer's weight of a (LoRA-wrapped) GLM, GLM-mode LM, HF causal LM or bench_train.CausalLM."""
    inner = model.get_base_model() if isinstance(model, peft.PeftModel) else model
    if isinstance(inner, GLMModeLM):
        return unwrap(inner.model).get_output_embeddings().weight
    if isinstance(inner, PreTrainedModel):
        return inner.get_output_embeddings().weight
    return inner.word_embeddings.weight if isinstance(inner, GLMModel) else inner.embed.weight  # tied


def build_ours(spec: ModelSpec, device: torch.device) -> tuple[nn.Module, FlopCount]:
    """The backbone's network built on meta, materialised on `device`, with LoRA; and its FLOP count."""
    vocab, maker = Vocabulary(spec.vocab), backbone(spec)
    with torch.device("meta"):
        network = maker.build(vocab)  # type: ignore[arg-type]
    network = maker.add_lora(materialise(network, device), LORA, vocab)  # type: ignore[arg-type]
    return network, FlopCount.of(network, output_weight(network), spec.layers * spec.hidden)


def build_reference(spec: ModelSpec, device: torch.device, seq: int) -> tuple[nn.Module, FlopCount]:
    """The causal model of the same shape (bench_train.CausalLM for GLM, the transformers model for Llama), built on
    meta, materialised in bf16 on `device`, with the same LoRA; and its FLOP count."""
    with torch.device("meta"):
        if spec.kind == "glm":
            model: nn.Module = train.CausalLM(train.Shape(spec.layers, spec.hidden, spec.heads, spec.vocab, seq))
            model.to(torch.bfloat16)
            targets = CAUSAL_TARGETS
        else:
            config = {**spec.sizes, "vocab_size": spec.vocab}
            model = AutoModelForCausalLM.from_config(AutoConfig.for_model(config.pop("model_type"), **config),
                                                     dtype=torch.bfloat16, attn_implementation="sdpa")
            model.config.use_cache = False  # training: no KV cache (as HFCausalLM.build)
            targets = LLAMA_LIKE
    model = apply_lora(materialise(model, device), LORA, LoRADefaults(targets))
    return model, FlopCount.of(model, output_weight(model), spec.layers * spec.hidden)


def set_checkpointing(model: nn.Module, on: bool) -> None:
    """Activation checkpointing of every block on or off, through the model's own switch."""
    hf = next((m for m in model.modules() if isinstance(m, PreTrainedModel)), None)
    if hf is not None:  # the method's name before transformers 5.x: gradient_checkpointing_disable
        disable = getattr(hf, "activation_checkpointing_disable", None) or hf.gradient_checkpointing_disable
        enable_activation_checkpointing(hf) if on else disable()
        return
    for module in model.modules():
        if isinstance(module, (GLMModel, train.CausalLM)):
            module.gradient_checkpointing = on


def compile_blocks(model: nn.Module) -> None:
    """Regional compilation: each block of the model's (first) layer list compiles; the layers share one graph."""
    blocks = next(m for m in model.modules() if isinstance(m, nn.ModuleList))
    for block in blocks:
        block.compile()


def trainable(model: nn.Module) -> list[str]:
    """Names of the parameters that train."""
    return [name for name, p in model.named_parameters() if p.requires_grad]


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def resident_gib(device: torch.device) -> float | None:
    """GPU memory allocated now (after a build: the model's weights, and anything an earlier model left behind)."""
    return round(torch.cuda.memory_allocated() / 2**30, 2) if device.type == "cuda" else None


def peak_gib(device: torch.device) -> float:
    """Peak memory since `reset_peak`: CUDA allocated bytes; on a CPU the process's peak RSS (never reset)."""
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)  # KiB on Linux


def release(device: torch.device) -> None:
    """Return a finished model's memory to the GPU before the next model is built: its compiled graphs, reference
    cycles and cached blocks."""
    if device.type == "cuda":
        torch._dynamo.reset()
        gc.collect()
        torch.cuda.empty_cache()


@dataclass(frozen=True)
class Config:
    seq: int
    checkpointing: bool

    def rows(self, tokens_per_step: int) -> int:
        return max(1, tokens_per_step // self.seq)


def progress(side: str, spec: ModelSpec, config: Config, result: dict[str, Any]) -> None:
    """One side's numbers as soon as they are measured (a run stopped before its JSON lines keeps them)."""
    print(f"{side} {spec.name} {config}: {result['tokens_per_s']:,.0f} tokens/s, "
          f"{result['flops_per_s'] / 1e12:.1f} model TFLOP/s, peak {result['peak_memory_gib']} GiB", flush=True)


def measure_ours(spec: ModelSpec, preset: Preset, configs: list[Config], device: torch.device, compile: bool,
                 seed: int) -> tuple[dict[Config, dict[str, Any]], dict[str, Any]]:
    """Per config: our packed step's tokens/s, MFU (numerator: FLOPs/s), peak memory and padding; and the model's
    parameter counts and FLOPs per token."""
    network, count = build_ours(spec, device)
    resident = resident_gib(device)
    if compile:
        compile_blocks(network)
    results = {}
    for config in configs:
        shape = LoRAShape(spec.layers, spec.hidden, spec.heads, spec.vocab, config.seq, count)
        batches, _ = train.packed_batches(shape, config.rows(preset.tokens_per_step), preset.warmup + preset.steps,
                                          seed)
        set_checkpointing(network, config.checkpointing)
        reset_peak(device)
        rate, flop_rate = train.run_ours(ScaleStep(network, shape), batches, "bf16-mixed", untimed=preset.warmup)
        padding = sum(map(train.padding_fraction, batches)) / len(batches)
        results[config] = {"tokens_per_s": rate, "flops_per_s": flop_rate, "peak_memory_gib": peak_gib(device),
                           "built_memory_gib": resident, "padding_fraction": padding,
                           "flops_per_token": count.per_token(config.seq)}
        progress("ours", spec, config, results[config])
    about = {"parameters": sum(p.numel() for p in network.parameters()),
             "trainable_parameters": sum(p.numel() for p in network.parameters() if p.requires_grad),
             "weights": {"frozen": count.frozen, "lora": count.trained, "output": count.output},
             "flops_per_predicted_token": count.per_predicted()}
    return results, about


def logits_of(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """A transformers causal LM's forward as ids -> logits."""
    return lambda ids: model(input_ids=ids).logits


def measure_reference(spec: ModelSpec, preset: Preset, configs: list[Config], device: torch.device, compile: bool
                      ) -> dict[Config, dict[str, Any]]:
    """Per config: the causal reference's tokens/s, FLOPs/s and peak memory on random rows of the config's length."""
    model, count = build_reference(spec, device, max(c.seq for c in configs))
    resident = resident_gib(device)
    model.train()
    forward = logits_of(model) if spec.kind == "llama" else model
    if compile:
        compile_blocks(model)
    step = train.next_token_step(model, forward, device, "bf16-mixed")
    results = {}
    for config in configs:
        ids = torch.randint(0, spec.vocab, (config.rows(preset.tokens_per_step), config.seq + 1), device=device)
        set_checkpointing(model, config.checkpointing)
        reset_peak(device)
        for _ in range(preset.warmup - 1):  # run_reference runs one untimed step itself
            step(ids)
        rate = train.run_reference(step, ids, preset.steps)
        results[config] = {"tokens_per_s": rate, "flops_per_s": rate * count.flops(1, 1, config.seq),
                           "peak_memory_gib": peak_gib(device), "built_memory_gib": resident}
        progress("reference", spec, config, results[config])
    return results


def report(name: str, spec: ModelSpec, preset: Preset, config: Config, ours: dict[str, Any],
           reference: dict[str, Any], about: dict[str, Any], device: torch.device, compile: bool,
           peak: tuple[float, str]) -> dict[str, Any]:
    """One config's JSON line."""
    tflops, note = peak
    cuda = device.type == "cuda"
    mfu = {side: float(f"{r['flops_per_s'] / (tflops * 1e12):.4g}") for side, r in (("ours", ours), ("ref", reference))}
    return {
        "preset": name, "model": spec.name, "device": torch.cuda.get_device_name() if cuda else "cpu",
        "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
        "shape": {"layers": spec.layers, "hidden": spec.hidden, "heads": spec.heads, "vocab": spec.vocab}, **about,
        "lora": {"r": LORA.r, "alpha": LORA.alpha, "targets": "attention and MLP projections"},
        "rows": [config.rows(preset.tokens_per_step), config.seq], "checkpointing": config.checkpointing,
        "compiled": "per block" if compile else False, "precision": "bf16 weights, fp32 adapters, bf16-mixed",
        "steps": preset.steps, "flops_per_token": ours["flops_per_token"], "recompute_counted": False,
        "peak_tflops": tflops, "peak": note,
        "memory": "torch.cuda.max_memory_allocated" if cuda else "process peak RSS",
        "tokens_per_s": round(ours["tokens_per_s"]), "mfu": mfu["ours"], "peak_memory_gib": ours["peak_memory_gib"],
        "padding_fraction": round(ours["padding_fraction"], 4),
        "reference_tokens_per_s": round(reference["tokens_per_s"]), "reference_mfu": mfu["ref"],
        "reference_peak_memory_gib": reference["peak_memory_gib"],
        "built_memory_gib": [ours["built_memory_gib"], reference["built_memory_gib"]],  # CUDA, ours and reference
        "ratio": round(ours["tokens_per_s"] / reference["tokens_per_s"], 3),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu-small",
                        help="; ".join(f"{k}: {v.description}" for k, v in PRESETS.items()))
    parser.add_argument("--seq", type=int, nargs="+", default=None, help="row lengths (default: the preset's)")
    parser.add_argument("--checkpointing", choices=("on", "off", "both"), default="both")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per config (default: the preset's)")
    parser.add_argument("--compile", choices=("auto", "on", "off"), default="auto", help="per block; auto: on CUDA")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak (default: H100 bf16 or CPU)")
    parser.add_argument("--out", type=Path, default=None, help="also append each JSON line to this file")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be at least 1")
    return args


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run a preset and print (and return) one JSON line per model and config."""
    args = parse_args(argv)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)  # one Trainer per config: keep the output short
    warnings.filterwarnings("ignore", module="lightning")
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")  # peft's calls of old names
    preset = PRESETS[args.preset]
    if args.steps is not None:
        preset = dataclasses.replace(preset, steps=args.steps)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    compile = args.compile == "on" or (args.compile == "auto" and device.type == "cuda")
    switch = {"on": (True,), "off": (False,), "both": preset.checkpointing}[args.checkpointing]
    configs = [Config(seq, ckpt) for seq in (args.seq or preset.seqs) for ckpt in switch]
    peak = train.device_peak(device, args.peak_tflops)
    torch.manual_seed(args.seed)
    lines = []
    for spec in preset.models:
        start = time.perf_counter()
        ours, about = measure_ours(spec, preset, configs, device, compile, args.seed)
        release(device)  # one model on the device at a time
        reference = measure_reference(spec, preset, configs, device, compile)
        release(device)
        for config in configs:
            line = report(args.preset, spec, preset, config, ours[config], reference[config], about, device, compile,
                          peak)
            line["model_seconds"] = round(time.perf_counter() - start, 1)
            print(json.dumps(line), flush=True)
            if args.out is not None:
                with args.out.open("a") as out:
                    out.write(json.dumps(line) + "\n")
            lines.append(line)
    return lines


if __name__ == "__main__":
    main()
