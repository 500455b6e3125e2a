#!/usr/bin/env bash
# One H100 or H200: LoRA training at paper scale (issue 53). The native GLM at THUDM GLM-10B shape (48 x 4096, 64 heads,
# 50,304 vocab) and Llama-2-7B shape in GLM mode (32 x 4096, MLP 11,008, 32,000 vocab), each built on the meta device,
# materialised in bf16 with random weights, LoRA r=8 on the attention and MLP projections, beside a compiled causal
# reference of the same shape with the same LoRA: activation checkpointing off and on x packed multitask rows of 512
# and 1,024 tokens (4,096 tokens per step), 3 untimed and 5 timed steps each. One JSON line per config (tokens/s,
# MFU counting the FLOPs LoRA performs, peak memory, ratio to the reference), appended to $OUT/bench_scale.jsonl too
# when OUT is set. Needs torch, lightning, transformers and peft; downloads nothing.
# Time, estimated for one H100 (not yet measured): per preset ~15 s of imports, ~5 s to build each model, one
# per-block compilation per model and row length (~30 s each, ~2 min in all), 4 configs x 8 steps x <1 s per model:
# ~3.5 min, so ~7 min for both. Each preset is stopped after PRESET_TIMEOUT seconds (default 285): under 10 min in all;
# a stopped preset's progress lines (one per model side and config: tokens/s, model TFLOP/s, peak GiB) remain.
#   benchmarks/gpu_scale.sh [--steps N ...]      (extra flags go to benchmarks/bench_scale.py; --compile off skips
#                                                compilation)
set -uo pipefail
cd "$(dirname "$0")/.."
status=0
for preset in glm10b llama7b; do
  PYTHONPATH=. PYTHONUNBUFFERED=1 timeout "${PRESET_TIMEOUT:-285}" "${PYTHON:-python3}" benchmarks/bench_scale.py \
    --preset "$preset" ${OUT:+--out "$OUT/bench_scale.jsonl"} "$@" \
    || { status=$?; echo "gpu_scale.sh: $preset exit $status" >&2; }
done
exit "$status"
