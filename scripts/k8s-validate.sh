#!/usr/bin/env bash
# Offline checks of the Kubernetes manifests and the container images (no cluster, no Docker):
#  1. renders deploy/k8s (render.py: default values, a CPU variant, and every cluster knob set) into
#     .venv-deploy/rendered/,
#  2. validates them strictly against the Kubernetes 1.33 and 1.37 schemas that PyPI's
#     kubernetes-validate ships (no network needed at validation time; the ServiceMonitor, a CRD, is
#     validated by tests/deploy/test_k8s.py against its own strict schema),
#  3. runs tests/deploy/test_k8s.py (schema + invariants + knobs), tests/deploy/test_monitoring.py (the
#     Grafana dashboard) and tests/deploy/test_docker.py (hadolint, consistency with the CI build,
#     the Apptainer definition, shellcheck of the deploy scripts) with pytest.
# Self-installing and idempotent: a venv at .venv-deploy (git-ignored) and shellcheck from apt.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v shellcheck >/dev/null; then
  echo "k8s-validate: installing shellcheck (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq shellcheck >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq shellcheck >/dev/null; }
fi
# shellcheck source=tests/deploy/venv.sh
source tests/deploy/venv.sh

out=$DEPLOY_VENV/rendered
mkdir -p "$out"
"$DEPLOY_PY" deploy/k8s/render.py -o "$out/nnunet-gpu.yaml"
"$DEPLOY_PY" deploy/k8s/render.py --set gpus_per_worker=0 --set workers=2 -o "$out/nnunet-cpu.yaml"
"$DEPLOY_PY" deploy/k8s/render.py --set worker_node_selector=nvidia.com/gpu.present=true \
  --set worker_tolerations=dedicated=gpu:NoSchedule --set coordinator_tolerations=infra:NoSchedule \
  --set 'worker_affinity={"podAntiAffinity":{"preferredDuringSchedulingIgnoredDuringExecution":[{"weight":100,"podAffinityTerm":{"topologyKey":"kubernetes.io/hostname","labelSelector":{"matchLabels":{"app.kubernetes.io/component":"worker"}}}}]}}' \
  --set coordinator_node_selector=node-role.kubernetes.io/infra= --set runtime_class=nvidia \
  --set priority_class=batch-low --set coordinator_priority_class=batch-high --set queue_name=team-a \
  --set storage_access_mode=ReadWriteMany --set grafana_dashboard=1 --set tls=1 -o "$out/nnunet-knobs.yaml"
for v in 1.33.0 1.37.0; do
  "$DEPLOY_VENV/bin/kubernetes-validate" --strict --quiet -k "$v" "$out/nnunet-gpu.yaml" "$out/nnunet-cpu.yaml" "$out/nnunet-knobs.yaml"
  echo "k8s-validate: rendered manifests valid against Kubernetes $v (strict)"
done
"$DEPLOY_VENV/bin/pytest" -q -p no:cacheprovider tests/deploy/test_k8s.py tests/deploy/test_monitoring.py tests/deploy/test_docker.py
