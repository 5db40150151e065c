"""A sweep's end: each trial's row from MLflow, the best preset, the table and plot on the parent run."""
import copy
import tempfile
import time
from pathlib import Path

import yaml

from pipelines.config.load import build_config
from pipelines.config.schema import Config
from pipelines.config.section import ConfigError
from pipelines.storage.files import filesystem, latest_checkpoint, read_bytes
from pipelines.storage.runs import read_run_file
from pipelines.tuning.space import ROW_AXIS, Space
from pipelines.tuning.trials import child_runs, tree_value, trial_storage


def trial_rows(client, state: dict, space: Space, base: Config, results, errored: list[tuple[str, dict, str]]
               ) -> list[dict]:
    """Every trial with its child run: values, status, objective (last epoch), epochs; and each of `errored`
    (`errored_trials`) that has none. Child runs that Tune stopped early (ASHA) are closed here with a tag saying
    so."""
    statuses = {}
    for result in results:
        trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name
        statuses[trial_id] = "ERROR" if result.error else "DONE"
    storage = trial_storage(base, state["name"])
    rows, deadline = [], time.time() + 10  # one wait for all the stopped trials' own handlers
    for run in child_runs(client, state):
        trial_id = run.data.tags.get("trial_id", "?")
        try:
            tree = read_run_file(storage, run.info.run_name)["config"]
        except ConfigError:  # the trial failed before its Train run was set up
            tree = copy.deepcopy(state["base"])
        values = {axis.field: run.data.tags.get(ROW_AXIS) if axis.field == ROW_AXIS else tree_value(tree, axis.field)
                  for axis in space.axes}
        epochs = int(run.data.metrics.get("epoch", 0))
        status = "STOPPED" if "stopped_early" in run.data.tags else run.info.status
        if statuses.get(trial_id) == "DONE" and status in ("RUNNING", "FAILED", "KILLED"):
            # Tune stopped the trial after a report (ASHA; also at a rung on the last epoch): it kills the
            # trial's process, or ends its training thread (SystemExit: pretrain marks the run KILLED) or tears its
            # Train run down (pretrain marks it FAILED), maybe only now.
            run = settled(client, run.info.run_id, deadline)
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
    return sorted(rows + errored_before_their_runs(errored, {row["trial_id"] for row in rows}, space),
                  key=lambda row: row["trial_id"])


def errored_before_their_runs(errored: list[tuple[str, dict, str]], with_runs: set[str], space: Space) -> list[dict]:
    """Trials that failed before their MLflow run existed (Tune could not start them), each (trial id, the values
    Tune gave it, its error): rows with the error, so the table shows every trial the sweep asked for."""
    return [{"trial_id": trial_id, "run_name": None, "run_id": None, "status": "ERROR",
             "values": {axis.field: sampled.get(axis.field) for axis in space.axes}, "epochs": 0, "objective": None,
             "tree": {}, "tagged_best": False, "error": error}
            for trial_id, sampled, error in errored if trial_id not in with_runs]


def errored_trials(saved: list) -> list[tuple[str, dict, str]]:
    """(trial id, sampled values, the error's last line) of each of Tune's saved trials (`sweep.saved_trials`) that
    ended in ERROR (a result's own metrics can be another trial's when Tune failed to hand it an actor)."""
    found = []
    for trial in saved:
        if trial.status == "ERROR":
            error = str(trial.get_pickled_error() or "error not saved").strip().splitlines() or ["?"]
            found.append((trial.trial_id, dict(trial.config), error[-1][:300]))
    return found


def settled(client, run_id: str, deadline: float):
    """The run once a stopped trial's own `pretrain` is done with it (or at `deadline`): its failure handler may still
    be marking it FAILED (a relabel before that would be undone, as CI once saw); a trial killed outright (one that
    trained in its Tune actor) leaves it RUNNING."""
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


def best_preset(row: dict, base: Config) -> dict:
    tree = copy.deepcopy(row["tree"])
    tree["train"]["storage_path"] = base.train.storage_path
    tree["train"]["torch_threads"] = None
    tree["tracking"]["run_name"] = None
    return build_config(tree).model_dump(mode="json")


def summarise(client, state: dict, space: Space, base: Config, results, errored: list[tuple[str, dict, str]]) -> dict:
    from pipelines.tracking.mlflow_runs import log_figure
    from pipelines.tuning.plots import objective_plot
    from pipelines.tuning.report import markdown_table, trial_table

    parent = state["parent_run_id"]
    rows = trial_rows(client, state, space, base, results, errored)
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
