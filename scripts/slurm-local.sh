#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for tests and CI: munge, slurmctld, slurmd.
#
#   scripts/slurm-local.sh up       # install (Debian's slurm-wlm, munge) if missing, configure, start
#   scripts/slurm-local.sh status   # exit 0 when the node takes jobs
#   scripts/slurm-local.sh down     # stop the daemons
#
# Runs as root. Every daemon binds to 127.0.0.1. The node declares SLURM_LOCAL_CPUS CPUs
# (default 8, more than most test machines have) so that several one-CPU trials run at once.
set -euo pipefail

STATE_DIR=${SLURM_LOCAL_DIR:-/var/lib/sweeplab-slurm}
SLURM_CONF=/etc/slurm/slurm.conf
CPUS=${SLURM_LOCAL_CPUS:-8}
NODE=$(hostname -s)

say() { echo "slurm-local: $*" >&2; }

install_packages() {
    command -v slurmctld >/dev/null && command -v munged >/dev/null && return
    say "installing slurm-wlm and munge from Debian"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
}

write_config() {
    mkdir -p "$STATE_DIR/ctld" "$STATE_DIR/d" /etc/slurm
    local mem_mb
    mem_mb=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
    cat >"$SLURM_CONF" <<EOF
# Written by sweeplab's scripts/slurm-local.sh: one node, everything on 127.0.0.1.
ClusterName=sweeplab
SlurmctldHost=$NODE(127.0.0.1)
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SlurmdParameters=config_overrides
SchedulerType=sched/backfill
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
KillWait=10
StateSaveLocation=$STATE_DIR/ctld
SlurmdSpoolDir=$STATE_DIR/d
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/slurmd.pid
SlurmctldLogFile=$STATE_DIR/slurmctld.log
SlurmdLogFile=$STATE_DIR/slurmd.log
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munge() {
    pgrep -x munged >/dev/null && return
    if [[ ! -s /etc/munge/munge.key ]]; then
        dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
    fi
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    runuser -u munge -- /usr/sbin/munged
}

node_ready() {
    scontrol ping 2>/dev/null | grep -q UP &&
        sinfo -h -n "$NODE" -o %t 2>/dev/null | grep -Eq '^(idle|mix|alloc)'
}

up() {
    install_packages
    start_munge
    if ! pgrep -x slurmctld >/dev/null; then
        write_config
        slurmctld
    fi
    pgrep -x slurmd >/dev/null || slurmd
    for _ in $(seq 60); do
        node_ready && { say "up: node $NODE, $(sinfo -h -o '%c CPUs, %m MB')"; return; }
        pgrep -x slurmctld >/dev/null && pgrep -x slurmd >/dev/null || break
        scontrol update nodename="$NODE" state=resume 2>/dev/null || true
        sleep 1
    done
    say "error: the node did not become ready; see $STATE_DIR/slurmctld.log and slurmd.log"
    exit 1
}

down() {
    local pidfile pid
    for pidfile in "$STATE_DIR/slurmd.pid" "$STATE_DIR/slurmctld.pid"; do
        [[ -s $pidfile ]] || continue
        pid=$(cat "$pidfile")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 60); do  # slurmctld saves its state before it exits
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.5
        done
        rm -f "$pidfile"
    done
    say "down"
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) node_ready && say "up" || { say "down"; exit 1; } ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
