#!/usr/bin/env bash
# Stop the single-node Slurm started by scripts/slurm-up.sh: slurmd, slurmctld, then munged, each by the
# pid in its pid file (never by name). Idempotent: does nothing for daemons that are not running.
set -uo pipefail
stop() {
  local name=$1 pf=$2
  [[ -f $pf ]] || return 0
  local pid; pid=$(cat "$pf")
  if kill -0 "$pid" 2>/dev/null; then
    echo "slurm-down: stopping $name (pid $pid)"
    kill "$pid"
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  fi
  rm -f "$pf"
}
stop slurmd /run/slurm/slurmd.pid
stop slurmctld /run/slurm/slurmctld.pid
if [[ ${1:-} == --all ]]; then
  stop munged /run/munge/munged.pid
fi
exit 0
