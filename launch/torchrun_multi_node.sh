#!/usr/bin/env bash
# torchrun on several nodes with c10d rendezvous: run the same command on every node; they meet
# at EE_RDZV_ENDPOINT (host:port of any one node, usually the first). Restarts (EE_MAX_RESTARTS)
# resume from the last checkpoint in the run directory, which must be on a shared filesystem.
#
#   EE_NNODES=2 EE_NPROC=8 EE_RDZV_ENDPOINT=node0:29400 EE_RDZV_ID=parle-1 launch/torchrun_multi_node.sh
#   EE_NNODES=1 EE_NPROC=2 EE_RDZV_ENDPOINT=127.0.0.1:29400 EE_RDZV_ID=cpu-try launch/torchrun_multi_node.sh cluster.replicas_per_process=2 model=mlp data=digits max_steps=50
#
# The second line is CPU-sized: one node, 2 processes x 2 replicas over gloo. Arguments are Hydra
# overrides for the app (the last value of a key wins, so hydra.run.dir=... replaces ours).
# Environment:
#   EE_NNODES         nodes (required)
#   EE_RDZV_ENDPOINT  host:port where the nodes meet, reachable from all of them (required)
#   EE_RDZV_ID        a name shared by the nodes of one job, unique per job (default SLURM_JOB_ID)
#   EE_NPROC          processes per node (default: the number of visible GPUs, else 1)
#   EE_MAX_RESTARTS   how often torchrun restarts the workers after a failure (default 3)
#   EE_RUN_DIR        run directory, the same on every node (default outputs/torchrun/EE_RDZV_ID)
#   EE_PYTHON         the Python that has elastic_entropy installed (default python3)
set -euo pipefail

die() {
    echo "$(basename "$0"): error: $*" >&2
    exit 2
}

python=${EE_PYTHON:-python3}
command -v "$python" >/dev/null || die "EE_PYTHON=$python is not a command; set EE_PYTHON to the Python that has elastic_entropy"
nnodes=${EE_NNODES:-}
[[ $nnodes =~ ^[1-9][0-9]*$ ]] || die "EE_NNODES='$nnodes' must be the number of nodes (>= 1)"
endpoint=${EE_RDZV_ENDPOINT:-}
[[ $endpoint =~ ^[^:]+:[0-9]+$ ]] || die "EE_RDZV_ENDPOINT='$endpoint' must be host:port of the node where all nodes meet, e.g. node0:29400"
rdzv_id=${EE_RDZV_ID:-${SLURM_JOB_ID:-}}
[[ -n $rdzv_id ]] || die "set EE_RDZV_ID to a name shared by all nodes of this job (it also names the run directory)"
if [[ -z ${EE_NPROC:-} ]]; then
    EE_NPROC=$("$python" -c 'import torch; print(torch.cuda.device_count() or 1)')
fi
[[ $EE_NPROC =~ ^[1-9][0-9]*$ ]] || die "EE_NPROC=$EE_NPROC must be a number of processes per node >= 1"
max_restarts=${EE_MAX_RESTARTS:-3}
[[ $max_restarts =~ ^[0-9]+$ ]] || die "EE_MAX_RESTARTS=$max_restarts must be a number >= 0"
# rank 0 may land on another node after a restart: the run directory must not depend on the node
run_dir=${EE_RUN_DIR:-outputs/torchrun/$rdzv_id}

export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}
# a fresh store on every restart (rank 0 hosts it): torchrun's shared one keeps the dead attempt's
# gloo addresses, and restarted workers connecting to them fail ("Connection refused")
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=${TORCH_DISABLE_SHARE_RDZV_TCP_STORE:-1}

exec "$python" -m torch.distributed.run --nnodes="$nnodes" --nproc-per-node="$EE_NPROC" \
    --rdzv-backend=c10d --rdzv-endpoint="$endpoint" --rdzv-id="$rdzv_id" \
    --max-restarts="$max_restarts" -m elastic_entropy.train "hydra.run.dir=$run_dir" "$@"
