"""Self-supervised pretraining on Ray: `python -m pipelines.pretrain [--config PRESET] [--set key=value ...]`.

Locally it starts a Ray instance and writes to an MLflow store in the project folder; under
`ray job submit` (or with RAY_ADDRESS set) it joins that cluster. `--resume NAME` continues a
run from its last checkpoint, in the same MLflow run.
"""
import argparse
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional

from pipelines.config import (IN_RAY_JOB_COPY, PROJECT_ROOT, Config, ConfigError, DistillConfig, apply_override, build_config,
                              config_yaml, load_config, parse_override)
from pipelines.dataset_store import DatasetError, read_info
from pipelines.features import eval_plan
from pipelines.run_registry import (RUN_FILE, RunFailed, failure_reason, last_run_name, read_run_file, run_exists,
                                    run_weights)
from pipelines.storage import write_text
from pipelines.train_driver import check_cpus


def required_cpus(config: Config) -> float:
    """Logical CPUs the run reserves at once: Train workers, augmentation actors, and Ray Data's
    file listing (1 CPU, not configurable in Ray 2.60), which read tasks follow. Fewer means a deadlock."""
    data = config.data
    workers = config.train.num_workers * config.train.cpus_per_worker
    return workers + data.augment_actors * data.augment_cpus + max(1.0, data.read_cpus)


def init_ray(config: Config, verbose: bool = True) -> None:
    """Joins RAY_ADDRESS's cluster, else starts a local instance with enough logical CPUs for the run
    (threads are set explicitly, so logical CPUs only decide what may be scheduled together). Not
    `verbose`: the workers' and Ray's own output stays in Ray's log files."""
    import ray

    from pipelines.ray_start import start_ray
    from pipelines.tracking import tracking_uri

    start_ray(verbose, num_cpus=max(os.cpu_count() or 1, math.ceil(required_cpus(config))))
    check_shared_storage(config, tracking_uri(config), len([n for n in ray.nodes() if n["Alive"]]))
    check_cpus(required_cpus(config), ray.cluster_resources().get("CPU", 0),
               "the run (train.num_workers x train.cpus_per_worker + data.augment_actors x data.augment_cpus + 1 for "
               "file listing)", "lower train.cpus_per_worker or data.augment_cpus")


def is_local(path: str) -> bool:
    return "://" not in path or path.startswith(("file://", "sqlite://"))


def local_locations(config: Config, uri: str) -> list[tuple[str, str]]:
    """(setting, value) of the run's data, checkpoint and MLflow locations that are paths on this machine."""
    return [(name, value) for name, value in (("data.path", config.data.path),
                                              ("train.storage_path", config.train.storage_path),
                                              ("tracking.tracking_uri", uri),
                                              ("tracking.artifact_location", config.tracking.artifact_location))
            if value and is_local(value)]


def check_shared_storage(config: Config, uri: str, nodes: int) -> None:
    """On several nodes every worker must reach the data, the checkpoints and MLflow: local paths
    only do if they are a shared mount, which the user has to say (train.shared_storage); MLflow must be
    a server, since SQLite's file locking is unreliable over network mounts."""
    if nodes < 2:
        return
    if uri.startswith("sqlite:") and config.train.shared_storage:
        raise ConfigError(
            f"the Ray cluster has {nodes} nodes and tracking.tracking_uri={uri} is a SQLite file: several nodes "
            "writing one SQLite file over a shared mount corrupt it (its locking is unreliable there); run an "
            "MLflow server (scripts/cluster.sh start) and set tracking.tracking_uri=http://...")
    if config.train.shared_storage:
        return
    local = [f"{name}={value}" for name, value in local_locations(config, uri)]
    if local:
        raise ConfigError(
            f"the Ray cluster has {nodes} nodes but {', '.join(local)} "
            f"{'is a path' if len(local) == 1 else 'are paths'} on this node only: use object storage URIs "
            "(s3://, gs://) and an MLflow server (http://), or set train.shared_storage=true if they are a "
            "mount every node sees")


