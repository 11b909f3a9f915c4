#!/usr/bin/env bash
# Bring up a real single-node Slurm (slurmctld + slurmd + munged) on this host, as root, without
# systemd. Idempotent: re-running with the daemons up only re-checks them. Recipe: shared/SLURM-LOCAL.md.
# cgroup plugins need a systemd/cgroup setup that CI machines lack, so proctrack/linuxproc + task/none.
# The daemons talk over loopback only (SlurmctldHost=host(127.0.0.1), NodeAddr=127.0.0.1).
# Env: SLURM_UP_TIMEOUT (s to wait for the node to become idle, default 60).
set -euo pipefail

if [[ $(id -u) -ne 0 ]]; then
  echo "slurm-up: must run as root (it installs packages and starts daemons)" >&2
  exit 1
fi

log() { echo "slurm-up: $*"; }

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
  log "installing slurm-wlm and munge (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi

# --- munge ---------------------------------------------------------------------------------------
install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
install -d -o munge -g munge -m 0755 /run/munge
if [[ ! -s /etc/munge/munge.key ]]; then
  log "creating /etc/munge/munge.key"
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key

munge_ok() { munge -n 2>/dev/null | unmunge 2>/dev/null | grep -q 'STATUS: *Success'; }
if ! munge_ok; then
  log "starting munged"
  rm -f /run/munge/munged.pid
  su -s /bin/sh munge -c munged
  for _ in $(seq 1 50); do munge_ok && break; sleep 0.1; done
  munge_ok || { echo "slurm-up: munged did not come up (munge -n | unmunge fails)" >&2; exit 1; }
fi

# --- slurm.conf ----------------------------------------------------------------------------------
HOST=$(hostname -s)
CPUS=$(nproc)
# RealMemory a bit under what the machine has, or slurmd marks the node invalid (drained).
MEM_MB=$(awk '/MemTotal/ {printf "%d", $2/1024*0.9}' /proc/meminfo)
install -d /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/slurm
CONF=/etc/slurm/slurm.conf
NEW_CONF=$(cat <<CONF
# Written by nnunet-rs scripts/slurm-up.sh (single-node test cluster; see shared/SLURM-LOCAL.md)
ClusterName=nnunet
SlurmctldHost=${HOST}(127.0.0.1)
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SlurmUser=root
SlurmdUser=root
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
ReturnToService=2
SchedulerType=sched/backfill
# requeued jobs start again without the default hold-off so tests see the resume quickly
JobRequeue=1
KillWait=30
MinJobAge=300
InactiveLimit=0
Waittime=0
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=${HOST} NodeAddr=127.0.0.1 CPUs=${CPUS} RealMemory=${MEM_MB} State=UNKNOWN
PartitionName=debug Nodes=${HOST} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
)
if [[ ! -f $CONF ]] || [[ "$(cat "$CONF")" != "$NEW_CONF" ]]; then
  log "writing $CONF"
  printf '%s\n' "$NEW_CONF" >"$CONF"
  CONF_CHANGED=1
else
  CONF_CHANGED=0
fi

alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

if [[ $CONF_CHANGED == 1 ]]; then
  # a changed config needs a daemon restart; stop what we started before (by pid file)
  for pf in /run/slurm/slurmd.pid /run/slurm/slurmctld.pid; do
    if alive "$pf"; then kill "$(cat "$pf")"; sleep 1; fi
  done
fi

if ! alive /run/slurm/slurmctld.pid; then
  log "starting slurmctld"
  slurmctld
fi
if ! alive /run/slurm/slurmd.pid; then
  log "starting slurmd"
  slurmd
fi

# --- wait for the node ---------------------------------------------------------------------------
TIMEOUT=${SLURM_UP_TIMEOUT:-60}
for _ in $(seq 1 "$TIMEOUT"); do
  state=$(sinfo -h -N -n "$HOST" -o '%t' 2>/dev/null | head -n1 || true)
  case "$state" in
    idle|mix|alloc) log "node $HOST is $state (CPUs=$CPUS RealMemory=${MEM_MB}MB)"; exit 0 ;;
    drain*|down*|inval*|drng)
      # ReturnToService=2 brings a DOWN node back on registration; a drained one needs a resume
      scontrol update NodeName="$HOST" State=RESUME 2>/dev/null || true ;;
  esac
  sleep 1
done
echo "slurm-up: node $HOST not idle after ${TIMEOUT}s (state: ${state:-none}); logs: /var/log/slurm/" >&2
sinfo -N -l >&2 || true
tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
exit 1
