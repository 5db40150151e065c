"""A pretraining end to end (`python -m pipelines.pretrain` calls `pretrain`): the checks, Ray, the MLflow run,
the Ray Train run, the logged model and the evaluation at the end.

Locally it starts a Ray instance and writes to an MLflow store in the project folder; under
`ray job submit` (or with RAY_ADDRESS set) it joins that cluster. A resumed run continues from its last
checkpoint, in the same MLflow run.
"""
import json
import logging
import shutil
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from pipelines.config.load import config_yaml
from pipelines.config.methods import DistillConfig
from pipelines.config.recipe import recipe_notes
from pipelines.config.schema import Config
from pipelines.config.section import ConfigError
from pipelines.data.store import read_info
from pipelines.storage.files import DatasetError, write_text
from pipelines.storage.runs import RUN_FILE, RunFailed, failure_reason, read_run_file, run_exists, run_weights
from pipelines.tracking.uri import tracking_uri
from pipelines.training.checks import check_job_locations, init_ray, steps_per_epoch
from pipelines.training.trainer import fit, random_init_backbone


@dataclass
class RunResult:
    """A finished pretraining: its names, the last epoch's training metrics, the evaluation at its end (eval/...
    without the prefix; empty without labels or eval.final_protocols; init_*: the backbone as it started), and
    where MLflow keeps its artifacts."""
    run_name: str
    run_id: str
    tracking_uri: str
    metrics: dict[str, float]
    evaluation: dict[str, float]
    artifact_uri: str
    init: Optional[str] = None  # model.init: the weights the backbone started from (None: random)


def pretrain(config: Config, resume: Optional[str] = None, tags: Optional[dict] = None, trial: bool = False,
             verbose: bool = True, progress: bool = True) -> RunResult:
    """Runs (or resumes, `resume`: the run's name) one pretraining.
    `tags` go on a new MLflow run (a sweep's parent id); `trial`: run as a Tune trial (reports each epoch to Tune);
    `verbose`: Ray's and the workers' output on this console; `progress`: the progress line."""
    from concurrent.futures import ThreadPoolExecutor

    check_job_locations(config, tracking_uri(config))
    info = read_info(config.data.path)
    if info.splits.get("train", 0) == 0:
        raise DatasetError(f"dataset '{config.data.path}' has no training images")
    if info.min_side and info.min_side < config.data.image_size:
        print(f"note: the smallest images are {info.min_side} px on their shorter side; their crops are "
              f"upsampled to data.image_size={config.data.image_size}", flush=True)
    for note in recipe_notes(config):
        print(f"note: {note}", flush=True)
    with ThreadPoolExecutor(1, thread_name_prefix="run-checks") as pool:
        # the checks import torch, timm and MLflow (seconds of CPU) while Ray's processes start, on cores those leave
        # free (none on 2 busy cores: BENCHMARKS.md); any mistake they find is still told before training starts
        checks = pool.submit(check_run, config, info, resume)
        try:
            init_ray(config, verbose)
        except BaseException:
            checks.result()  # a mistake in the configuration explains more than what Ray made of it
            raise
        spe, previous, uri, teacher = checks.result()
    from mlflow.tracking import MlflowClient

    from pipelines.features.extract import eval_plan
    from pipelines.tracking.mlflow_runs import fail_run, log_dataset, start_run
    from pipelines.tracking.pictures import augmented_views_grid

    if not verbose:
        logging.getLogger("mlflow").setLevel(logging.WARNING)

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
        if not resume:
            log_dataset(client, run_id, config.data.path, info)
        client.log_image(run_id, augmented_views_grid(config, info), "augmented_views.png")
        baseline = random_init_backbone(config, info, spe, teacher) if info.labelled and config.eval.baseline \
            and not resume and config.eval.final_protocols else None
        teacher = None  # the workers load their own
        result = fit(config, info, spe, run_name, run_id, uri, trial, progress)
        with result.checkpoint.as_directory() as folder:
            for name in ("backbone.safetensors", "backbone.json"):
                client.log_artifact(run_id, str(Path(folder) / name), "backbone")
            if config.tracking.log_model:
                from pipelines.tracking.logged_model import log_backbone_model

                log_backbone_model(uri, run_id, folder, config.tracking.registered_model)
        evaluated = evaluate_at_end(config, info, run_name, baseline)
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C: Ray Train's SIGINT handler aborts the run, then sys.exit()s
        fail_run(client, run_id, "interrupted by the user", status="KILLED")
        raise
    except Exception as error:
        reason = failure_reason(error)
        fail_run(client, run_id, reason, details=traceback.format_exc())
        raise RunFailed(reason) from error
    finally:
        if baseline:
            shutil.rmtree(baseline, ignore_errors=True)
    client.set_terminated(run_id, "FINISHED")
    return RunResult(run_name, run_id, uri, dict(result.metrics), evaluated, client.get_run(run_id).info.artifact_uri,
                     config.model.init)


