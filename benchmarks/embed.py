"""Embedding throughput: Ray Data batch inference (1 and 2 actors) against the calling process over the same
images, and the peak memory of each, in one run.

    .venv/bin/python -m benchmarks.embed --weights runs/NAME/checkpoint_.../ [--data data/fashion_mnist]

In process: `embed_split(..., in_process=True)`, what a split under `IN_PROCESS_BYTES` on one CPU-only machine
gets (the split's stored rows read whole, decoded and embedded a batch at a time, one Parquet file). Each variant
runs in a fresh process.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, sys, time
from benchmarks.memory import own_peak_mb, ray_worker_peak_mb
kind, weights, data, split, out = sys.argv[1:6]
import pyarrow.parquet as pq
from pathlib import Path
from pipelines.evaluation.embeddings import embed_split
if kind != "in_process":
    from pipelines.cluster.start import start_ray
    start_ray()
started = time.time()  # Ray's start-up not counted: a cluster is already up
folder = embed_split(weights, data, split, out, actors=int(kind.split("_")[-1]) if kind != "in_process" else 1,
                     in_process=kind == "in_process")
count = sum(pq.ParquetFile(path).metadata.num_rows for path in Path(folder).glob("*.parquet"))  # not read back
print(json.dumps({"images": count, "seconds": time.time() - started, "driver_mb": own_peak_mb(),
                  "worker_mb": ray_worker_peak_mb()}))
"""


def measure(kind: str, weights: str, data: str, split: str, out: str) -> dict:
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    result = subprocess.run([sys.executable, "-c", CHILD, kind, weights, data, split, out], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=3600)
    if result.returncode != 0:
        raise RuntimeError(f"{kind} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--data", default=str(ROOT / "data" / "fashion_mnist"))
    parser.add_argument("--split", default="test")
    args = parser.parse_args()
    print(f"{'embedding':22} {'images':>7} {'s':>7} {'img/s':>7} {'driver MB':>10} {'worker MB':>10}", flush=True)
    with tempfile.TemporaryDirectory() as out:
        for kind in ("in_process", "ray_data_1", "ray_data_2"):
            row = measure(kind, args.weights, args.data, args.split, f"{out}/{kind}")
            print(f"{kind:22} {row['images']:>7} {row['seconds']:>7.1f} {row['images'] / row['seconds']:>7.0f} "
                  f"{row['driver_mb']:>10.0f} {row['worker_mb']:>10.0f}", flush=True)


if __name__ == "__main__":
    main()
