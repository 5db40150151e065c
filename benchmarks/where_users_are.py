"""A method where users are: a class-sorted folder of pictures (tests/conftest.py's: 10 classes cut from
scikit-image's photos, grey and colour, 48 each), train.num_workers=2, 2 epochs; prints whether the workers'
replicas stayed identical, how many classes each batch held, the online kNN and the last losses. `distill`
distils from a 1-epoch BYOL teacher trained first.

    python -m benchmarks.where_users_are dinov2 distill [--root /tmp/where_users_are] [--set KEY=VALUE ...]

`--set` changes a setting of every method's run (for example `--set model.layer_scale_init=1.0`).
"""
import argparse
import shutil
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from pipelines.config.load import load_config, parse_override
from pipelines.config.section import ConfigError
from pipelines.ingestion.folder import ingest_folder
from pipelines.pretraining.run import pretrain
from tests.helpers import tiny_overrides, write_sorted_folder


def sorted_shards(root: Path) -> Path:
    shards = root / "shards"
    if not shards.exists():
        shutil.rmtree(root / "pictures", ignore_errors=True)
        ingest_folder(write_sorted_folder(root / "pictures"), str(shards))
    return shards


def setting(text: str) -> tuple[str, str]:
    """One `--set KEY=VALUE`, checked as the pipelines' own --set is."""
    try:
        parse_override(text)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    key, value = text.split("=", 1)
    return key, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("methods", nargs="+")
    parser.add_argument("--root", type=Path, default=Path("/tmp/where_users_are"))
    parser.add_argument("--set", dest="settings", action="append", default=[], type=setting, metavar="KEY=VALUE",
                        help="a setting for every method's run; repeat for more")
    args = parser.parse_args()
    settings = dict(args.settings)
    shards, storage = str(sorted_shards(args.root)), str(args.root / "runs")
    uri = f"sqlite:///{args.root / 'mlflow.db'}"
    common = {"data.image_size": 32, "data.batch_size": 32, "data.limit": "null", "train.epochs": 2,
              "train.num_workers": 2, "train.cpus_per_worker": 0.25, "eval.baseline": False, "eval.picture_every": 0,
              "eval.online_bank_size": 200, "eval.online_query_size": 48}
    client = MlflowClient(uri)
    for method in args.methods:
        extra = {"tracking.run_name": f"sorted-{method}-{time.strftime('%H%M%S')}", **settings}
        if method == "distill":
            if not (args.root / "runs" / "sorted-teacher").exists():
                pretrain(load_config(None, tiny_overrides(shards, storage, uri, "byol", **{
                    "data.image_size": 32, "data.limit": "null", "tracking.run_name": "sorted-teacher",
                    "eval.baseline": False})), progress=False)
            extra.update({"method.teacher_run": "sorted-teacher", "model.backbone": "resnet10t"})
        outcome = pretrain(load_config(None, tiny_overrides(shards, storage, uri, method, **{**common, **extra})),
                           progress=False)
        run_id = outcome.run_id

        def history(key: str) -> list[float]:
            return [round(metric.value, 3) for metric in client.get_metric_history(run_id, key)]

        print(f"{' '.join([method, *(f'{k}={v}' for k, v in settings.items())])}: {client.get_run(run_id).info.status}, "
              f"steps {outcome.metrics['step']}, replicas_identical {history('replicas_identical')}, "
              f"classes_per_batch {history('train/classes_per_batch')}, knn_top1_k20 {history('knn_top1_k20')}, "
              f"loss {history('train/loss')[-3:]}", flush=True)


if __name__ == "__main__":
    main()
