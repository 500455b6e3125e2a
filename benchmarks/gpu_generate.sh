#!/usr/bin/env bash
# bench-generate on a GPU: a T5-small-sized (~55M) random-init GLM in fp32 and bf16, then the tiny model.
# Batch 32, beam 20, top-10 over Beauty's 12,101 items; each run prints one JSON line last.
# Needs only torch and transformers (no install of this package): run from anywhere, e.g.
#   bash benchmarks/gpu_generate.sh              (data from ../shared/data/beauty/ or ./shared/data/beauty/)
#   DATA=/path/Beauty.txt USERS=1024 bash benchmarks/gpu_generate.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python}
if [[ -z "${DATA:-}" ]]; then  # beside the checkout, or inside it
  DATA=../shared/data/beauty/Beauty.txt
  [[ -f "$DATA" ]] || DATA=shared/data/beauty/Beauty.txt
fi
USERS=${USERS:-512}
run() { "$PY" benchmarks/bench_generate.py --device cuda --data "$DATA" --users "$USERS" --batch-size 32 --beam 20 \
          --top-k 10 --repeats 3 "$@"; }
run --model t5-small --dtype fp32
run --model t5-small --dtype bf16
run --model tiny --dtype fp32
