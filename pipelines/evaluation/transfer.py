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
`finetune`, `scratch`, `linear_aug` and `linear_dino` train on Ray Train with augmentation (pipelines/evaluation/finetune.py).
"""
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Literal, Optional

import numpy as np
import torch
from pydantic import Field, field_validator

from pipelines.config.project import LocalOrURI
from pipelines.config.schema import Config
from pipelines.config.section import ConfigError
from pipelines.data.finetune_augment import MAE_AUGMENT
from pipelines.data.store import DatasetInfo, read_info
from pipelines.evaluation.embeddings import PIXELS, BackboneSource, embed_split, read_embeddings
from pipelines.evaluation.finetune import run_supervised
from pipelines.evaluation.finetune_settings import FROZEN, SUPERVISED, FinetuneSettings, required_cpus
from pipelines.features.extract import eval_rows
from pipelines.features.knn import knn_accuracy
from pipelines.features.linear_probe import ProbeResult, linear_probe
from pipelines.storage.files import DatasetError
from pipelines.storage.runs import RunFailed, failure_reason, read_run_file, resolve_source
from pipelines.tracking.mlflow_runs import fail_run

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

    from pipelines.tracking.logged_model import model_of_run

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


class EvaluationSettings(BackboneSource):
    """What an evaluation takes (`python -m pipelines.evaluate` parses its flags into it; a notebook builds it):
    the backbone and data (see BackboneSource), the protocols and their settings."""
    protocols: list[str] = ["knn", "linear"]
    embeddings: Optional[LocalOrURI] = Field(None, description="keep the embeddings here (default: a temporary folder)")
    actors: int = Field(1, ge=1, description="embedding actors")
    linear_epochs: int = Field(50, ge=1)
    linear_lrs: list[float] = Field([0.01, 0.1, 1.0], min_length=1, description="chosen on a held-out 10 %")
    train_limit: Optional[int] = Field(None, ge=1, description="a stratified random subset of the labelled train images")
    test_limit: Optional[int] = Field(None, ge=1, description="a stratified random subset of the test images")
    epochs: int = Field(10, ge=1, description="the supervised protocols' epochs (finetune, scratch, linear_aug, linear_dino)")
    batch_size: int = Field(128, ge=1, description="per worker")
    lr: Optional[float] = Field(None, gt=0)
    layer_decay: float = Field(0.75, gt=0, le=1)
    warmup_epochs: float = Field(1.0, ge=0)
    drop_path: Optional[float] = Field(None, ge=0, lt=1)
    global_pool: Optional[Literal["token", "avg"]] = None
    mixup: Optional[float] = None
    cutmix: Optional[float] = None
    rand_augment: Optional[str] = None
    random_erasing: Optional[float] = None
    mae_augment: bool = False
    last_blocks: int = Field(4, ge=1)
    avg_patch_tokens: bool = False
    workers: int = Field(1, ge=1, description="Ray Train workers")
    seed: int = 0
    verbose: bool = Field(False, description="show Ray's and its workers' output here")

    @field_validator("protocols")
    @classmethod
    def _known_protocols(cls, protocols: list[str]) -> list[str]:
        unknown = sorted(set(protocols) - set(PROTOCOLS))
        if unknown or not protocols:
            raise ValueError(f"unknown protocol {', '.join(unknown) or '(none)'}; choose from {', '.join(PROTOCOLS)}")
        return protocols


@dataclass
class EvaluationResult:
    metrics: dict[str, float]  # eval/... without the prefix: knn_top1_k20, linear_top1, finetune_top1, ...
    probe: Optional[ProbeResult]  # the linear probe's chosen lr and held-out accuracy by lr
    mlflow_run_id: Optional[str]  # the run the results went into (with `run`)


def protocol_settings(args: EvaluationSettings) -> dict:
    """What each protocol ran with, as the nested runs' params (and the supervised protocols' settings)."""
    protocols = args.protocols
    settings = {"protocols": protocols, "knn": {"k": "20,200", "temperature": 0.07, "embeddings": "cached"},
                "linear": {"epochs": args.linear_epochs, "lrs": ",".join(str(lr) for lr in args.linear_lrs),
                           "optimizer": "sgd momentum 0.9",
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


def regularisers(args: EvaluationSettings) -> dict:
    """The fine-tuning regularisers asked for: MAE's with --mae-augment, each flag given replacing its value."""
    chosen = dict(MAE_AUGMENT) if args.mae_augment else {}
    chosen.update({name: getattr(args, name) for name in MAE_AUGMENT if getattr(args, name) is not None})
    return chosen


