"""`python -m pipelines.evaluate`: the transfer evaluation command (kNN, linear probe, fine-tuning): its flags
into `transfer.EvaluationSettings`, then `transfer.run_evaluation` (see pipelines/evaluation/transfer.py)."""
import argparse
import sys
from typing import Optional

from pipelines.config.flags import settings_from_flags
from pipelines.config.section import ConfigError
from pipelines.evaluation import transfer
from pipelines.evaluation.transfer import PROTOCOLS, EvaluationSettings, run_evaluation
from pipelines.storage.files import DatasetError
from pipelines.storage.runs import RunFailed


def parse_args(argv) -> EvaluationSettings:
    parser = argparse.ArgumentParser(prog="python -m pipelines.evaluate", description=transfer.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", help="a pretraining run's name: its last checkpoint, its data, its MLflow run")
    source.add_argument("--weights", help="folder or URI holding backbone.safetensors and backbone.json ('pixels': "
                        "the raw-pixel baseline, normalised and flattened at the dataset's smallest image side)")
    parser.add_argument("--storage", help="where the run's checkpoints are (default: train.storage_path)")
    parser.add_argument("--data", help="ingested, labelled dataset (default with --run: the run's data.path)")
    parser.add_argument("--protocol", default="knn,linear", help=f"comma-separated, of: {', '.join(PROTOCOLS)}")
    parser.add_argument("--embeddings", help="keep the embeddings in this folder or URI (default: a temporary one)")
    parser.add_argument("--actors", type=int, default=1, help="embedding actors")
    parser.add_argument("--linear-epochs", type=int, default=50)
    parser.add_argument("--linear-lrs", default="0.01,0.1,1.0", help="learning rates tried (chosen on a held-out 10 %%)")
    parser.add_argument("--train-limit", type=int, help="a stratified random subset of the labelled train images "
                        "(only those are embedded or trained on)")
    parser.add_argument("--test-limit", type=int, help="a stratified random subset of the test images (likewise)")
    supervised = parser.add_argument_group("finetune, scratch, linear_aug and linear_dino (Ray Train)")
    supervised.add_argument("--epochs", type=int, default=10)
    supervised.add_argument("--batch-size", type=int, default=128, help="per worker")
    supervised.add_argument("--lr", type=float, help="per 256 images (default: 1e-3 AdamW; SGD: 0.1 for linear_aug, "
                            "0.001 for linear_dino)")
    supervised.add_argument("--layer-decay", type=float, default=0.75, help="layer-wise lr decay (ViTs)")
    supervised.add_argument("--warmup-epochs", type=float, default=1.0)
    supervised.add_argument("--drop-path", type=float, help="stochastic depth of a ViT trained whole (default: 0.1, "
                            "MAE's fine-tuning)")
    supervised.add_argument("--global-pool", choices=["token", "avg"], help="a ViT's input to the head: its class "
                            "token, or its patch tokens averaged under a fresh norm (default: avg after MAE, else token)")
    supervised.add_argument("--mixup", type=float, help="finetune, scratch: mixup's alpha (MAE: 0.8; default 0, off)")
    supervised.add_argument("--cutmix", type=float, help="cutmix's alpha (MAE: 1.0; default 0, off)")
    supervised.add_argument("--rand-augment", help="timm's RandAugment setting (MAE: rand-m9-mstd0.5-inc1; default off)")
    supervised.add_argument("--random-erasing", type=float, help="chance to erase a box of each image (MAE: 0.25; "
                            "default 0)")
    supervised.add_argument("--mae-augment", action="store_true", help="MAE's four above at its values (each one "
                            "given on its own wins)")
    supervised.add_argument("--last-blocks", type=int, default=4, help="linear_dino: class tokens of this many last "
                            "blocks (DINO: 4 for ViT-S, 1 for ViT-B)")
    supervised.add_argument("--avg-patch-tokens", action="store_true", help="linear_dino: and the last block's patch "
                            "tokens averaged (DINO's ViT-B setting)")
    supervised.add_argument("--workers", type=int, default=1, help="Ray Train workers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", action="store_true", help="show Ray's and its workers' output here")
    args = vars(parser.parse_args(argv))
    try:
        lrs = [float(lr) for lr in args.pop("linear_lrs").split(",") if lr.strip()]
    except ValueError:
        parser.error("--linear-lrs takes numbers separated by commas, e.g. 0.01,0.1,1.0")
    protocols = [name.strip() for name in args.pop("protocol").split(",") if name.strip()]
    return settings_from_flags(EvaluationSettings, {**args, "protocols": protocols, "linear_lrs": lrs},
                               {"protocols": "--protocol", "": "--run or --weights"})


def main(argv: Optional[list[str]] = None) -> int:
    try:
        result = run_evaluation(parse_args(argv))
    except (ConfigError, DatasetError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except RunFailed as error:
        print(f"evaluation failed: {error}", file=sys.stderr)
        return 1
    for key, value in result.metrics.items():
        print(f"{key}: {value:.2%}")
    if result.probe is not None:
        print(f"linear probe lr {result.probe.lr:g} (held-out accuracy by lr: "
              + ", ".join(f"{lr:g} {value:.2%}" for lr, value in result.probe.validation.items()) + ")")
    if result.mlflow_run_id:
        print(f"logged into MLflow run {result.mlflow_run_id} (eval/...) with a nested run per protocol")
    return 0


if __name__ == "__main__":
    sys.exit(main())
