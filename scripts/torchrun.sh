#!/bin/bash
# DDP started by torchrun (torch.distributed.run): one process per device on this node; Lightning's
# TorchElasticEnvironment joins them (torchrun sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT).
# All ranks share one run dir: outputs/<recipe>/torchrun-<rendezvous id> (conf/hydra/default.yaml).
#
#   scripts/torchrun.sh recipe=baseline                          # every GPU of this node (trainer=ddp)
#   NPROC=2 scripts/torchrun.sh trainer=ddp_sim                  # 2 CPU processes (gloo), no GPU needed
#   NNODES=2 RDZV_ENDPOINT=host0:29400 RDZV_ID=job42 scripts/torchrun.sh      # the same on each node
# Arguments are Hydra overrides for recipes.train; without a trainer=... override the preset is trainer=ddp.

# Stop at the first failing command or unset variable.
set -euo pipefail

# Python with the project installed (`pip install -e .`).
PYTHON="${PYTHON:-python}"
# Processes on this node: "gpu" is one per visible CUDA device; a number for CPU runs (trainer=ddp_sim).
NPROC="${NPROC:-gpu}"
# Nodes taking part; 1 uses a private rendezvous on this machine (--standalone).
NNODES="${NNODES:-1}"

# trainer=ddp unless the caller picked a trainer preset.
TRAINER=(trainer=ddp)
for arg in "$@"; do
    [[ "$arg" == trainer=* ]] && TRAINER=()
done

if [[ "$NNODES" == 1 ]]; then
    # One node: a fresh rendezvous id (a uuid) per launch names the run dir.
    RDZV=(--standalone)
else
    # Many nodes: every node runs this script with the same endpoint (host:port of node 0) and id
    # (c10d rendezvous numbers the nodes); the id names the run dir, so make it job-stable (a job id).
    RDZV=(--nnodes="$NNODES" --rdzv-backend=c10d --rdzv-endpoint="${RDZV_ENDPOINT:?set RDZV_ENDPOINT=host:port of node 0}"
          --rdzv-id="${RDZV_ID:?set RDZV_ID to a job-stable id}")
    TRAINER+=(trainer.num_nodes="$NNODES")
fi

# Lightning checks that devices x num_nodes equals torchrun's world size.
exec "$PYTHON" -m torch.distributed.run "${RDZV[@]}" --nproc_per_node="$NPROC" -m recipes.train "${TRAINER[@]}" "$@"
