#!/usr/bin/env bash
# Podman ready to build docker/Dockerfile on a machine with no Docker engine and no registry:
# installs Debian's podman, runc and debootstrap when missing, writes a containers.conf (runc, not
# crun, for this machine's hybrid cgroups; raised default ulimits), and builds the base image
# docker.io/library/debian:bookworm-slim locally (debootstrap --variant=minbase + podman import,
# the host's extra CA certificates copied in) unless podman already has it: the cache between runs.
#
#   tests/integration/podman_setup.sh /tmp/ee-podman         # prints the CONTAINERS_CONF to export
#   export CONTAINERS_CONF=/tmp/ee-podman/containers.conf
#   pip download torch==2.13.0 --no-deps -d docker/wheels     # the CPU wheel, from the host
#   podman build --network=host -f docker/Dockerfile --build-arg TORCH_SPEC=torch==2.13.0 --build-arg TORCH_INDEX_URL= -t elastic-entropy:cpu .
#   podman run --rm --network=host elastic-entropy:cpu model=mlp data=digits max_steps=50
#
# Environment: EE_DEBIAN_MIRROR (default http://deb.debian.org/debian), EE_REBUILD_BASE=1 to build
# the base image again.
set -euo pipefail

[[ $# -eq 1 ]] || { echo "usage: $0 STATE_DIR" >&2; exit 2; }
state=$1
if [[ $(id -u) -ne 0 ]]; then
    echo "$0: must run as root (debootstrap, and podman without user namespaces)" >&2
    exit 1
fi
mkdir -p "$state"
base_image=docker.io/library/debian:bookworm-slim
mirror=${EE_DEBIAN_MIRROR:-http://deb.debian.org/debian}

missing=()
for pkg in podman runc debootstrap; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    echo "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends "${missing[@]}" >"$state/apt.log" 2>&1 ||
        { apt-get update -q >>"$state/apt.log" 2>&1 &&
            apt-get install -y -q --no-install-recommends "${missing[@]}" >>"$state/apt.log" 2>&1; } ||
        { tail -20 "$state/apt.log" >&2; echo "$0: apt-get install ${missing[*]} failed" >&2; exit 1; }
fi

cat >"$state/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
export CONTAINERS_CONF=$state/containers.conf

if [[ ${EE_REBUILD_BASE:-0} != 1 ]] && podman image exists "$base_image"; then
    echo "base image $base_image: cached"
else
    root=$state/bookworm-rootfs
    rm -rf "$root"
    echo "building $base_image with debootstrap (a minute or two)"
    debootstrap --variant=minbase bookworm "$root" "$mirror" >"$state/debootstrap.log" 2>&1 ||
        { tail -20 "$state/debootstrap.log" >&2; echo "$0: debootstrap failed" >&2; exit 1; }
    # pip's HTTPS may go through a proxy that only the host's extra CAs vouch for
    mkdir -p "$root/usr/local/share/ca-certificates"
    if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
        cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
    fi
    # what debian:bookworm-slim has and minbase does not: no caches, no docs
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -c . | podman import --change 'CMD ["bash"]' - "$base_image" \
        >"$state/import.log" 2>&1 || { cat "$state/import.log" >&2; exit 1; }
    rm -rf "$root"
    echo "base image $base_image: built"
fi
echo "CONTAINERS_CONF=$CONTAINERS_CONF"
