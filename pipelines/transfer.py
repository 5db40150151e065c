"""Transfer evaluation of a pretrained backbone: kNN, the linear probe, fine-tuning and its scratch baseline.

    python -m pipelines.evaluate --run NAME --protocol knn,linear
    python -m pipelines.evaluate --weights runs/NAME/checkpoint_.../ --data data/fashion_mnist --protocol knn
    python -m pipelines.evaluate --run NAME --protocol finetune,scratch,linear_aug --epochs 10

The splits are embedded by Ray Data batch inference (pipelines/embed.py; a few thousand small images in this
process, faster than a Ray Data job starts), then evaluated on the embeddings:
kNN (cosine, weighted vote, T = 0.07, k = 20 and 200, the bank compared a chunk at a time) and the linear
probe on cached embeddings (no augmentation; "fast path"). Bank and queries as in pretraining: the train
split against the test split, or a stratified 10 % of train held out when there is no test split. With
`--run` the results go into that run's MLflow run (`eval/...`) and a nested run per protocol.
`finetune`, `scratch`, `linear_aug` and `linear_dino` train on Ray Train with augmentation (pipelines/finetune.py).
"""
import argparse
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict
from typing import Optional

import numpy as np
import torch

from pipelines.config import Config, ConfigError
from pipelines.dataset_store import DatasetError, DatasetInfo, read_info
from pipelines.embed import PIXELS, embed_split, read_embeddings
from pipelines.features import eval_rows
from pipelines.finetune import FROZEN, SUPERVISED, FinetuneSettings, required_cpus, run_supervised
from pipelines.finetune_augment import MAE_AUGMENT
from pipelines.knn import knn_accuracy
from pipelines.linear_probe import ProbeResult, linear_probe
from pipelines.run_registry import RunFailed, failure_reason, read_run_file, resolve_source
from pipelines.tracking import fail_run

EMBEDDING_PROTOCOLS = ("knn", "linear")
PROTOCOLS = EMBEDDING_PROTOCOLS + SUPERVISED
BANK_CHUNK = 8192


def select(rows: np.ndarray, labels: np.ndarray, embeddings: torch.Tensor, wanted: np.ndarray):
    """The embeddings (and labels) of the split positions `wanted` that were embedded."""
    index = np.searchsorted(rows, wanted)
    present = (index < len(rows)) & (rows[np.minimum(index, len(rows) - 1)] == wanted)
    index = index[present]
    return embeddings[torch.from_numpy(index)], torch.from_numpy(labels[index].astype(np.int64))


def evaluate_embeddings(info: DatasetInfo, data: str, folders: dict[str, str], protocols: list[str],
                        ks=(20, 200), temperature: float = 0.07, seed: int = 0, probe_settings: Optional[dict] = None,
                        limits=(None, None), plan=None) -> tuple[dict[str, float], Optional[ProbeResult]]:
    """`plan`: the bank and query rows (`eval_rows`), when the caller chose them already."""
    plan = plan or eval_rows(info, data, *limits, seed)
    if plan is None:
        raise DatasetError(f"'{data}' has no labels: kNN and the linear probe need labelled images")
    loaded = {split: read_embeddings(folder) for split, folder in folders.items()}
    (bank_split, bank_rows), (query_split, query_rows) = plan
    bank, bank_labels = select(*loaded[bank_split], bank_rows)
    queries, query_labels = select(*loaded[query_split], query_rows)
    classes = len(info.classes)
    metrics, probe = {}, None
    if "knn" in protocols:
        for k in ks:
            metrics[f"knn_top1_k{k}"] = knn_accuracy(bank, bank_labels, queries, query_labels, classes, k,
                                                     temperature, bank_chunk=BANK_CHUNK)
    if "linear" in protocols:
        probe = linear_probe(bank, bank_labels, queries, query_labels, classes, seed=seed, **(probe_settings or {}))
        metrics["linear_top1"] = probe.top1
    return metrics, probe


def child_run(client, parent: str, run: str, protocol: str) -> str:
    """A nested run under the pretraining's MLflow run, one per protocol."""
    experiment = client.get_run(parent).info.experiment_id
    return client.create_run(experiment, run_name=f"{run}-{protocol}",
                             tags={"mlflow.parentRunId": parent, "protocol": protocol}).info.run_id


