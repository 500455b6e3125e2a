#!/usr/bin/env bash
# One GPU (H100): our full training step (Lightning loop, GLM blank-infilling masks, packed multitask batches) against
# the compiled causal-SDPA reference of the same size, side by side: GLM-Large shape (24 x 1024, 16 heads, 50,304
# vocab), bf16, batch 16 x 512, fused AdamW. Needs only torch and lightning (no datasets, jsonargparse, transformers).
# The JSON last line holds tokens/s, padding fraction, MFU (of 989 TFLOP/s) and the ratio to the reference.
#   benchmarks/gpu_train.sh [--steps N ...]      (extra flags go to benchmarks/bench_train.py)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHONPATH=. "${PYTHON:-python3}" benchmarks/bench_train.py --layers 24 --hidden 1024 --heads 16 --vocab 50304 \
  --batch 16 --seq 512 --warmup 10 --steps 20 --rounds 5 --compile on "$@"
