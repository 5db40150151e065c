"""Every method under one budget on Fashion-MNIST, beside raw pixels measured the same way in the same run.

    .venv/bin/python -m benchmarks.methods --epochs 1 --limit 10000

Each method runs its `configs/<method>_fmnist_quick.yaml` preset with the epochs and training-image
limit given here, then the final evaluation of pretraining (the transfer stage, `eval.final_protocols`
[knn, linear]): kNN (k=20 and 200, T=0.07) and the linear probe on cached embeddings, with the whole
train split as bank / training set and the whole test split as queries. The raw-pixel row goes through
the same stage (`--weights pixels`). Prints a Markdown table for BENCHMARKS.md (the DINO table's columns).
"""
import argparse
import time

import torch

from pipelines.config.load import load_config
from pipelines.config.project import PROJECT_ROOT
from pipelines.data.store import read_info
from pipelines.pretraining.run import pretrain
from ssl_models import METHODS


def raw_pixels(root: str) -> dict[str, float]:
    from pipelines.cluster.start import start_ray
    from pipelines.evaluation.embeddings import PIXELS
    from pipelines.evaluation.transfer import EvaluationSettings, embed_and_evaluate

    start_ray(False)
    return embed_and_evaluate(PIXELS, root, read_info(root), ["knn", "linear"], EvaluationSettings(weights=PIXELS))[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="*", default=[name for name in METHODS if name != "distill"],
                        help="default: every self-supervised method (distill needs a teacher run: its study)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--limit", type=int, default=20000, help="training images per epoch")
    parser.add_argument("--data", default=str(PROJECT_ROOT / "data" / "fashion_mnist"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    started = time.time()
    pixels = raw_pixels(args.data)
    print(f"raw pixels: kNN top-1 {pixels['knn_top1_k20']:.2%}, linear {pixels['linear_top1']:.2%} "
          f"({time.time() - started:.0f}s)", flush=True)
    rows = []
    for method in args.methods:
        preset = PROJECT_ROOT / "configs" / f"{method}_fmnist_quick.yaml"
        config = load_config(preset, [f"train.epochs={args.epochs}", f"data.limit={args.limit}",
                                      f"data.path={args.data}", "eval.baseline=false", "eval.picture_every=0",
                                      "eval.final_protocols=[knn, linear]", f"tracking.experiment=benchmark-{method}"])
        began = time.time()
        outcome = pretrain(config)
        rows.append((method, config.model.backbone, outcome.evaluation, outcome.metrics["images_per_second"],
                     time.time() - began, outcome.run_name))
        print(f"{method}: kNN top-1 {outcome.evaluation['knn_top1_k20']:.2%}, linear {outcome.evaluation['linear_top1']:.2%}, "
              f"{rows[-1][3]:.0f} img/s", flush=True)
    print("\n| method | backbone | kNN k=20 | kNN k=200 | linear (cached) | kNN vs raw pixels | images/s | wall "
          "(train + eval) | run |\n|---|---|---|---|---|---|---|---|---|")
    print(f"| raw pixels | - | {pixels['knn_top1_k20']:.2%} | {pixels['knn_top1_k200']:.2%} | "
          f"{pixels['linear_top1']:.2%} | 1.00 | - | - | - |")
    for method, backbone, found, speed, wall, run in rows:
        print(f"| {method} | {backbone} | {found['knn_top1_k20']:.2%} | {found['knn_top1_k200']:.2%} | "
              f"{found['linear_top1']:.2%} | {found['knn_top1_k20'] / pixels['knn_top1_k20']:.2f} | {speed:.0f} | "
              f"{wall:.0f} s | {run} |")

if __name__ == "__main__":
    main()
