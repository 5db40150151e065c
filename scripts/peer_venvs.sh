#!/usr/bin/env bash
# The peers benchmarks/peers.py runs beside the project, each in a virtual environment of its own
# (never in the project's requirements): lightly's documented recipes and LightlyTrain.
# They live outside the project's folder (third-party code that the project's own checks must not scan).
# Usage: scripts/peer_venvs.sh [FOLDER]   (default $PEERS_HOME, else ~/.cache/ssl-pretrain-peers; idempotent)
set -euo pipefail
root="${1:-${PEERS_HOME:-$HOME/.cache/ssl-pretrain-peers}}"
python="${PYTHON:-python3}"

make_venv() {  # name, then the packages
  local name="$1"; shift
  local venv="$root/$name"
  if [[ -f "$venv/.installed" ]]; then return; fi
  echo "peer venv $venv: $*"
  "$python" -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  # torch and torchvision as the project pins them: the same kernels on both sides of the comparison.
  "$venv/bin/pip" install -q --no-compile torch==2.14.1 torchvision==0.29.1 "$@"
  touch "$venv/.installed"
}

make_venv lightly lightly==1.6.0
make_venv lightly-train lightly-train==0.18.0
