#!/usr/bin/env bash
# Makes sure the Fashion-MNIST IDX files exist (Debian package dataset-fashion-mnist); says what to do where it can't.
set -euo pipefail
DIR=/usr/share/datasets/fashion-mnist
[ -f "$DIR/train-images-idx3-ubyte.gz" ] && exit 0
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "installing the Fashion-MNIST Debian package (dataset-fashion-mnist, 30 MB)..."
  apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null
  [ -f "$DIR/train-images-idx3-ubyte.gz" ] && exit 0
fi
cat >&2 <<MSG
Fashion-MNIST is not installed at $DIR and could not be installed here (needs Debian's apt-get as root).
Either: sudo apt-get install dataset-fashion-mnist
Or: download train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and
t10k-labels-idx1-ubyte.gz into a folder, then run
  .venv/bin/python -m pipelines.ingest fashion-mnist --source THAT_FOLDER --out data/fashion_mnist
and run make again.
MSG
exit 1