def check_job_locations(config: Config, uri: str) -> None:
    """Under `ray job submit` the project folder is Ray's unpacked copy of the working directory, deleted when
    the job ends: defaults built from it would lose the job's checkpoints and runs (and hold no data)."""
    if not IN_RAY_JOB_COPY:
        return
    inside = [f"{name}={value.replace(PROJECT_ROOT.as_posix(), '<job copy>')}"
              for name, value in local_locations(config, uri) if PROJECT_ROOT.as_posix() in value]
    if inside:
        raise ConfigError(
            f"this job runs in Ray's copy of the project ({PROJECT_ROOT}), which Ray may delete once the job ends "
            "(when its cache of job copies outgrows RAY_RUNTIME_ENV_WORKING_DIR_CACHE_SIZE_GB, 10 by default), "
            f"and {', '.join(inside)} {'points' if len(inside) == 1 else 'point'} into it: set cluster-wide "
            "locations, e.g. --set data.path=s3://bucket/data --set train.storage_path=s3://bucket/runs "
            "--set tracking.tracking_uri=http://mlflow-server:5000 (or export MLFLOW_TRACKING_URI), or folders "
            "on a mount every node sees")


def steps_per_epoch(config: Config, train_images: int) -> int:
    steps = train_images // config.train.num_workers // config.data.batch_size
    if steps < 1:
        raise ConfigError(
            f"data.batch_size={config.data.batch_size} x train.num_workers={config.train.num_workers} "
            f"is larger than the {train_images} training images: lower data.batch_size"
        )
    return steps


def pretrain(config: Config, resume: Optional[str] = None, tags: Optional[dict] = None, callbacks=(),
             verbose: bool = True, progress: bool = True) -> dict:
    """Runs (or resumes) one pretraining; returns run name, MLflow run id, tracking URI and final metrics.
    `tags` go on a new MLflow run (a sweep's parent id), `callbacks` to Ray Train (a sweep's Tune reporter);
    `verbose`: Ray's and the workers' output on this console; `progress`: the progress line."""
    # Imported here, not at the top: the command line answers configuration mistakes in a second.
    from mlflow.tracking import MlflowClient

    from pipelines.build import build_spec, head_arguments
    from pipelines.data import train_size, training_dataset
    from pipelines.pictures import augmented_views_grid
    from pipelines.tracking import check_reachable, fail_run, start_run, tracking_uri

    check_job_locations(config, tracking_uri(config))
    info = read_info(config.data.path)
    if info.splits.get("train", 0) == 0:
        raise DatasetError(f"dataset '{config.data.path}' has no training images")
    if info.min_side and info.min_side < config.data.image_size:
        print(f"note: the smallest images are {info.min_side} px on their shorter side; their crops are "
              f"upsampled to data.image_size={config.data.image_size}", flush=True)
    build_spec(config, info.channels)
    head_arguments(config)
    spe = steps_per_epoch(config, train_size(config, info))
    previous = read_run_file(config.train.storage_path, resume) if resume else None
    if not resume and config.tracking.run_name and run_exists(config.train.storage_path, config.tracking.run_name):
        # Ray Train would silently restore that run's checkpoint under the same name
        raise ConfigError(f"a run named '{config.tracking.run_name}' already exists under "
                          f"{config.train.storage_path}: continue it with --resume {config.tracking.run_name}, or "
                          "choose another tracking.run_name")
    uri = previous["tracking_uri"] if resume else tracking_uri(config)
    check_reachable(uri)
    teacher = None
    if isinstance(config.method, DistillConfig):  # a missing or unfit teacher is told now, not by every worker
        from pipelines.teacher import load_teacher, resolve_teacher

        resolve_teacher(config, uri)
        teacher = load_teacher(config.method, config.train.storage_path, info.channels, info.mean, info.std)
    if not verbose:
        logging.getLogger("mlflow").setLevel(logging.WARNING)
    init_ray(config, verbose)

    if resume:
        run_name, run_id = resume, previous["mlflow_run_id"]
        client = MlflowClient(uri)
        client.update_run(run_id, status="RUNNING")
    else:
        run_name = config.tracking.run_name or f"{config.method.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        client, run_id = start_run(config, uri, run_name, tags)
    write_text(f"{config.train.storage_path.rstrip('/')}/{run_name}", RUN_FILE, json.dumps(
        {"mlflow_run_id": run_id, "tracking_uri": uri, "config": config.model_dump(mode="json")}, indent=2))
    print(f"MLflow run {run_id} ({run_name}); {eval_plan(info)[1]}", flush=True)

    baseline = None
    try:
        client.log_text(run_id, config_yaml(config), "config.yaml")
        client.log_dict(run_id, asdict(info), "dataset.json")
        client.log_image(run_id, augmented_views_grid(config, info), "augmented_views.png")
        baseline = random_init_backbone(config, info, spe, teacher) if info.labelled and config.eval.baseline \
            and not resume and config.eval.final_protocols else None
        teacher = None  # the workers load their own
        result = fit(config, info, spe, run_name, run_id, uri, training_dataset(config, info), callbacks, progress)
        with result.checkpoint.as_directory() as folder:
            for name in ("backbone.safetensors", "backbone.json"):
                client.log_artifact(run_id, str(Path(folder) / name), "backbone")
            if config.tracking.log_model:
                from pipelines.backbone_model import log_backbone_model

                log_backbone_model(uri, run_id, folder)
        evaluated = evaluate_at_end(config, info, run_name, baseline)
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C: Ray Train's SIGINT handler aborts the run, then sys.exit()s
        fail_run(client, run_id, "interrupted by the user", status="KILLED")
        raise
    except Exception as error:
        reason = failure_reason(error)
        fail_run(client, run_id, reason)
        raise RunFailed(reason) from error
    finally:
        if baseline:
            shutil.rmtree(baseline, ignore_errors=True)
    client.set_terminated(run_id, "FINISHED")
    return {"run_name": run_name, "run_id": run_id, "tracking_uri": uri, "metrics": dict(result.metrics),
            "eval": evaluated, "artifact_uri": client.get_run(run_id).info.artifact_uri}


