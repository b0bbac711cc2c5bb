#!/usr/bin/env bash
# A one-node Slurm cluster on 127.0.0.1 for saelabel's scheduler test: munged, slurmctld and slurmd
# run as root from Debian's packages (Tools/install_deps.sh --slurm), with every file in one folder.
#   Tools/slurm_cluster.sh start DIR   start the daemons and wait until the node is idle
#   Tools/slurm_cluster.sh stop DIR    stop them by their PIDs
# Then `export SLURM_CONF=DIR/slurm.conf` makes sbatch, squeue and sinfo talk to this cluster.
# No cgroups are needed: process tracking and task binding use the plain Linux plugins.
set -euo pipefail

command="${1:-}"
dir="${2:-}"
if [ -z "$command" ] || [ -z "$dir" ]; then
  echo "usage: Tools/slurm_cluster.sh start|stop DIR" >&2
  exit 2
fi
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
export SLURM_CONF="$dir/slurm.conf"

stop_pidfile() {
  local pidfile="$1"
  [ -f "$pidfile" ] || return 0
  local pid
  pid="$(cat "$pidfile")"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$pidfile"
}

case "$command" in
  start)
    for daemon in munged slurmctld slurmd sbatch; do
      command -v "$daemon" >/dev/null || { echo "$daemon not found: run Tools/install_deps.sh --slurm" >&2; exit 2; }
    done
    mkdir -p "$dir/munge" "$dir/state" "$dir/spool" "$dir/log"
    chmod 711 "$dir/munge"
    if [ ! -f "$dir/munge/munge.key" ]; then
      head -c 1024 /dev/urandom >"$dir/munge/munge.key"
      chmod 400 "$dir/munge/munge.key"
    fi
    munged --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
      --pid-file="$dir/munge/munged.pid" --log-file="$dir/munge/munged.log" --seed-file="$dir/munge/seed"
    node="$(hostname -s)"
    cpus="$(nproc)"
    # Ports away from Slurm's defaults, so a real installation on the machine is left alone.
    cat >"$SLURM_CONF" <<EOF
ClusterName=saelabel-test
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=16817
SlurmdPort=16818
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=2000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    slurmctld
    slurmd
    for _ in $(seq 1 60); do
      if sinfo -h -o '%T' 2>/dev/null | grep -qx idle; then
        echo "Slurm answering: one node ($node, $cpus CPUs), config $SLURM_CONF"
        exit 0
      fi
      sleep 1
    done
    echo "Slurm did not come up; last lines of its logs:" >&2
    tail -5 "$dir/log/slurmctld.log" "$dir/log/slurmd.log" >&2 || true
    exit 1
    ;;
  stop)
    stop_pidfile "$dir/slurmd.pid"
    stop_pidfile "$dir/slurmctld.pid"
    stop_pidfile "$dir/munge/munged.pid"
    ;;
  *)
    echo "usage: Tools/slurm_cluster.sh start|stop DIR" >&2
    exit 2
    ;;
esac
