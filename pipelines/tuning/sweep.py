"""Ray Tune sweeps (`python -m pipelines.sweep`): a sweep's state, its trials, resuming it.

Each trial is a whole pretraining: one of a single worker trains in its Tune actor (pipelines/training/session.py),
one of several builds and fits a `TorchTrainer` (the Ray 2.60 pattern: multi-worker, multi-GPU). The objective is the online kNN accuracy the training
loop reports every epoch. MLflow gets one parent run per sweep and one child run per trial; the
parent ends with a table of trials, a plot of the objective against each axis and the best
configuration, which is also written out as a preset for `pipelines.pretrain` (tuning.sweep_summary).
"""
import copy
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

import yaml

from pipelines.config.load import apply_override, build_config, load_config, read_yaml
from pipelines.config.schema import Config
from pipelines.config.section import ConfigError
from pipelines.storage.files import file_exists, filesystem, newest_folder_with, write_text
from pipelines.storage.runs import RUN_FILE, read_run_file
from pipelines.training.checks import check_job_locations, init_ray
from pipelines.training.driver import torch_threads
from pipelines.tuning.space import ROW_AXIS, Space, apply_values, load_space
from pipelines.tuning.sweep_summary import errored_trials, summarise
from pipelines.tuning.trials import child_runs, tree_value, trial_concurrency, trial_failures, trial_resources
from pipelines.tuning.trials import trial_storage

SWEEP_FILE = "sweep.json"


# What every trial needs to be comparable and cheap; `--set` can still change them.
# trials report the online kNN; the final evaluation (a Ray Data job of its own) is left to `pipelines.evaluate`
SWEEP_DEFAULTS = ["eval.every_epochs=1", "eval.baseline=false", "eval.picture_every=0", "eval.final_protocols=[]"]


class SweepInterrupted(RuntimeError):
    """The sweep was stopped before every trial ended; `--resume` continues it."""


def expected_trials(state: dict, space: Space) -> int:
    grid = math.prod(len(axis.values) for axis in space.axes if axis.distribution == "grid")
    return state["num_samples"] * grid


def run_trial(sampled: dict, base_tree: dict, rows: dict, sweep_name: str, parent_run_id: str, uri: str) -> None:
    """One trial: a whole pretraining (its own MLflow child run), reporting every epoch to Tune.
    A trial restarted by `--resume` continues its Train run and its MLflow run; one whose run had finished
    (Ctrl-C after its end, before Tune recorded it) reports what its run logged and trains nothing."""
    from ray import tune

    from pipelines.pretraining.run import pretrain
    from pipelines.training.init_weights import RUN_PREFIX, run_folder

    trial_id = tune.get_context().get_trial_id()
    tree = apply_values(copy.deepcopy(base_tree), sampled, rows)
    base = build_config(copy.deepcopy(base_tree))
    storage = trial_storage(base, sweep_name)
    run_name = f"{sweep_name}-{trial_id}"
    if tree_value(tree, "method.teacher_run") and not tree_value(tree, "method.teacher_run_storage"):
        apply_override(tree, ["method", "teacher_run_storage"], base.train.storage_path)  # not under the trials
    if str(tree_value(tree, "model.init")).startswith(RUN_PREFIX):  # the run lives where the sweep's base stores
        apply_override(tree, ["model", "init"], run_folder(tree_value(tree, "model.init"), base.train.storage_path))
    apply_override(tree, ["train", "storage_path"], storage)
    apply_override(tree, ["tracking", "run_name"], run_name)
    apply_override(tree, ["tracking", "tracking_uri"], uri)
    fs, path = filesystem(f"{storage}/{run_name}/{RUN_FILE}")
    resume = run_name if fs.get_file_info(path).is_file else None
    if resume and report_finished_run(read_run_file(storage, run_name)):
        return
    tags = {"mlflow.parentRunId": parent_run_id, "sweep": sweep_name, "trial_id": trial_id}
    if ROW_AXIS in sampled:
        tags[ROW_AXIS] = sampled[ROW_AXIS]
    pretrain(build_config(tree), resume, tags=tags, trial=True, progress=False)


def report_finished_run(run_file: dict) -> bool:
    """Reports the run's last logged metrics to Tune if its MLflow run has FINISHED."""
    from mlflow.tracking import MlflowClient
    from ray import tune

    run = MlflowClient(run_file["tracking_uri"]).get_run(run_file["mlflow_run_id"])
    if run.info.status != "FINISHED":
        return False
    tune.report({key: value for key, value in run.data.metrics.items() if math.isfinite(value)})
    return True


