#!/usr/bin/env bash
# One node, one process per GPU, started by torchrun; Lightning reads torchrun's environment (ranks, world size,
# master address), so --trainer.devices is set to the same process count.
#   lightning_configs/cluster/torchrun.sh <recipe.yaml> [ddp|fsdp2|fsdp] [more CLI flags]
#   NPROC=2 lightning_configs/cluster/torchrun.sh lightning_configs/demo.yaml ddp --trainer.accelerator cpu
# Several nodes: run it on each with NNODES=<n> NODE_RANK=<i> MASTER=<host of rank 0>:29500.
set -euo pipefail
recipe=${1:?usage: torchrun.sh <recipe.yaml> [ddp|fsdp2|fsdp] [CLI flags]}
strategy=${2:-ddp}
shift $(( $# > 1 ? 2 : 1 ))
nproc=${NPROC:-$(nvidia-smi -L 2>/dev/null | wc -l)}
nproc=$(( nproc > 0 ? nproc : 1 ))
nnodes=${NNODES:-1}
if [ "$nnodes" -gt 1 ]; then
  rendezvous=(--nnodes "$nnodes" --node_rank "${NODE_RANK:?set NODE_RANK}" --rdzv_backend c10d
              --rdzv_endpoint "${MASTER:?set MASTER=host:port}")
else
  rendezvous=(--standalone)
fi
exec torchrun "${rendezvous[@]}" --nproc_per_node "$nproc" -m recsys_lightning.cli fit \
  --config "$recipe" --config "lightning_configs/strategy/$strategy.yaml" \
  --trainer.num_nodes "$nnodes" --trainer.devices "$nproc" "$@"