def check_run(config: Config, info, resume: Optional[str]) -> tuple[int, Optional[dict], str, object]:
    """What `pretrain` checks before it starts a run, and what they find: steps per epoch, the resumed run's file,
    the MLflow URI (its store opened: a new SQLite store's tables are made here) and a distillation teacher."""
    from pipelines.data.stream import train_size
    from pipelines.tracking.mlflow_runs import check_reachable, open_store
    from pipelines.training.methods import build_spec, head_arguments

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
    open_store(uri)
    if config.model.init:  # a missing or unfit file is told now, not by every worker
        from pipelines.training.init_weights import initial_backbone, resolve_init

        resolve_init(config, uri)
        initial_backbone(build_spec(config, info.channels), config.model.init, config.train.storage_path)
    teacher = None
    if isinstance(config.method, DistillConfig):  # a missing or unfit teacher is told now, not by every worker
        from pipelines.training.teacher import load_teacher, resolve_teacher

        resolve_teacher(config, uri)
        teacher = load_teacher(config.method, config.train.storage_path, info.channels, info.mean, info.std)
    return spe, previous, uri, teacher


def evaluate_at_end(config: Config, info, run_name: str, baseline: Optional[str]) -> dict[str, float]:
    """`eval.final_protocols` by the transfer stage on the final checkpoint (the Train workers are gone by now)."""
    protocols = config.eval.final_protocols
    if not protocols or not info.labelled:
        return {}
    from pipelines.evaluation.transfer import final_evaluation

    print(f"evaluating the trained backbone: {', '.join(protocols)} on {config.data.path} "
          "(as `python -m pipelines.evaluate`)", flush=True)
    record = read_run_file(config.train.storage_path, run_name)
    pixels_cache = f"{config.train.storage_path.rstrip('/')}/baselines" if config.eval.pixel_baseline else None
    return final_evaluation(run_weights(config.train.storage_path, run_name), info, config.data.path, list(protocols),
                            record, run_name, (config.eval.final_bank_size, config.eval.final_query_size),
                            config.train.seed, baseline, pixels_cache)


def summary(outcome: RunResult) -> str:
    metrics, lines, evaluated = outcome.metrics, [], outcome.evaluation
    for key in sorted(k for k in evaluated if k.startswith("knn_top1_k")):
        k = key.removeprefix("knn_top1_k")
        before, pixels = evaluated.get(f"init_knn_top1_k{k}"), evaluated.get(f"pixels_knn_top1_k{k}")
        start = f"{'at its start' if outcome.init else 'random init'} {before:.2%} -> " if before is not None else ""
        beside = f" (raw pixels {pixels:.2%})" if pixels is not None else ""
        lines.append(f"kNN top-1 (k={k}): {start}pretrained {evaluated[key]:.2%}{beside}")
    if "linear_top1" in evaluated:
        lines.append(f"linear probe top-1: {evaluated['linear_top1']:.2%}")
    if not lines:
        lines.append("no final evaluation (the dataset has no labels, or eval.final_protocols is empty)")
    from pipelines.tracking.mlflow_runs import ui_command

    lines += [
        f"throughput: {metrics.get('images_per_second', 0):.0f} images/s (last epoch)",
        f"MLflow run id: {outcome.run_id} (run name {outcome.run_name})",
        f"backbone weights: {outcome.artifact_uri}/backbone",
        f"open the MLflow UI: {ui_command(outcome.tracking_uri)}",
        f"resume or extend: python -m pipelines.pretrain --resume {outcome.run_name} --set train.epochs=N",
    ]
    return "\n".join(lines)
