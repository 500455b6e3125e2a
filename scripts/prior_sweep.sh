#!/usr/bin/env bash
# Choose the sequential family's transition_prior weight on validation, then test at it (docs/results.md,
# "Random crops and a transition prior"). The prior is decoding-only, so one fitted checkpoint serves every weight.
# usage: scripts/prior_sweep.sh "WEIGHTS" TASKS ARGS...
#   WEIGHTS  the weights to validate, e.g. "0 0.5 1 2"
#   TASKS    the --data.tasks list with PRIOR where the weight goes
#   ARGS     the rest of the command line: configs, data root, --ckpt_path (the tasks go after them, where a
#            --config given later would replace them)
# Prints "PRIOR w VAL_NDCG10 v" per weight, "CHOSEN w" (the best validation NDCG@10), then the test run's table.
#   scripts/prior_sweep.sh "0 0.5 1 2" '[{name: sequential, options: {max_history: 50, every_window: false,
#       crops: 1, transition_prior: PRIOR}, prompts: variants/sequential_id_only_causal.yaml}]' \
#       --config lightning_configs/quality/beauty_id_only_causal_cpu.yaml --data.root ../shared/data/beauty \
#       --model.score_end false --ckpt_path runs/quality/beauty_id_only_causal_cpu/checkpoints/best.ckpt
set -euo pipefail
WEIGHTS=$1; TASKS=$2; shift 2
CLI=${CLI:-recsys-lightning}
best_value=-1; chosen=
for w in $WEIGHTS; do
  out=$($CLI validate "$@" --data.tasks "${TASKS//PRIOR/$w}" 2>&1) || { echo "$out" | tail -n 20 >&2; exit 1; }
  value=$(echo "$out" | tr -d '│┃' | awk '$1 == "val/sequential/ndcg@10" {print $2}')
  if [ -z "$value" ]; then echo "prior_sweep.sh: no val/sequential/ndcg@10 in the validate output at weight $w" >&2; exit 1; fi
  echo "PRIOR $w VAL_NDCG10 $value"
  if awk -v a="$value" -v b="$best_value" 'BEGIN {exit !(a > b)}'; then best_value=$value; chosen=$w; fi
done
echo "CHOSEN $chosen"
$CLI test "$@" --data.tasks "${TASKS//PRIOR/$chosen}"
