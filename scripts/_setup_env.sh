# Sourced by scripts/demo and scripts/test: make sure a Python environment with ckpttools exists.
# Creates .venv when no virtual environment is active, installs the pinned CPU torch when torch is
# missing (an open range would pull a multi-GB CUDA build), then ckpttools itself.
#   --with-tests        also the test extras
#   --with-frameworks   also the framework libraries (transformers, accelerate, Lightning, DeepSpeed)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TORCH_PIN="torch==2.13.0"
PY="${PYTHON:-python3}"

if [ -z "${VIRTUAL_ENV:-}" ]; then
  if [ ! -x "$ROOT/.venv/bin/python" ]; then
    echo "creating virtual environment in $ROOT/.venv" >&2
    "$PY" -m venv "$ROOT/.venv"
  fi
  # shellcheck disable=SC1091
  source "$ROOT/.venv/bin/activate"
fi

# pip's own noise about this machine's package mirrors is dropped; its errors still show
pip_quiet() {
  python -m pip install --disable-pip-version-check -q "$@" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

if ! python -c "import torch" >/dev/null 2>&1; then
  echo "installing $TORCH_PIN (CPU)" >&2
  pip_quiet "$TORCH_PIN"
fi
# Every later install keeps the torch that is there: a framework's open range would replace it.
CONSTRAINTS="$(mktemp "${TMPDIR:-/tmp}/ckpttools-constraints.XXXXXX")"
python -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > "$CONSTRAINTS"
extras=()
for arg in "$@"; do
  case "$arg" in
    --with-tests) extras+=(test) ;;
    --with-frameworks) extras+=(frameworks) ;;
  esac
done
spec="$ROOT"
[ ${#extras[@]} -gt 0 ] && spec="$ROOT[$(IFS=,; echo "${extras[*]}")]"
# Always (re)install the project: cheap when everything is there, and it picks up new dependencies.
echo "installing ckpttools${spec#"$ROOT"}" >&2
pip_quiet -c "$CONSTRAINTS" -e "$spec"
rm -f "$CONSTRAINTS"
