#!/usr/bin/env bash
# Yelp seed study for docs/results.md on one GPU (device tool): the ID-only causal CPU recipe (4 rows a step, dropout
# .5, 2,400 steps, float32) with direct recommendation in the mix, three seeds side by side; then each checkpoint's
# tests (no end token, end token, direct recommendation). RUNS="name:seed:kind:steps ..." picks other runs (kind id:
# the ID-only recipe alone); the ID-only seeds ran already (docs/results.md, "Three seeds on one GPU").
# Measured on one H200 with six runs side by side: ID-only fits (preparation included) in 125 s, direct
# recommendation prepares its 1.1 GB example cache in about 250 s and trains at 5 to 6 steps a second, each
# sequential test takes 3 to 5 minutes (136 s for three side by side). Logs, metrics and results (no checkpoints)
# are packed into $RUN_OUT/runs.tgz every 20 s; $RUN_OUT/done marks the end.
# Prepare here (the device has no network, datasets or jsonargparse), then carry .dev in every call (a call that
# does not carry it removes .dev there, and the tests still running lose their data):
#   echo /.dev/ >> .git/info/exclude; mkdir -p .dev/data; cp -r ../shared/data/yelp .dev/data/
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 -d .dev/whl datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 \
#     jsonargparse==4.53.0 docstring_parser==0.18.0 typeshed_client==2.15.0
# On the device, detached so that a second call can collect what outlasts the first:
#   setsid nohup bash scripts/gpu_yelp_seeds.sh > /tmp/gpu_yelp.log 2>&1 < /dev/null &
# Dry run on CPU: LOCAL=1 PY=.venv/bin/python RUNS="t:1:direct:6" EXTRA="--trainer.val_check_interval 3
#   --trainer.limit_val_batches 1 --trainer.limit_test_batches 1" scripts/gpu_yelp_seeds.sh
set -u
cd "$(dirname "$0")/.."
T0=$(date +%s)
OUT=${RUN_OUT:-/tmp/out}; mkdir -p "$OUT"  # outlives the device call that started it (setsid)
PY=${PY:-python3}
EXTRA=${EXTRA:-}
FIT_TIME=${FIT_TIME:-00:00:08:00}
# name:seed:kind:steps, kind = id (ID-only causal recipe) or direct (the same with direct recommendation in the mix)
RUNS=${RUNS:-"yelp_id_causal_direct_only_2400_seed0:0:direct:2400 yelp_id_causal_direct_only_2400_seed1:1:direct:2400
yelp_id_causal_direct_only_2400_seed2:2:direct:2400"}
NUM_PROC=${NUM_PROC:-4}  # preparation processes per run
if [ -z "${LOCAL:-}" ]; then  # the carried wheels; LOCAL=1 uses the packages $PY already has
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .dev/whl/*.whl || exit 1
fi
PYTHONPATH=/tmp/site $PY -m pip install -q --no-deps --no-build-isolation --no-index --no-compile --upgrade --target /tmp/rl . || exit 1
export PYTHONPATH=/tmp/rl:/tmp/site
RL="$PY /tmp/rl/bin/recsys-lightning"
$PY -c "import datasets, jsonargparse, pyarrow, torch, lightning; print('versions', datasets.__version__, jsonargparse.__version__, pyarrow.__version__, torch.__version__, lightning.__version__, torch.cuda.is_available())" || exit 1
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv 2>/dev/null
echo "setup done at $(( $(date +%s) - T0 )) s"

SEQ="--data.tasks '[{name: sequential, options: {max_history: 50, every_window: false, exclude_history: false}, prompts: variants/sequential_id_only_causal.yaml}]'"
MIX="--data.tasks '[{name: sequential, weight: 1.0, options: {max_history: 50, every_window: false, exclude_history: false}, prompts: variants/sequential_id_only_causal.yaml}, {name: direct, weight: 0.3, options: {max_history: 20, train_candidates: 20}, max_eval_requests: 1000}]'"
DIRECT_CFG="--config lightning_configs/quality/id_causal_masking_direct.yaml --config lightning_configs/quality/ablations/id_causal_direct_only.yaml"

chain() {  # name seed kind steps
  local name=$1 seed=$2 kind=$3 steps=$4 R=runs/gpu/$1
  mkdir -p "$R"
  local cfg="--config lightning_configs/quality/yelp_id_only_causal_cpu.yaml"
  [ "$kind" = direct ] && cfg="$cfg $DIRECT_CFG"
  local base="$cfg --data.root .dev/data/yelp --trainer.max_steps $steps --seed_everything $seed --trainer.default_root_dir $R --trainer.logger.init_args.save_dir $R --checkpoint.dirpath $R/checkpoints --data.num_proc $NUM_PROC --data.num_workers 2 $EXTRA"
  local train=""; [ "$kind" = direct ] && train="$MIX"
  local t=$(date +%s)
  eval $RL fit $base $train --trainer.max_time $FIT_TIME > $R.fit.log 2>&1; echo "fit rc=$? $(( $(date +%s) - t )) s" >> $R.times
  local test="$base --data.eval_batch_size 1024 --ckpt_path $R/checkpoints/best.ckpt"
  t=$(date +%s); eval $RL test $test $SEQ --model.score_end false > $R.test_no_end.log 2>&1; echo "test_no_end rc=$? $(( $(date +%s) - t )) s" >> $R.times
  t=$(date +%s); eval $RL test $test $SEQ > $R.test.log 2>&1; echo "test rc=$? $(( $(date +%s) - t )) s" >> $R.times
  if [ "$kind" = direct ]; then
    t=$(date +%s); eval $RL test $test --config lightning_configs/quality/direct_id_only_causal.yaml > $R.test_direct.log 2>&1
    echo "test_direct rc=$? $(( $(date +%s) - t )) s" >> $R.times
  fi
}

pack() {  # logs, metrics and results of every run (no checkpoints) into one archive, replaced atomically
  mkdir -p runs/gpu
  { echo "elapsed $(( $(date +%s) - T0 )) s"; for f in runs/gpu/*.times; do [ -f "$f" ] && echo "== $f" && cat "$f"; done
    for d in runs/gpu/*/logs/version_0; do echo "$d $(tail -n 1 $d/metrics.csv 2>/dev/null | cut -c1-60)"; done
    nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>/dev/null; } > "$OUT/status.txt"
  tar czf "$OUT/.runs.tgz" --exclude='*.ckpt' runs/gpu 2>/dev/null && mv "$OUT/.runs.tgz" "$OUT/runs.tgz"
}

for run in $RUNS; do
  IFS=: read -r name seed kind steps <<< "$run"
  chain "$name" "$seed" "$kind" "$steps" &
done
( while true; do sleep 20; pack; done ) &
PACKER=$!
wait $(jobs -p | grep -v "^$PACKER$") 2>/dev/null
kill $PACKER 2>/dev/null
pack
touch "$OUT/done"; cat "$OUT/status.txt"
for f in runs/gpu/*/logs/version_*/results.json; do echo "$f"; head -c 400 "$f"; echo; done
