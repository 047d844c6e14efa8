#!/bin/sh
# Build step of docker/Dockerfile: makes sure the image has Python >= 3.10 and torch.
# A PyTorch base image already has both (nothing to do); debian:bookworm-slim or an NVIDIA CUDA
# base gets Python from apt and torch (TORCH_SPEC, from TORCH_INDEX_URL and the local wheels in
# /tmp/wheels) in the virtual environment /opt/venv, which the image puts first on the PATH.
#   TORCH_SPEC=torch TORCH_INDEX_URL=auto sh install-torch.sh
set -eu

if ! command -v python3 >/dev/null 2>&1 || ! python3 -c "import venv, ensurepip" 2>/dev/null; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-venv ca-certificates
    rm -rf /var/lib/apt/lists/*
fi
# pip trusts the system's CA store, as apt does, with any CA the base image brings (a proxy's)
if [ -f /etc/ssl/certs/ca-certificates.crt ] && [ ! -e /etc/pip.conf ]; then
    printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >/etc/pip.conf
fi
if python3 -c "import torch" 2>/dev/null; then
    python3 -c "import sys, torch; print(f'torch {torch.__version__} from the base image, Python {sys.version.split()[0]}')"
    exit 0
fi
python3 -c "import sys; sys.exit(0 if sys.version_info >= (3, 10) else 'elastic_entropy needs Python >= 3.10; this base has ' + sys.version.split()[0])"
python3 -m venv /opt/venv
# TORCH_INDEX_URL=auto: PyTorch's CPU wheels on a base without CUDA (PyPI's torch is a multi-GB
# CUDA build), PyPI on a CUDA base (NVIDIA's images set CUDA_VERSION); empty: PyPI and the wheels
index=${TORCH_INDEX_URL:-}
if [ "$index" = auto ]; then
    if [ -z "${CUDA_VERSION:-}" ]; then index=https://download.pytorch.org/whl/cpu; else index=; fi
fi
set -- --no-cache-dir --find-links /tmp/wheels
if [ -n "$index" ]; then set -- "$@" --extra-index-url "$index"; fi
/opt/venv/bin/pip install "$@" "${TORCH_SPEC:-torch}"
