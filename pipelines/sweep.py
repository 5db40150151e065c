"""Ray Tune sweeps: `python -m pipelines.sweep --space tune_spaces/dino.yaml --num-samples 8 [...]`.

Each trial is a function that builds and fits a `TorchTrainer` (the Ray 2.60 pattern), so a trial
may itself be multi-worker and multi-GPU. The objective is the online kNN accuracy the training
loop reports every epoch. MLflow gets one parent run per sweep and one child run per trial; the
parent ends with a table of trials, a plot of the objective against each axis and the best
configuration, which is also written out as a preset for `pipelines.pretrain`.
"""
import argparse
import copy
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

import yaml

from pipelines.config import Config, ConfigError, apply_override, build_config, load_config, read_yaml
from pipelines.dataset_store import DatasetError
from pipelines.storage import file_exists, filesystem, latest_checkpoint, newest_folder_with, read_bytes, write_text
from pipelines.pretrain import check_job_locations, init_ray, required_cpus
from pipelines.run_registry import RUN_FILE, RunFailed, read_run_file
from pipelines.train_driver import torch_threads
from pipelines.tune_space import ROW_AXIS, Space, apply_values, load_space

SWEEP_FILE = "sweep.json"
TRIAL_ACTOR_MEMORY = 2**27  # the trial function only drives its TorchTrainer: no CPU, 128 MiB
# What every trial needs to be comparable and cheap; `--set` can still change them.
# trials report the online kNN; the final evaluation (a Ray Data job of its own) is left to `pipelines.evaluate`
SWEEP_DEFAULTS = ["eval.every_epochs=1", "eval.baseline=false", "eval.picture_every=0", "eval.final_protocols=[]"]


class SweepInterrupted(RuntimeError):
    """The sweep was stopped before every trial ended; `--resume` continues it."""


def expected_trials(state: dict, space: Space) -> int:
    grid = math.prod(len(axis.values) for axis in space.axes if axis.distribution == "grid")
    return state["num_samples"] * grid