def searcher(kind: str, space: Space, seed: int):
    if kind == "random":
        return None  # Tune's own: random samples, every grid point
    if space.has_grid:
        grids = [axis.field for axis in space.axes if axis.distribution == "grid"]
        raise ConfigError(f"{space.path}: grid axes ({', '.join(grids)}) need --search random; Optuna samples")
    from ray.tune.search.optuna import OptunaSearch

    return OptunaSearch(metric=space.objective, mode="max", seed=seed)


def scheduler(kind: str, config: Config, grace_epochs: int):
    if kind == "fifo":
        return None
    from ray.tune.schedulers import ASHAScheduler

    # max_t past the last epoch: ASHA stops trials that reach max_t, which would kill every trial
    # while it saves its weights.
    return ASHAScheduler(time_attr="epoch", max_t=config.train.epochs + 1,
                         grace_period=min(grace_epochs, config.train.epochs), reduction_factor=2)


def check_objective_measurable(objective: str, data: str) -> None:
    """A kNN objective on a dataset without labels is never reported: every trial would fail."""
    from pipelines.data.store import read_info

    if objective.startswith("knn") and not read_info(data).labelled:
        raise ConfigError(f"objective {objective} needs labels, and {data} has none: use objective: rankme (the "
                          "embeddings' effective rank, measured without labels)")


def run_sweep(state: dict, resume: bool = False) -> dict:
    """Runs (or resumes) the sweep `state` describes; returns its summary."""
    from mlflow.tracking import MlflowClient
    from ray import tune

    from pipelines.tracking.mlflow_runs import check_reachable, start_run
    from pipelines.tracking.uri import tracking_uri

    base_tree = state["base"]
    space = space_from_state(state)  # the text saved when the sweep began, also on resume
    base = build_config(copy.deepcopy(base_tree))
    check_job_locations(base, state["tracking_uri"] if resume else tracking_uri(base))
    check_objective_measurable(space.objective, base.data.path)
    check_reachable(state["tracking_uri"] if resume else tracking_uri(base))
    init_ray(base)
    import ray

    concurrency = trial_concurrency(base, ray.cluster_resources(), state["max_concurrent"])
    if base.train.torch_threads is None and not os.environ.get("RAY_ADDRESS"):
        threads = torch_threads(concurrency * base.train.num_workers)
        apply_override(base_tree, ["train", "torch_threads"], threads)  # one machine: share its cores
    name = state["name"]
    folder = f"{base.train.storage_path.rstrip('/')}/{name}"
    if resume:
        uri, parent = state["tracking_uri"], state["parent_run_id"]
        client = MlflowClient(uri)
        client.update_run(parent, status="RUNNING")
    else:
        uri = tracking_uri(base)
        client, parent = start_run(base, uri, name, {"sweep": name, "sweep.space": state["space_file"]})
        state.update(tracking_uri=uri, parent_run_id=parent)
        for key, value in {"sweep.search": state["search"], "sweep.scheduler": state["scheduler"],
                           "sweep.num_samples": state["num_samples"], "sweep.objective": space.objective,
                           "sweep.concurrency": concurrency,
                           **{f"sweep.axis.{a.field}": describe(a) for a in space.axes}}.items():
            client.log_param(parent, key, str(value)[:6000])
        write_text(folder, SWEEP_FILE, json.dumps(state, indent=2))
    print(f"sweep {name}: MLflow parent run {parent}; {concurrency} trial(s) at a time; "
          f"objective {space.objective} (max)", flush=True)

    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base_tree=base_tree, rows=space.rows, sweep_name=name, parent_run_id=parent, uri=uri),
        trial_resources(base, ray.cluster_resources()))
    try:
        if resume:
            tuner = tune.Tuner.restore(folder, trainable, resume_unfinished=True, resume_errored=True)
        else:
            tuner = tune.Tuner(
                trainable, param_space=space.param_space(),
                tune_config=tune.TuneConfig(
                    metric=space.objective, mode="max", num_samples=state["num_samples"],
                    # a trial's actor, imports done, serves the next (benchmarks/sweep_overhead.py), except under
                    # ASHA: a trial it stopped trains on (or tears its Train run down) until its actor ends, and
                    # reusing that actor failed the next trial (the reset waits 2 s for the thread)
                    max_concurrent_trials=concurrency, reuse_actors=state["scheduler"] == "fifo",
                    search_alg=searcher(state["search"], space, base.train.seed),
                    scheduler=scheduler(state["scheduler"], base, state["grace_epochs"])),
                run_config=tune.RunConfig(name=name, storage_path=base.train.storage_path, verbose=1,
                                          failure_config=trial_failures(base)))
        results = tuner.fit()
    except KeyboardInterrupt:
        close_interrupted(client, state)
        raise
    saved = saved_trials(folder)
    if len(results) < expected_trials(state, space) or unfinished_trials(saved):
        close_interrupted(client, state)
        raise SweepInterrupted(f"sweep {name} was interrupted; continue it with: {resume_command(state)}")
    outcome = summarise(client, state, space, base, results, errored_trials(saved))
    client.set_terminated(parent, "FINISHED" if outcome["best"] else "FAILED")
    return outcome


