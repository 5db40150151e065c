#!/usr/bin/env bash
# The first GPU machine's check, offline, in one command (under 8 minutes on one H100 is the aim):
#   1. the packages its image lacks, from a wheelhouse built here (scripts/gpu_wheelhouse.sh DIR), into /tmp/site;
#   2. the CUDA tests (tests/training/test_gpu.py);
#   3. python -m benchmarks.gpu_check: 3 steps of each 224-px preset in bf16 at its own batch, and DINO ViT-S/16
#      and BYOL ResNet-50 through the whole pipeline against the step alone.
#
#   benchmarks/gpu_check.sh --wheelhouse .whl            # on the GPU machine
#   benchmarks/gpu_check.sh --dry-run                     # here, on the CPU, with the project's .venv
#
# Its output also goes to $OUT/gpu_check.log when OUT is set (the device tool's folder that comes back).
set -euo pipefail
cd "$(dirname "$0")/.."

wheelhouse="" dry_run=""
while [ $# -gt 0 ]; do
  case "$1" in
    --wheelhouse) wheelhouse="$2"; shift 2 ;;
    --dry-run) dry_run="--dry-run"; shift ;;
    *) echo "usage: $0 [--wheelhouse DIR] [--dry-run]" >&2; exit 2 ;;
  esac
done

python=python3
if [ -n "$dry_run" ] && [ -x .venv/bin/python ]; then python=.venv/bin/python; fi
if [ -n "$wheelhouse" ]; then
  ls "$wheelhouse"/*.whl > /dev/null || { echo "no wheels in $wheelhouse" >&2; exit 2; }
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$wheelhouse"/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1
log=${OUT:+$OUT/gpu_check.log}
log=${log:-/dev/null}

{
  started=$(date +%s)
  "$python" -c "import torch, timm, ray, mlflow, albumentations, pydantic; print('torch', torch.__version__, \
'timm', timm.__version__, 'ray', ray.__version__, 'mlflow', mlflow.__version__, 'cuda', torch.cuda.is_available())"
  "$python" -m pytest -q -p no:cacheprovider tests/training/test_gpu.py
  "$python" -m benchmarks.gpu_check $dry_run
  echo "gpu_check: $(( $(date +%s) - started )) s"
} 2>&1 | tee "$log"
