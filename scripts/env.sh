# Source this to build against the project venv's torch: `. scripts/env.sh`
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${LIBTORCH:-}" ]]; then
  export LIBTORCH_USE_PYTORCH=1
  export PATH="$_root/.venv/bin:$PATH"
fi
unset _root