def saved_trials(folder: str) -> list:
    """Tune's trials as its experiment state on storage holds them. After Ctrl-C `Tuner.fit()` returns normally, and
    its in-memory results can show a trial that never started as terminated; the state on storage does not."""
    from ray.tune import ExperimentAnalysis

    return ExperimentAnalysis(folder).trials


def unfinished_trials(saved: list) -> list[str]:
    """Trials not ended: what `--resume` would run."""
    return [t.trial_id for t in saved if t.status not in ("TERMINATED", "ERROR")]


def resume_command(state: dict) -> str:
    storage = build_config(copy.deepcopy(state["base"])).train.storage_path
    where = f" --set train.storage_path={storage}" if storage != build_config({}).train.storage_path else ""
    command = "pipelines.study" if "study" in state else "pipelines.sweep"  # a study resumes with its report
    return f"python -m {command} --resume {state['name']}{where}"


def close_interrupted(client, state: dict) -> None:
    from pipelines.tracking.mlflow_runs import fail_run

    reason = f"sweep interrupted; resume with: {resume_command(state)}"
    for run in child_runs(client, state):
        if run.info.status == "RUNNING":
            fail_run(client, run.info.run_id, reason, status="KILLED")
    fail_run(client, state["parent_run_id"], reason, status="KILLED")


def describe(axis) -> str:
    return f"{axis.distribution}[{axis.low}, {axis.high}]" if axis.values == [] else f"{axis.distribution}{axis.values}"


def space_from_state(state: dict) -> Space:
    return load_space_text(state["space_text"], state["space_file"], state["base"])


def load_space_text(text: str, where: str, base_tree: dict) -> Space:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / Path(where).name
        path.write_text(text)
        space, _ = load_space(path, copy.deepcopy(base_tree))
    space.path = where
    return space


def new_state(space_file: Optional[str], overrides: Sequence[str] = (), config: Optional[str] = None,
              search: str = "random", scheduler: str = "fifo", num_samples: int = 1, grace_epochs: int = 1,
              max_concurrent: Optional[int] = None, name: Optional[str] = None, out: Optional[str] = None,
              objective: Optional[str] = None) -> dict:
    """A new sweep's state (what `sweep` runs and a resume reads back): the space file (its objective replaced by
    `objective` when given), the base configuration with `overrides`, the search, scheduler and their settings."""
    if not space_file:
        raise ConfigError("--space is required (one of tune_spaces/*.yaml), unless you --resume a sweep")
    base_tree = read_yaml(config) if config else None
    space, base_tree = load_space(space_file, base_tree, SWEEP_DEFAULTS + list(overrides))
    text = Path(space_file).read_text()
    if objective:
        text = yaml.safe_dump({**read_yaml(space_file), "objective": objective}, sort_keys=False)
        space = load_space_text(text, str(space_file), base_tree)  # the objective checked as the file's would be
    base = build_config(copy.deepcopy(base_tree))
    if search == "optuna" and space.has_grid:
        searcher("optuna", space, 0)  # raises the message
    name = name or f"{space.method}-sweep-{time.strftime('%Y%m%d-%H%M%S')}"
    if file_exists(f"{base.train.storage_path.rstrip('/')}/{name}/{SWEEP_FILE}"):
        raise ConfigError(f"a sweep named '{name}' exists under {base.train.storage_path}: --resume {name} or pick "
                          "another --name")
    return {"name": name, "space_file": str(space_file), "space_text": text,
            "base": json.loads(json.dumps(base_tree)), "num_samples": num_samples, "search": search,
            "scheduler": scheduler, "grace_epochs": grace_epochs, "max_concurrent": max_concurrent, "out": out}


def resumed_state(name: str, overrides: Sequence[str] = ()) -> dict:
    """The state of the sweep `name` ('last': the newest) under the storage path `overrides` give."""
    storage = load_config(None, list(overrides)).train.storage_path
    if name == "last":
        name = newest_folder_with(storage, SWEEP_FILE)
        if name is None:
            raise ConfigError(f"no sweep to resume under {storage}")
    fs, path = filesystem(f"{storage.rstrip('/')}/{name}/{SWEEP_FILE}")
    if not fs.get_file_info(path).is_file:
        raise ConfigError(f"no sweep named '{name}' under {storage} (nothing to resume)")
    with fs.open_input_stream(path) as stream:
        return json.loads(stream.read())