def log_to_run(record: dict, run: str, metrics: dict[str, float], probe: Optional[ProbeResult], settings: dict,
               children: Optional[dict[str, str]] = None) -> str:
    """Into the pretraining's MLflow run (`eval/...`) and a nested run per protocol with its settings
    (`children`: nested runs made already, which hold their curves)."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    from pipelines.backbone_model import model_of_run

    client, parent = MlflowClient(record["tracking_uri"]), record["mlflow_run_id"]
    now = int(time.time() * 1000)
    model = model_of_run(record["tracking_uri"], parent)  # the results also show on the run's backbone model
    client.log_batch(parent, metrics=[Metric(f"eval/{key}", value, now, 0, model_id=model) for key, value in metrics.items()])
    for protocol in settings["protocols"]:
        child = (children or {}).get(protocol) or child_run(client, parent, run, protocol)
        params = {"protocol": protocol, **settings[protocol]}
        if protocol == "linear" and probe is not None:
            params["chosen_lr"] = probe.lr
            curve = [Metric("linear/holdout_top1", value, now, epoch + 1) for epoch, value in enumerate(probe.curve)]
            lrs = [Metric("linear/holdout_top1_by_lr", value, now, index) for index, value in enumerate(probe.validation.values())]
            client.log_batch(child, metrics=curve + lrs)
        client.log_batch(child, params=[Param(key, str(value)) for key, value in params.items()],
                         metrics=[Metric(key, value, now, 0) for key, value in metrics.items()
                                  if key.startswith(f"{protocol}_") or (protocol == "knn" and key.startswith("knn"))])
        client.set_terminated(child, "FINISHED")
    return parent


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m pipelines.evaluate", description=__doc__,
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
    return parser.parse_args(argv)


def protocol_settings(args, protocols: list[str]) -> dict:
    """What each protocol ran with, as the nested runs' params (and the supervised protocols' settings)."""
    settings = {"protocols": protocols, "knn": {"k": "20,200", "temperature": 0.07, "embeddings": "cached"},
                "linear": {"epochs": args.linear_epochs, "lrs": args.linear_lrs, "optimizer": "sgd momentum 0.9",
                           "schedule": "cosine", "batch_size": 256, "norm": "BatchNorm1d(affine=False)",
                           "embeddings": "cached, no augmentation"}}
    for protocol in set(protocols) & set(SUPERVISED):
        settings[protocol] = asdict(FinetuneSettings(
            protocol=protocol, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, layer_decay=args.layer_decay,
            warmup_epochs=args.warmup_epochs, num_workers=args.workers, train_limit=args.train_limit,
            test_limit=args.test_limit, seed=args.seed, **({
                "last_blocks": args.last_blocks, "avg_patch_tokens": args.avg_patch_tokens} if protocol == "linear_dino"
                else {} if protocol in FROZEN else {"drop_path": args.drop_path, "global_pool": args.global_pool,
                                                    **regularisers(args)})))
    return settings


def regularisers(args) -> dict:
    """The fine-tuning regularisers asked for: MAE's with --mae-augment, each flag given replacing its value."""
    chosen = dict(MAE_AUGMENT) if args.mae_augment else {}
    chosen.update({name: getattr(args, name) for name in MAE_AUGMENT if getattr(args, name) is not None})
    return chosen


def evaluate(args, protocols: list[str], settings: dict, record: Optional[dict]
             ) -> tuple[dict[str, float], Optional[ProbeResult], dict]:
    """Runs the protocols (`record`: the run.json of `--run`); returns (metrics, linear probe, nested MLflow
    runs made)."""
    from pipelines.ray_start import start_ray

    storage = args.storage or Config().train.storage_path
    weights, data = resolve_source(args.weights, args.run, storage, args.data, record)
    info = read_info(data)
    if not info.labelled:
        verb = "needs" if len(protocols) == 1 else "need"
        raise DatasetError(f"'{data}' has no labels: {', '.join(protocols)} {verb} labelled images")
    metrics, probe, children = {}, None, {}
    embedding = [p for p in protocols if p in EMBEDDING_PROTOCOLS]
    if weights == PIXELS and set(protocols) & set(SUPERVISED):
        raise ConfigError("--weights pixels has no network to fine-tune: use it with knn,linear")
    needed = max([required_cpus(FinetuneSettings(**settings[p])) for p in protocols if p in SUPERVISED], default=1)
    start_ray(args.verbose, num_cpus=max(os.cpu_count() or 1, math.ceil(needed)))
    if embedding:
        found, probe = embed_and_evaluate(weights, data, info, embedding, args, args.embeddings)
        metrics.update(found)
    for protocol in [p for p in protocols if p in SUPERVISED]:
        run_id = None
        if record:
            from mlflow.tracking import MlflowClient

            run_id = children[protocol] = child_run(MlflowClient(record["tracking_uri"]), record["mlflow_run_id"],
                                                    args.run, protocol)
        try:
            result = run_supervised(weights, data, FinetuneSettings(**settings[protocol]),
                                    f"{storage.rstrip('/')}/{args.run or 'transfer'}", run_id,
                                    record and record["tracking_uri"], progress=not args.verbose)
        except (ConfigError, DatasetError, ValueError):
            raise
        except Exception as error:
            reason = f"{protocol}: {failure_reason(error)}"
            if run_id:
                from mlflow.tracking import MlflowClient

                fail_run(MlflowClient(record["tracking_uri"]), run_id, reason)
            raise RunFailed(reason) from error
        metrics[f"{protocol}_top1"] = result.top1
        print(f"{protocol}: top-1 {result.top1:.2%} after {len(result.curve)} epochs "
              f"({result.images_per_second:.0f} img/s); the trained classifier is in {result.checkpoint}", flush=True)
    return metrics, probe, children