def trial_concurrency(config: Config, cluster: dict, wanted: Optional[int]) -> int:
    """Trials that fit at once: each reserves its Train workers, augmentation actors and file listing
    (and GPUs), so trials, Train workers and Ray Data never wait on each other's CPUs."""
    fits = int(cluster.get("CPU", 0) // required_cpus(config))
    uses_gpu = config.train.use_gpu if config.train.use_gpu is not None else cluster.get("GPU", 0) > 0
    if uses_gpu:
        fits = min(fits, int(cluster.get("GPU", 0) // config.train.num_workers))
    if fits < 1:
        raise ConfigError(f"one trial reserves {required_cpus(config):g} CPUs but the cluster has "
                          f"{cluster.get('CPU', 0):g}: lower train.cpus_per_worker or data.augment_cpus")
    return min(fits, wanted) if wanted else fits


def trial_storage(base: Config, sweep_name: str) -> str:
    return f"{base.train.storage_path.rstrip('/')}/{sweep_name}/trials"


def run_trial(sampled: dict, base_tree: dict, rows: dict, sweep_name: str, parent_run_id: str, uri: str) -> None:
    """One trial: a whole pretraining (its own MLflow child run), reporting every epoch to Tune.
    A trial restarted by `--resume` continues its Train run and its MLflow run."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from pipelines.pretrain import pretrain

    trial_id = tune.get_context().get_trial_id()
    tree = apply_values(copy.deepcopy(base_tree), sampled, rows)
    base = build_config(copy.deepcopy(base_tree))
    storage = trial_storage(base, sweep_name)
    run_name = f"{sweep_name}-{trial_id}"
    if _lookup(tree, "method.teacher_run") and not _lookup(tree, "method.teacher_run_storage"):
        apply_override(tree, ["method", "teacher_run_storage"], base.train.storage_path)  # not under the trials
    apply_override(tree, ["train", "storage_path"], storage)
    apply_override(tree, ["tracking", "run_name"], run_name)
    apply_override(tree, ["tracking", "tracking_uri"], uri)
    fs, path = filesystem(f"{storage}/{run_name}/{RUN_FILE}")
    resume = run_name if fs.get_file_info(path).is_file else None
    tags = {"mlflow.parentRunId": parent_run_id, "sweep": sweep_name, "trial_id": trial_id}
    if ROW_AXIS in sampled:
        tags[ROW_AXIS] = sampled[ROW_AXIS]
    pretrain(build_config(tree), resume, tags=tags, callbacks=[TuneReportCallback()], progress=False)


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


def sweep(state: dict, resume: bool = False) -> dict:
    """Runs (or resumes) the sweep `state` describes; returns its summary."""
    from mlflow.tracking import MlflowClient
    from ray import tune

    from pipelines.tracking import check_reachable, start_run, tracking_uri

    base_tree = state["base"]
    space = space_from_state(state)  # the text saved when the sweep began, also on resume
    base = build_config(copy.deepcopy(base_tree))
    check_job_locations(base, state["tracking_uri"] if resume else tracking_uri(base))
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
        {"CPU": 0, "memory": TRIAL_ACTOR_MEMORY})
    try:
        if resume:
            tuner = tune.Tuner.restore(folder, trainable, resume_unfinished=True, resume_errored=True)
        else:
            tuner = tune.Tuner(
                trainable, param_space=space.param_space(),
                tune_config=tune.TuneConfig(
                    metric=space.objective, mode="max", num_samples=state["num_samples"],
                    max_concurrent_trials=concurrency, reuse_actors=True,
                    search_alg=searcher(state["search"], space, base.train.seed),
                    scheduler=scheduler(state["scheduler"], base, state["grace_epochs"])),
                run_config=tune.RunConfig(name=name, storage_path=base.train.storage_path, verbose=1))
        results = tuner.fit()
    except KeyboardInterrupt:
        close_interrupted(client, state)
        raise
    if len(results) < expected_trials(state, space) or unfinished_trials(folder):
        close_interrupted(client, state)
        raise SweepInterrupted(f"sweep {name} was interrupted; continue it with: {resume_command(state)}")
    outcome = summarise(client, state, space, base, results)
    client.set_terminated(parent, "FINISHED" if outcome["best"] else "FAILED")
    return outcome


def unfinished_trials(folder: str) -> list[str]:
    """Trials the saved experiment state holds as not ended: what `--resume` would run. After Ctrl-C
    `Tuner.fit()` returns normally, and its in-memory results can show a trial that never started as
    terminated; the state on storage does not."""
    from ray.tune import ExperimentAnalysis

    return [t.trial_id for t in ExperimentAnalysis(folder).trials if t.status not in ("TERMINATED", "ERROR")]


def child_runs(client, state: dict) -> list:
    parent = state["parent_run_id"]
    return client.search_runs([client.get_run(parent).info.experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{parent}'", max_results=10000)


def resume_command(state: dict) -> str:
    storage = build_config(copy.deepcopy(state["base"])).train.storage_path
    where = f" --set train.storage_path={storage}" if storage != build_config({}).train.storage_path else ""
    command = "pipelines.study" if "study" in state else "pipelines.sweep"  # a study resumes with its report
    return f"python -m {command} --resume {state['name']}{where}"


def close_interrupted(client, state: dict) -> None:
    from pipelines.tracking import fail_run

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


def trial_rows(client, state: dict, space: Space, base: Config, results) -> list[dict]:
    """Every trial with its child run: values, status, objective (last epoch), epochs. Child runs
    that Tune stopped early (ASHA) are closed here with a tag saying so."""
    statuses = {}
    for result in results:
        trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name
        statuses[trial_id] = "ERROR" if result.error else "DONE"
    storage = trial_storage(base, state["name"])
    rows = []
    for run in child_runs(client, state):
        trial_id = run.data.tags.get("trial_id", "?")
        try:
            tree = read_run_file(storage, run.info.run_name)["config"]
        except ConfigError:  # the trial failed before its Train run was set up
            tree = copy.deepcopy(state["base"])
        values = {axis.field: run.data.tags.get(ROW_AXIS) if axis.field == ROW_AXIS else _lookup(tree, axis.field)
                  for axis in space.axes}
        epochs = int(run.data.metrics.get("epoch", 0))
        status = "STOPPED" if "stopped_early" in run.data.tags else run.info.status
        if statuses.get(trial_id) == "DONE" and status in ("RUNNING", "FAILED"):
            # Tune stopped the trial after a report (ASHA; also at a rung on the last epoch): it kills the
            # trial's process, or tears its Train run down first and pretrain marks the run FAILED, maybe only now.
            run = settled(client, run.info.run_id)
            status = "STOPPED" if epochs < base.train.epochs else "FINISHED"
            if status == "STOPPED":
                client.set_tag(run.info.run_id, "stopped_early", f"by {state['scheduler']} after epoch {epochs} "
                                                                 f"of {base.train.epochs}")
            if "failure_reason" in run.data.tags:
                client.delete_tag(run.info.run_id, "failure_reason")
            log_last_backbone(client, run.info.run_id, f"{storage}/{run.info.run_name}")
            client.set_terminated(run.info.run_id, "FINISHED")
        rows.append({"trial_id": trial_id, "run_name": run.info.run_name, "run_id": run.info.run_id,
                     "status": status, "values": values, "epochs": epochs,
                     "objective": run.data.metrics.get(space.objective), "tree": tree,
                     "tagged_best": run.data.tags.get("sweep.best") == "true"})
    return sorted(rows, key=lambda row: row["trial_id"])


def settled(client, run_id: str, seconds: float = 10.0):
    """The run once a stopped trial's own `pretrain` is done with it: its failure handler may still be marking
    it FAILED (a relabel before that would be undone, as CI once saw); a trial killed outright leaves it RUNNING."""
    deadline = time.time() + seconds
    run = client.get_run(run_id)
    while run.info.status == "RUNNING" and time.time() < deadline:
        time.sleep(0.5)
        run = client.get_run(run_id)
    return run


def log_last_backbone(client, run_id: str, train_run_folder: str) -> None:
    """The weights of the trial's last checkpoint, as `pretrain` logs them when a run ends by itself."""
    checkpoint = latest_checkpoint(train_run_folder)
    if checkpoint is None:
        return
    with tempfile.TemporaryDirectory() as folder:
        for name in ("backbone.safetensors", "backbone.json"):
            (Path(folder) / name).write_bytes(read_bytes(f"{checkpoint}/{name}"))
            client.log_artifact(run_id, str(Path(folder) / name), "backbone")


def _lookup(tree: dict, field: str):
    node = tree
    for key in field.split("."):
        node = node.get(key) if isinstance(node, dict) else None
    return node


def best_preset(row: dict, base: Config) -> dict:
    tree = copy.deepcopy(row["tree"])
    tree["train"]["storage_path"] = base.train.storage_path
    tree["train"]["torch_threads"] = None
    tree["tracking"]["run_name"] = None
    return build_config(tree).model_dump(mode="json")


def summarise(client, state: dict, space: Space, base: Config, results) -> dict:
    from pipelines.sweep_report import markdown_table, objective_plot, trial_table
    from pipelines.tracking import log_figure

    parent = state["parent_run_id"]
    rows = trial_rows(client, state, space, base, results)
    finished = [row for row in rows if row["objective"] is not None and row["status"] in ("FINISHED", "STOPPED")]
    # Among the trials that ran longest (ASHA stops some early), the highest objective.
    best = max(finished, key=lambda row: (row["epochs"], row["objective"])) if finished else None
    for row in rows:
        if row["tagged_best"] and row is not best:  # a resumed sweep can find a better trial
            client.delete_tag(row["run_id"], "sweep.best")
    if best:
        best["best"] = True
        client.set_tag(best["run_id"], "sweep.best", "true")
        client.set_tag(parent, "best_run_id", best["run_id"])
        client.set_tag(parent, "best_trial", best["trial_id"])
        client.log_metric(parent, f"best_{space.objective}", best["objective"])
        for field, value in best["values"].items():
            client.set_tag(parent, f"best.{field}", str(value))
    table = trial_table(rows, space)
    preset_path = state.get("out") or f"{base.train.storage_path.rstrip('/')}/{state['name']}/best.yaml"
    client.log_dict(parent, table, "trials.json")
    client.log_text(parent, markdown_table(table) + "\n", "trials.md")
    log_figure(client, parent, objective_plot(rows, space), "objective_vs_axes.png")
    if best:
        header = (f"# Best trial {best['trial_id']} of sweep {state['name']} ({space.objective} "
                  f"{best['objective']:.4f}); from {state['space_file']}\n")
        text = header + yaml.safe_dump(best_preset(best, base), sort_keys=False)
        client.log_text(parent, text, "best_preset.yaml")
        fs, path = filesystem(preset_path)
        fs.create_dir(str(Path(path).parent), recursive=True)
        with fs.open_output_stream(path) as stream:
            stream.write(text.encode())
    return {"name": state["name"], "parent_run_id": parent, "tracking_uri": state["tracking_uri"], "rows": rows,
            "table": table, "best": best, "preset": preset_path if best else None}


def new_state(space_file: Optional[str], overrides: Sequence[str] = (), config: Optional[str] = None,
              search: str = "random", scheduler: str = "fifo", num_samples: int = 1, grace_epochs: int = 1,
              max_concurrent: Optional[int] = None, name: Optional[str] = None, out: Optional[str] = None) -> dict:
    """A new sweep's state (what `sweep` runs and a resume reads back): the space file, the base configuration
    with `overrides`, the search, scheduler and their settings."""
    if not space_file:
        raise ConfigError("--space is required (one of tune_spaces/*.yaml), unless you --resume a sweep")
    base_tree = read_yaml(config) if config else None
    space, base_tree = load_space(space_file, base_tree, SWEEP_DEFAULTS + list(overrides))
    base = build_config(copy.deepcopy(base_tree))
    if search == "optuna" and space.has_grid:
        searcher("optuna", space, 0)  # raises the message
    name = name or f"{space.method}-sweep-{time.strftime('%Y%m%d-%H%M%S')}"
    if file_exists(f"{base.train.storage_path.rstrip('/')}/{name}/{SWEEP_FILE}"):
        raise ConfigError(f"a sweep named '{name}' exists under {base.train.storage_path}: --resume {name} or pick "
                          "another --name")
    return {"name": name, "space_file": str(space_file), "space_text": Path(space_file).read_text(),
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


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m pipelines.sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", help="sweep space, e.g. tune_spaces/dino.yaml")
    parser.add_argument("--config", help="preset the trials start from (default: the space's `preset`)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a field of every trial, e.g. --set train.epochs=4 (repeatable)")
    parser.add_argument("--num-samples", type=int, default=4, help="trials to sample (with grid axes: grid repeats)")
    parser.add_argument("--search", choices=["random", "optuna"], default="random", help="optuna: TPE")
    parser.add_argument("--scheduler", choices=["fifo", "asha"], default="fifo",
                        help="asha: stop the worse half of trials at each rung (epochs)")
    parser.add_argument("--grace-epochs", type=int, default=1, help="ASHA: epochs every trial gets")
    parser.add_argument("--max-concurrent", type=int, help="at most this many trials at once "
                                                           "(default: as many as the cluster's CPUs and GPUs fit)")
    parser.add_argument("--name", help="sweep name (default: <method>-sweep-<time>)")
    parser.add_argument("--out", help="where to write the best preset (default: <storage>/<name>/best.yaml)")
    parser.add_argument("--resume", metavar="NAME", help="continue an interrupted sweep ('last': the newest); "
                                                          "finished trials are kept, not rerun")
    args = parser.parse_args(argv)
    if args.num_samples < 1:
        parser.error("--num-samples must be at least 1")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    try:
        state = resumed_state(args.resume, args.overrides) if args.resume else new_state(
            args.space, args.overrides, args.config, args.search, args.scheduler, args.num_samples, args.grace_epochs,
            args.max_concurrent, args.name, args.out)
        outcome = sweep(state, resume=bool(args.resume))
    except (ConfigError, DatasetError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except RunFailed as error:
        print(f"sweep failed: {error}", file=sys.stderr)
        return 1
    except SweepInterrupted as error:
        print(f"\n{error}", file=sys.stderr)
        return 130
    from pipelines.sweep_report import markdown_table
    from pipelines.tracking import ui_command

    print("\n" + markdown_table(outcome["table"]))
    if outcome["best"]:
        best = outcome["best"]
        print(f"\nbest trial {best['trial_id']}: {json.dumps(best['values'])} -> {best['objective']:.4f}")
        print(f"best preset: {outcome['preset']}\n  python -m pipelines.pretrain --config {outcome['preset']}")
    else:
        print("\nno trial finished: see the failure_reason tag of each child run")
    print(f"MLflow parent run {outcome['parent_run_id']}; open the UI: {ui_command(outcome['tracking_uri'])}")
    return 0 if outcome["best"] else 1


if __name__ == "__main__":
    sys.exit(main())
