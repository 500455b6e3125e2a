#!/usr/bin/env bash
# Choose the sequential family's transition prior on validation, then test at it (docs/results.md,
# "Random crops and a transition prior"). The prior is decoding-only, so one fitted checkpoint serves every setting.
# usage: scripts/prior_sweep.sh "SETTINGS" TASKS ARGS...
#   SETTINGS  the settings to validate: weights ("0 0.5 1 2") or weight:context:decay[:window] ("1:1:1 1:5:0.3:2")
#   TASKS     the --data.tasks list with PRIOR where the weight goes (and CONTEXT, DECAY, WINDOW for the others)
#   ARGS      the rest of the command line: configs, data root, --ckpt_path (the tasks go after them, where a
#             --config given later would replace them)
# Prints "PRIOR s VAL_NDCG10 v" per setting, "CHOSEN s" (the best validation NDCG@10), then the test run's table.
#   scripts/prior_sweep.sh "1:1:1 1:5:0.3 1.5:5:0.3" '[{name: sequential, options: {max_history: 50,
#       every_window: false, crops: 1, transition_prior: PRIOR, prior_context: CONTEXT, prior_decay: DECAY},
#       prompts: variants/sequential_id_only_causal.yaml}]' \
#       --config lightning_configs/quality/beauty_id_only_causal_cpu.yaml --data.root ../shared/data/beauty \
#       --model.score_end false --ckpt_path runs/quality/beauty_id_only_causal_cpu/checkpoints/best.ckpt
set -euo pipefail
SETTINGS=$1; TASKS=$2; shift 2
CLI=${CLI:-recsys-lightning}

fill() {  # the tasks with setting $1's fields in the placeholders PRIOR, CONTEXT, DECAY, WINDOW, in that order
  local tasks=$TASKS placeholder value values
  IFS=: read -r -a values <<< "$1"
  for placeholder in PRIOR CONTEXT DECAY WINDOW; do
    value=${values[0]-}; values=("${values[@]:1}")
    if [ -n "$value" ]; then tasks=${tasks//$placeholder/$value}
    elif [[ $tasks == *$placeholder* ]]; then
      echo "prior_sweep.sh: setting $1 leaves $placeholder unfilled in the tasks" >&2; return 1
    fi
  done
  echo "$tasks"
}

best_value=-1; chosen=
for s in $SETTINGS; do
  tasks=$(fill "$s")
  out=$($CLI validate "$@" --data.tasks "$tasks" 2>&1) || { echo "$out" | tail -n 20 >&2; exit 1; }
  value=$(echo "$out" | tr -d '│┃' | awk '$1 == "val/sequential/ndcg@10" {print $2}')
  if [ -z "$value" ]; then echo "prior_sweep.sh: no val/sequential/ndcg@10 in the validate output at $s" >&2; exit 1; fi
  echo "PRIOR $s VAL_NDCG10 $value"
  if awk -v a="$value" -v b="$best_value" 'BEGIN {exit !(a > b)}'; then best_value=$value; chosen=$s; fi
done
echo "CHOSEN $chosen"
$CLI test "$@" --data.tasks "$(fill "$chosen")"