def embed_and_evaluate(weights: str, data: str, info: DatasetInfo, protocols: list[str], args,
                       keep: Optional[str] = None) -> tuple[dict[str, float], Optional[ProbeResult]]:
    """The embedding protocols: both splits embedded by Ray Data (into `keep`, else a temporary folder), then
    kNN and the linear probe on the embeddings."""
    probe_settings = {"epochs": args.linear_epochs, "lrs": tuple(float(v) for v in args.linear_lrs.split(","))}
    plan = eval_rows(info, data, args.train_limit, args.test_limit, args.seed)
    if plan is None:
        raise DatasetError(f"'{data}' has no labels: kNN and the linear probe need labelled images")
    wanted: dict[str, np.ndarray] = {}
    for split, rows in plan:  # bank and queries share the train split when there is no test split
        wanted[split] = np.union1d(wanted.get(split, rows), rows)
    with tempfile.TemporaryDirectory() as scratch:
        folders = {split: embed_split(weights, data, split, keep or scratch, args.actors, rows=rows)
                   for split, rows in sorted(wanted.items())}
        return evaluate_embeddings(info, data, folders, protocols, seed=args.seed, probe_settings=probe_settings,
                                   plan=plan)


def final_evaluation(weights: str, info: DatasetInfo, data: str, protocols: list[str], record: dict, run: str,
                     limits=(None, None), seed: int = 0, baseline: Optional[str] = None) -> dict[str, float]:
    """The end of a pretraining: `protocols` on the run's data with the command's defaults, and kNN of the
    random-init backbone in `baseline` (as init_knn_top1_k*), logged into the run and its backbone model."""
    args = parse_args(["--weights", weights, "--seed", str(seed)])
    args.train_limit, args.test_limit = limits
    metrics, probe = embed_and_evaluate(weights, data, info, protocols, args)
    if baseline:
        before, _ = embed_and_evaluate(baseline, data, info, ["knn"], args)
        metrics.update({f"init_{key}": value for key, value in before.items()})
    log_to_run(record, run, metrics, probe, protocol_settings(args, protocols))
    return metrics


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    protocols = [name.strip() for name in args.protocol.split(",") if name.strip()]
    unknown = sorted(set(protocols) - set(PROTOCOLS))
    if unknown or not protocols:
        print(f"error: unknown protocol {', '.join(unknown) or '(none)'}; choose from {', '.join(PROTOCOLS)}",
              file=sys.stderr)
        return 2
    try:
        settings = protocol_settings(args, protocols)
        record = read_run_file(args.storage or Config().train.storage_path, args.run) if args.run else None
        metrics, probe, children = evaluate(args, protocols, settings, record)
    except (ConfigError, DatasetError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except RunFailed as error:
        print(f"evaluation failed: {error}", file=sys.stderr)
        return 1
    for key, value in metrics.items():
        print(f"{key}: {value:.2%}")
    if probe is not None:
        print(f"linear probe lr {probe.lr:g} (held-out accuracy by lr: "
              + ", ".join(f"{lr:g} {value:.2%}" for lr, value in probe.validation.items()) + ")")
    if record:
        parent = log_to_run(record, args.run, metrics, probe, settings, children)
        print(f"logged into MLflow run {parent} (eval/...) with a nested run per protocol")
    return 0
