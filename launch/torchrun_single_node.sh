#!/usr/bin/env bash
# torchrun on one node (--standalone): EE_NPROC processes, one per GPU (NCCL) or CPU processes
# (gloo), each holding cluster.replicas_per_process replicas: replicas = processes x that.
#
#   launch/torchrun_single_node.sh                     # one process per GPU, 4 Parle replicas each
#   EE_NPROC=2 launch/torchrun_single_node.sh cluster.replicas_per_process=2 model=mlp data=digits max_steps=50
#   EE_NPROC=8 EE_MAX_RESTARTS=3 launch/torchrun_single_node.sh cluster.replicas_per_process=1
#
# The second line is CPU-sized (2 processes x 2 replicas, gloo, seconds on a laptop). Arguments are
# Hydra overrides for the app (the last value of a key wins, so hydra.run.dir=... replaces ours).
# Environment:
#   EE_NPROC         processes (default: the number of visible GPUs, else 1)
#   EE_MAX_RESTARTS  how often torchrun restarts failed workers; they resume from the run
#                    directory's last checkpoint (default 0)
#   EE_RUN_DIR       run directory, fixed here so that restarts resume in it
#                    (default outputs/torchrun/DATE/TIME)
#   EE_PYTHON        the Python that has elastic_entropy installed (default python3)
set -euo pipefail

die() {
    echo "$(basename "$0"): error: $*" >&2
    exit 2
}

python=${EE_PYTHON:-python3}
command -v "$python" >/dev/null || die "EE_PYTHON=$python is not a command; set EE_PYTHON to the Python that has elastic_entropy"
if [[ -z ${EE_NPROC:-} ]]; then
    # torch counts what CUDA_VISIBLE_DEVICES leaves visible
    EE_NPROC=$("$python" -c 'import torch; print(torch.cuda.device_count() or 1)')
fi
[[ $EE_NPROC =~ ^[1-9][0-9]*$ ]] || die "EE_NPROC=$EE_NPROC must be a number of processes >= 1"
max_restarts=${EE_MAX_RESTARTS:-0}
[[ $max_restarts =~ ^[0-9]+$ ]] || die "EE_MAX_RESTARTS=$max_restarts must be a number >= 0"
run_dir=${EE_RUN_DIR:-outputs/torchrun/$(date +%Y-%m-%d/%H-%M-%S-%6N)}

# a dead peer or a NCCL error ends the process (torchrun then restarts the group) instead of hanging
export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}

exec "$python" -m torch.distributed.run --standalone --nproc-per-node="$EE_NPROC" \
    --max-restarts="$max_restarts" -m elastic_entropy.train "hydra.run.dir=$run_dir" "$@"