def random_init_backbone(config: Config, info, spe: int, teacher=None) -> str:
    """The backbone as rank 0 initialises it (same seed), exported to a temporary folder for the baseline
    (`teacher`: a distillation's, loaded once by the driver's check)."""
    from pipelines.build import build_method
    from pipelines.train_loop import export_backbone, seed_everything

    seed_everything(config.train.seed)
    folder = tempfile.mkdtemp(prefix="random_init_")
    method = build_method(config, info.channels, spe, (info.mean, info.std), teacher)
    export_backbone(Path(folder), method.backbone, config, info, 0, 0)
    return folder


def evaluate_at_end(config: Config, info, run_name: str, baseline: Optional[str]) -> dict[str, float]:
    """`eval.final_protocols` by the transfer stage on the final checkpoint (the Train workers are gone by now)."""
    protocols = config.eval.final_protocols
    if not protocols or not info.labelled:
        return {}
    from pipelines.transfer import final_evaluation

    print(f"evaluating the trained backbone: {', '.join(protocols)} on {config.data.path} "
          "(as `python -m pipelines.evaluate`)", flush=True)
    record = read_run_file(config.train.storage_path, run_name)
    return final_evaluation(run_weights(config.train.storage_path, run_name), info, config.data.path, list(protocols), record, run_name,
                            (config.eval.final_bank_size, config.eval.final_query_size), config.train.seed, baseline)