def evaluate(args: EvaluationSettings, settings: dict, record: Optional[dict]
             ) -> tuple[dict[str, float], Optional[ProbeResult], dict]:
    """Runs the protocols (`record`: the run.json of `args.run`); returns (metrics, linear probe, nested MLflow
    runs made)."""
    from pipelines.cluster.start import start_ray

    protocols = args.protocols

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


def embed_and_evaluate(weights: str, data: str, info: DatasetInfo, protocols: list[str], args: EvaluationSettings,
                       keep: Optional[str] = None) -> tuple[dict[str, float], Optional[ProbeResult]]:
    """The embedding protocols: both splits embedded by Ray Data (into `keep`, else a temporary folder), then
    kNN and the linear probe on the embeddings."""
    probe_settings = {"epochs": args.linear_epochs, "lrs": tuple(args.linear_lrs)}
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
                     limits=(None, None), seed: int = 0, baseline: Optional[str] = None,
                     pixels_cache: Optional[str] = None) -> dict[str, float]:
    """The end of a pretraining: `protocols` on the run's data with the command's defaults, kNN of the random-init
    backbone in `baseline` (as init_knn_top1_k*) and, with `pixels_cache` (a folder), of the raw pixels (as
    pixels_knn_top1_k*, read from there when computed before), logged into the run and its backbone model."""
    args = EvaluationSettings(weights=weights, protocols=protocols, train_limit=limits[0], test_limit=limits[1],
                              seed=seed)
    metrics, probe = embed_and_evaluate(weights, data, info, protocols, args)
    if baseline:
        before, _ = embed_and_evaluate(baseline, data, info, ["knn"], args)
        metrics.update({f"init_{key}": value for key, value in before.items()})
    if pixels_cache:
        metrics.update({f"pixels_{key}": value for key, value in pixel_knn(data, info, args, pixels_cache).items()})
    log_to_run(record, run, metrics, probe, protocol_settings(args))
    return metrics


def pixel_knn(data: str, info: DatasetInfo, args: EvaluationSettings, cache: str) -> dict[str, float]:
    """kNN on the raw pixels of `data`'s evaluation rows, from `cache` when these rows were scored before."""
    import hashlib
    import json

    from pipelines.storage.files import file_exists, read_bytes, write_text

    rows = {"data": data, "splits": info.splits, "train_limit": args.train_limit, "test_limit": args.test_limit,
            "seed": args.seed}
    name = f"pixels_knn_{hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:16]}.json"
    if file_exists(f"{cache.rstrip('/')}/{name}"):
        return json.loads(read_bytes(f"{cache.rstrip('/')}/{name}"))["metrics"]
    metrics, _ = embed_and_evaluate(PIXELS, data, info, ["knn"], args)
    write_text(cache, name, json.dumps({"rows": rows, "metrics": metrics}, indent=2))
    return metrics


def run_evaluation(args: EvaluationSettings) -> EvaluationResult:
    """The protocols on the backbone; with `args.run` the results go into that run's MLflow run (`eval/...`) and
    a nested run per protocol. Raises ConfigError or DatasetError for bad input, RunFailed for a failed protocol."""
    settings = protocol_settings(args)
    record = read_run_file(args.storage or Config().train.storage_path, args.run) if args.run else None
    metrics, probe, children = evaluate(args, settings, record)
    parent = log_to_run(record, args.run, metrics, probe, settings, children) if record else None
    return EvaluationResult(metrics, probe, parent)
