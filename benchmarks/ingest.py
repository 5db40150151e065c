"""Folder ingest: the streaming Ray Data job against an earlier ingest, in one run.

    .venv/bin/python -m benchmarks.ingest [--sizes 20000 100000] [--baseline-rev a06eb66]
    .venv/bin/python -m benchmarks.ingest --sizes 1000000 --tiny --no-fashion-mnist

Writes generated folders of small PNG images (64x64 noise, about 12 KB each; with --tiny 8x8, about 200 bytes; 10
class folders) of each size and Fashion-MNIST written out as PNG files, ingests each with both implementations (each
in a fresh process) and prints files/s and peak resident memory: of the ingesting process (the driver), and of the
largest Ray worker. The baseline is `--baseline-file` of `--baseline-rev`, read from git: by default the streaming
job whose driver wrote every shard itself (a06eb66); it must import from today's tree.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import importlib.util, json, sys, time
from pathlib import Path
from benchmarks.memory import own_peak_mb, ray_worker_peak_mb
kind, source, out, baseline = sys.argv[1:5]
started = time.time()
if kind == "baseline":
    from ray import cloudpickle
    spec = importlib.util.spec_from_file_location("baseline_ingest", baseline)
    module = importlib.util.module_from_spec(spec)
    sys.modules["baseline_ingest"] = module
    spec.loader.exec_module(module)
    cloudpickle.register_pickle_by_value(module)  # its Ray tasks' functions travel with them
    info, _ = module.ingest_folder(Path(source), out, progress_every=10**9)
else:
    from pipelines.ingestion.folder import ingest_folder
    info, _ = ingest_folder(source, out, progress_every=10**9)
print(json.dumps({"images": sum(info.splits.values()), "seconds": time.time() - started,
                  "driver_mb": own_peak_mb(), "worker_mb": ray_worker_peak_mb()}))
"""


def generated_folder(root: Path, count: int, side: int = 64) -> Path:
    folder = root / f"generated_{count}"
    rng = np.random.default_rng(0)
    for label in range(10):
        (folder / f"class_{label}").mkdir(parents=True, exist_ok=True)
    for index in range(count):
        label = index % 10
        picture = (rng.integers(0, 40, (side, side, 3)) + label * 20).astype(np.uint8)  # noise: ~12 KB as PNG at 64
        cv2.imwrite(str(folder / f"class_{label}" / f"{index:07d}.png"), picture)
    return folder


def fashion_mnist_folder(root: Path) -> Path:
    from pipelines.ingestion.datasets import FASHION_MNIST_DIR, read_idx

    folder = root / "fashion_mnist_png"
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(FASHION_MNIST_DIR / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(FASHION_MNIST_DIR / f"{prefix}-labels-idx1-ubyte.gz")
        for label in range(10):
            (folder / split / f"class_{label}").mkdir(parents=True, exist_ok=True)
        for index, (image, label) in enumerate(zip(images, labels)):
            cv2.imwrite(str(folder / split / f"class_{label}" / f"{index:05d}.png"), image)
    return folder


def measure(kind: str, source: Path, work: Path, baseline: Path) -> dict:
    out = work / f"out_{kind}"
    shutil.rmtree(out, ignore_errors=True)
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    result = subprocess.run([sys.executable, "-c", CHILD, kind, str(source), str(out), str(baseline)], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=3600)
    if result.returncode != 0:
        raise RuntimeError(f"{kind} ingest of {source} failed:\n{result.stderr[-3000:]}")
    shutil.rmtree(out, ignore_errors=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 100_000])
    parser.add_argument("--baseline-rev", default="a06eb66", help="git revision of the baseline")
    parser.add_argument("--baseline-file", default="pipelines/ingestion/folder.py", help="the baseline's file at that revision")
    parser.add_argument("--tiny", action="store_true", help="8x8 images (about 200 bytes) instead of 64x64")
    parser.add_argument("--no-fashion-mnist", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ingest_bench_") as folder:
        work = Path(folder)
        baseline = work / "baseline_ingest.py"
        baseline.write_text(subprocess.run(["git", "show", f"{args.baseline_rev}:{args.baseline_file}"], cwd=ROOT,
                                           check=True, capture_output=True, text=True).stdout)
        sources = []
        for size in args.sizes:
            started = time.time()
            side = 8 if args.tiny else 64
            sources.append((f"generated {size:,} PNG {side}x{side}", generated_folder(work, size, side)))
            print(f"wrote {size:,} images in {time.time() - started:.0f}s", flush=True)
        if not args.no_fashion_mnist:
            sources.append(("Fashion-MNIST 70,000 PNG 28x28", fashion_mnist_folder(work)))
        print(f"{'folder':34} {'ingest':14} {'images':>8} {'s':>7} {'files/s':>8} {'driver MB':>10} "
              f"{'worker MB':>10}", flush=True)
        for name, source in sources:
            for kind in ("baseline", "ray_data"):
                row = measure(kind, source, work, baseline)
                label = args.baseline_rev if kind == "baseline" else "this tree"
                print(f"{name:34} {label:14} {row['images']:>8} {row['seconds']:>7.1f} "
                      f"{row['images'] / row['seconds']:>8.0f} {row['driver_mb']:>10.0f} {row['worker_mb']:>10.0f}",
                      flush=True)
            shutil.rmtree(source, ignore_errors=True)


if __name__ == "__main__":
    main()
