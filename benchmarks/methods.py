"""Every method under one budget on Fashion-MNIST, beside the raw-pixel kNN measured in the same run.

    .venv/bin/python -m benchmarks.methods --epochs 1 --limit 20000

Each method runs its `configs/<method>_fmnist_quick.yaml` preset with the epochs and training-image
limit given here; kNN (k=20, T=0.07) always uses the whole train split as bank and the whole test
split as queries. Prints a Markdown table for BENCHMARKS.md.
"""
import argparse
import time

import torch

from pipelines.config import PROJECT_ROOT, load_config
from pipelines.dataset_store import read_info
from pipelines.evaluate import load_eval_sets
from pipelines.knn import knn_accuracy
from pipelines.pretrain import pretrain
from ssl_models import METHODS


def raw_pixel_knn(root: str, k: int = 20, temperature: float = 0.07) -> float:
    info = read_info(root)
    bank, queries = load_eval_sets(info, root, 28, None, None)
    return knn_accuracy(bank.images.flatten(1).float(), bank.labels, queries.images.flatten(1).float(),
                        queries.labels, len(info.classes), k, temperature)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="*", default=list(METHODS))
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--limit", type=int, default=20000, help="training images per epoch")
    parser.add_argument("--data", default=str(PROJECT_ROOT / "data" / "fashion_mnist"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    started = time.time()
    pixels = raw_pixel_knn(args.data)
    print(f"raw pixels: kNN top-1 {pixels:.2%} ({time.time() - started:.0f}s)", flush=True)
    rows = []
    for method in args.methods:
        preset = PROJECT_ROOT / "configs" / f"{method}_fmnist_quick.yaml"
        config = load_config(preset, [f"train.epochs={args.epochs}", f"data.limit={args.limit}",
                                      f"data.path={args.data}", "eval.baseline=false", "eval.picture_every=0",
                                      f"tracking.experiment=benchmark-{method}"])
        began = time.time()
        outcome = pretrain(config)
        metrics = outcome["metrics"]
        rows.append((method, config.model.backbone, outcome["eval"]["knn_top1_k20"], metrics["images_per_second"],
                     time.time() - began))
        print(f"{method}: kNN top-1 {rows[-1][2]:.2%}, {rows[-1][3]:.0f} img/s", flush=True)
    print("\n| method | backbone | kNN top-1 k=20 | vs raw pixels | images/s | wall |\n|---|---|---|---|---|---|")
    print(f"| raw pixels | - | {pixels:.2%} | 1.00 | - | - |")
    for method, backbone, accuracy, speed, wall in rows:
        print(f"| {method} | {backbone} | {accuracy:.2%} | {accuracy / pixels:.2f} | {speed:.0f} | {wall:.0f} s |")


if __name__ == "__main__":
    main()
