#!/usr/bin/env bash
# Every benchmark with a GPU side, on one GPU, in one go (a few minutes on an H100/H200):
#   bash benchmarks/gpu_check.sh [OUT]        (default OUT: benchmarks/results/gpu)
# The optimizer step, fused (Triton) and eager (and the memory per replica of SGD, Parle and DDP:
# torch.cuda's peak) and the replicas-per-GPU comparison (1 replica, 4 plain, 4 in one CUDA graph)
# run on the GPU; throughput runs the app on the GPU (1x1 and 1x4: NCCL refuses two ranks on one
# GPU, so one GPU means one process), then WRN-16-4 at batch 128 in short runs: fp32 (the fused
# step) against the eager step, precision=bf16, channels_last=true, compile=true and
# cluster.cuda_graphs=on (a variant that fails says so in its
# row, the others still run); the bytes per sample and the exposed communication are counted over
# gloo. The CUDA tests run first (pip install -e '.[dev]' for pytest). Prints every
# ratio line at the end, one table.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-benchmarks/results/gpu}
python3 -c "import torch, sys; torch.cuda.is_available() or sys.exit('gpu_check.sh: CUDA is not available here; run it on a machine with a GPU')"
mkdir -p "$out"
# first hold the CUDA-graph path and the fused step to the plain ones: a fast wrong step is not
# worth timing (in one process, with or without pytest-xdist: the suite's addopts are dropped)
python3 -m pytest -q -p no:cacheprovider -o addopts= tests/unit/test_cuda_graphs.py tests/unit/test_fused.py
python3 -m benchmarks.optimizer_step --device cuda --out "$out"
python3 -m benchmarks.replicas_per_device --device cuda --out "$out"
python3 -m benchmarks.throughput --device cuda --steps 200 --out "$out"
python3 -m benchmarks.communication --steps 20 --out "$out"
python3 -m benchmarks.exposed_comm --quick --out "$out"
echo "== ratio lines ($(python3 -c 'import torch; print(torch.cuda.get_device_name(0))')) =="
for name in optimizer_step replicas_per_device throughput communication exposed_comm; do
  python3 -c "import json, sys; d = json.load(open(sys.argv[1])); print(f'{sys.argv[2]:<22}', ' '.join(f'{k}={v:.3f}' for k, v in d['ratios'].items()))" "$out/$name.json" "$name"
done
