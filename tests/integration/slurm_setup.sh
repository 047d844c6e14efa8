#!/usr/bin/env bash
# A real one-node SLURM cluster for the integration tests: Debian's slurmctld, slurmd and munge,
# installed when missing, configured under STATE_DIR and started as root; no cgroups needed
# (ProctrackType=proctrack/linuxproc, TaskPlugin=task/none).
#
#   tests/integration/slurm_setup.sh start /tmp/ee-slurm     # install, configure, start, wait idle
#   export SLURM_CONF=/tmp/ee-slurm/slurm.conf                # point sbatch, srun, sinfo at it
#   sbatch --ntasks=2 launch/slurm/train.sbatch model=mlp data=digits max_steps=20
#   tests/integration/slurm_setup.sh stop /tmp/ee-slurm      # cancel its jobs, stop the daemons
#
# Environment: SLURM_TEST_CPUS (node CPUs, default: all online CPUs), SLURM_TEST_CTLD_PORT and
# SLURM_TEST_SLURMD_PORT (default 6817 and 6818), SLURM_TEST_KILL_WAIT (seconds between SIGTERM
# and SIGKILL when a job ends, default 30). The daemons' pids are in STATE_DIR/*.pid; `stop`
# kills those pids and nothing else.
set -euo pipefail

usage() {
    echo "usage: $0 start|stop STATE_DIR" >&2
    exit 2
}

[[ $# -eq 2 ]] || usage
action=$1
state=$2
case $action in start | stop) ;; *) usage ;; esac
if [[ $(id -u) -ne 0 ]]; then
    echo "$0: must run as root (slurmd starts jobs as their owner)" >&2
    exit 1
fi

host=$(hostname -s)
packages=(slurmctld slurmd slurm-client munge)

install_missing() {
    local missing=()
    for pkg in "${packages[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
    done
    [[ ${#missing[@]} -eq 0 ]] && return
    echo "installing ${missing[*]}"
    # no service may start on its own: the daemons here are the ones this script starts
    local policy=/usr/sbin/policy-rc.d made_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod +x "$policy"
        made_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends "${missing[@]}" >"$state/apt.log" 2>&1 ||
        { apt-get update -q >>"$state/apt.log" 2>&1 &&
            apt-get install -y -q --no-install-recommends "${missing[@]}" >>"$state/apt.log" 2>&1; } ||
        { tail -20 "$state/apt.log" >&2; echo "$0: apt-get install ${missing[*]} failed" >&2; exit 1; }
    if [[ $made_policy -eq 1 ]]; then rm -f "$policy"; fi
}

write_config() {
    mkdir -p "$state/ctld" "$state/slurmd" "$state/munge"
    chmod 700 "$state/munge"
    if [[ ! -s $state/munge/munge.key ]]; then
        dd if=/dev/urandom of="$state/munge/munge.key" bs=1024 count=1 status=none
        chmod 400 "$state/munge/munge.key"
    fi
    local cpus=${SLURM_TEST_CPUS:-$(getconf _NPROCESSORS_ONLN)}
    local memory_mb
    memory_mb=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
    cat >"$state/slurm.conf" <<EOF
# one-node test cluster written by $0
ClusterName=elastic-entropy-test
SlurmctldHost=$host
SlurmctldPort=${SLURM_TEST_CTLD_PORT:-6817}
SlurmdPort=${SLURM_TEST_SLURMD_PORT:-6818}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$state/munge/munge.socket,cred_expire=${SLURM_TEST_CRED_EXPIRE:-5}
CredType=cred/munge
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/slurmd
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=$state/slurmctld.log
SlurmdLogFile=$state/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
SlurmdTimeout=60
KillWait=${SLURM_TEST_KILL_WAIT:-30}
MinJobAge=600
NodeName=$host CPUs=$cpus RealMemory=$memory_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

pid_alive() {
    [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

start() {
    mkdir -p "$state"
    install_missing
    write_config
    export SLURM_CONF=$state/slurm.conf
    if ! pid_alive "$state/munged.pid"; then
        # --force: munged refuses root and /tmp's permissions otherwise; the key is ours alone
        /usr/sbin/munged --force --socket="$state/munge/munge.socket" \
            --key-file="$state/munge/munge.key" --pid-file="$state/munged.pid" \
            --log-file="$state/munged.log" --seed-file="$state/munge/munged.seed"
    fi
    pid_alive "$state/slurmctld.pid" || /usr/sbin/slurmctld -f "$SLURM_CONF"
    pid_alive "$state/slurmd.pid" || /usr/sbin/slurmd -f "$SLURM_CONF"
    local node_state=""
    for _ in $(seq 120); do
        node_state=$(sinfo -h -n "$host" -o %t 2>/dev/null || true)
        if [[ $node_state == idle ]]; then
            echo "slurm is up: node $host idle (SLURM_CONF=$SLURM_CONF)"
            return
        fi
        sleep 0.5
    done
    echo "$0: node $host is not idle after 60 s (state: '${node_state}'); logs in $state" >&2
    tail -5 "$state/slurmctld.log" "$state/slurmd.log" >&2 || true
    exit 1
}

stop() {
    export SLURM_CONF=$state/slurm.conf
    if pid_alive "$state/slurmctld.pid"; then
        # a job left running would outlive slurmd (slurmstepd is its own process)
        scancel --full --quiet "--partition=debug" 2>/dev/null || true
        for _ in $(seq 40); do
            [[ -z $(squeue -h -t running,completing -o %i 2>/dev/null) ]] && break
            sleep 0.5
        done
    fi
    local pids=()
    for name in slurmd slurmctld munged; do
        if pid_alive "$state/$name.pid"; then
            pids+=("$(cat "$state/$name.pid")")
            kill "$(cat "$state/$name.pid")"
        fi
    done
    for pid in "${pids[@]}"; do
        for _ in $(seq 40); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.25
        done
        if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid"; fi
    done
    echo "slurm stopped (${#pids[@]} daemon(s))"
}

"$action"
