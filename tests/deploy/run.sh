#!/usr/bin/env bash
# All deployment tests: the offline Kubernetes/Docker/Apptainer/Grafana checks (scripts/k8s-validate.sh,
# pytest), the pods' commands run as local processes with the dashboard checked against the live
# /metrics (tests/deploy/test_k8s_pods.py), and the Slurm tests (gang job, its preemption, the job
# array and an array task's preemption) on a real single-node Slurm (scripts/slurm-up.sh,
# tests/deploy/test_slurm.sh, then scripts/slurm-down.sh). Needs root (apt-get, Slurm daemons) and the release or debug binaries.
# Exit code 0 iff everything passed.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
rc=0
echo "== deploy: Kubernetes manifests and Dockerfiles (offline)"
bash scripts/k8s-validate.sh || rc=1
echo "== deploy: the Kubernetes pods' commands as local processes (real binaries)"
"${DEPLOY_VENV:-.venv-deploy}/bin/pytest" -q -p no:cacheprovider tests/deploy/test_k8s_pods.py || rc=1
echo "== deploy: Slurm"
if bash scripts/slurm-up.sh; then
  bash tests/deploy/test_slurm.sh || rc=1
  bash scripts/slurm-down.sh
else
  echo "deploy: scripts/slurm-up.sh failed" >&2
  rc=1
fi
exit $rc