def fit(config: Config, info, spe: int, run_name: str, run_id: str, uri: str, dataset, callbacks=(),
        progress: bool = True):
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig

    from pipelines import train_driver
    from pipelines.data import ingest_config
    from pipelines.train_worker import stream_options, train_worker

    use_gpu = config.train.use_gpu
    if use_gpu is None:
        use_gpu = ray.cluster_resources().get("GPU", 0) > 0
    stream = stream_options(config.data.batch_size, config.data.shuffle_buffer, config.data.prefetch_batches, use_gpu)
    return train_driver.fit(
        train_worker,
        {"config": config.model_dump(mode="json"), "dataset": asdict(info), "steps_per_epoch": spe,
         "mlflow_run_id": run_id, "tracking_uri": uri, "stream": stream},
        progress,
        scaling_config=ScalingConfig(num_workers=config.train.num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": config.train.cpus_per_worker},
                                     placement_strategy=config.train.placement_strategy),
        run_config=RunConfig(name=run_name, storage_path=config.train.storage_path,
                             checkpoint_config=CheckpointConfig(num_to_keep=1),
                             failure_config=FailureConfig(max_failures=config.train.max_failures),
                             callbacks=list(callbacks)),
        datasets={"train": dataset},
        dataset_config=ingest_config(config, info),
    )


def summary(outcome: dict) -> str:
    metrics, lines = outcome["metrics"], []
    evaluated = outcome.get("eval") or {}
    for key in sorted(k for k in evaluated if k.startswith("knn_top1_k")):
        k = key.removeprefix("knn_top1_k")
        before = evaluated.get(f"init_knn_top1_k{k}")
        start = f"random init {before:.2%} -> " if before is not None else ""
        lines.append(f"kNN top-1 (k={k}): {start}pretrained {evaluated[key]:.2%}")
    if "linear_top1" in evaluated:
        lines.append(f"linear probe top-1: {evaluated['linear_top1']:.2%}")
    if not lines:
        lines.append("no final evaluation (the dataset has no labels, or eval.final_protocols is empty)")
    from pipelines.tracking import ui_command

    lines += [
        f"throughput: {metrics.get('images_per_second', 0):.0f} images/s (last epoch)",
        f"MLflow run id: {outcome['run_id']} (run name {outcome['run_name']})",
        f"backbone weights: {outcome['artifact_uri']}/backbone",
        f"open the MLflow UI: {ui_command(outcome['tracking_uri'])}",
        f"resume or extend: python -m pipelines.pretrain --resume {outcome['run_name']} --set train.epochs=N",
    ]
    return "\n".join(lines)


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m pipelines.pretrain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML preset (see configs/)")
    parser.add_argument("--method", help="shortcut for --set method.name=...")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any field, e.g. --set optim.lr=1e-3 (repeatable)")
    parser.add_argument("--resume", metavar="RUN_NAME", help="continue a run from its last checkpoint ('last': the newest)")
    parser.add_argument("--verbose", action="store_true", help="show Ray's and every worker's output here (else "
                        "they stay in Ray's log files and one progress line shows the run)")
    return parser.parse_args(argv)


def resolve_config(args) -> tuple[Config, Optional[str]]:
    overrides = list(args.overrides) + ([f"method.name={args.method}"] if args.method else [])
    if not args.resume:
        return load_config(args.config, overrides), None
    base = load_config(args.config, overrides)  # where to look: storage_path may be overridden
    name = last_run_name(base.train.storage_path) if args.resume == "last" else args.resume
    tree = read_run_file(base.train.storage_path, name)["config"]
    for text in overrides:
        apply_override(tree, *parse_override(text))
    return build_config(tree), name


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    config = resume = None
    try:
        config, resume = resolve_config(args)
        outcome = pretrain(config, resume, verbose=args.verbose)
    except (ConfigError, DatasetError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except RunFailed as error:
        print(f"run failed: {error} (the MLflow run is marked FAILED with this reason)", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, SystemExit):  # Ray Train answers Ctrl+C with sys.exit(0): say so, exit as Ctrl+C does
        name = resume or (config and config.tracking.run_name) or "last"
        print(f"\ninterrupted (the MLflow run is marked KILLED); continue it with: python -m pipelines.pretrain "
              f"--resume {name}", file=sys.stderr)
        return 130
    print("\n" + summary(outcome))
    return 0


if __name__ == "__main__":
    sys.exit(main())
