"""Sweeps for real: Ray Tune trials that each train on a Fashion-MNIST slice in their Tune actor, their MLflow
parent and child runs, ASHA's early stop, bad spaces."""
import json
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipelines import sweep
from pipelines.config.load import load_config
from pipelines.config.project import PROJECT_ROOT
from pipelines.config.section import ConfigError
from pipelines.tuning.trials import trial_concurrency, trial_resources
from tests.helpers import mlflow_store, tiny_overrides

SIMCLR_SPACE = str(PROJECT_ROOT / "tune_spaces" / "simclr.yaml")


def sweep_arguments(data: str, folder: Path, name: str, samples: int = 2, space: str = SIMCLR_SPACE) -> list[str]:
    # 0.25 CPU per Train worker: one trial (0.25 + 0.5 augmentation + 1 file listing) at a time in the 3-CPU session
    overrides = tiny_overrides(data, str(folder / "runs"), mlflow_store(folder), "simclr",
                               **{"train.epochs": 2, "train.cpus_per_worker": 0.25, "data.limit": 256})
    return ["--space", space, "--num-samples", str(samples), "--name", name,
            *[part for text in overrides for part in ("--set", text)]]


def children(client: MlflowClient, parent_id: str) -> list:
    experiment = client.get_run(parent_id).info.experiment_id
    return client.search_runs([experiment], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")


def parent_of(client: MlflowClient, name: str):
    experiment = client.get_experiment_by_name("simclr").experiment_id
    return client.search_runs([experiment], filter_string=f"tags.sweep = '{name}' and attributes.run_name = '{name}'")[0]


@pytest.mark.slow
def test_a_sweep_runs_its_trials_as_child_runs_asha_stops_the_ones_sure_to_lose_and_the_best_becomes_a_preset(
        ray_session, fmnist_slice, tmp_path, capsys):
    """Five trials under ASHA (rungs after epochs 1, 2 and 4 of 4), two at a time, each with its own sampled
    temperature. The first two (kNN banks of 320 and 256 images) run together. The other three have a bank of one
    image, so they predict that image's class for every query (about 10 %): each starts only when an earlier
    trial has left, which had recorded the first rung, so each loses that rung for certain and Tune stops it. The
    fifth starts in the place of a stopped one (Tune reusing such a trial's actor failed the next trial: CI saw
    it). A stopped trial's MLflow run is FINISHED (not FAILED, though Tune ended its process), tagged
    `stopped_early`, with the weights of its last epoch. Of the first two, whichever comes second to a rung below
    the other may be stopped too; one of them always runs to the end, and the best trial (the longest run, then
    the highest objective) becomes the sweep's preset. 4 epochs, not 2: an epoch here takes 2 s, and with 2 the
    Train run once finished its last epoch before Tune's stop reached it (then it did run to the end, and its run
    rightly says so). (Optuna's search: the sweep under `ray job submit` in tests/end_to_end/test_cluster.py; an
    interrupted sweep resumed without rerunning a finished trial: the SimSiam study in tests/tuning/test_studies.py,
    a study being a sweep of rows.)"""
    space = tmp_path / "asha.yaml"
    space.write_text(yaml.safe_dump({"method": "simclr", "objective": "knn_top1_k20", "axes": {
        "eval.online_bank_size": {"distribution": "grid", "values": [320, 256, 1, 1, 1]},
        "method.temperature": {"distribution": "loguniform", "low": 0.05, "high": 0.5}}}))
    arguments = sweep_arguments(fmnist_slice, tmp_path, "asha", samples=1, space=str(space))
    assert sweep.main(arguments + ["--max-concurrent", "2", "--scheduler", "asha", "--grace-epochs", "1",
                                   "--set", "train.epochs=4", "--set", "data.augment_cpus=0.25"]) == 0
    client = MlflowClient(mlflow_store(tmp_path))
    parent = parent_of(client, "asha")
    assert parent.info.status == "FINISHED" and parent.data.params["sweep.scheduler"] == "asha"
    assert parent.data.params["sweep.concurrency"] == "2"
    runs = sorted(children(client, parent.info.run_id), key=lambda run: run.info.run_name)  # in the grid's order
    assert [run.data.params["eval.online_bank_size"] for run in runs] == ["320", "256", "1", "1", "1"]
    assert {run.info.status for run in runs} == {"FINISHED"}
    temperatures = {float(run.data.params["method.temperature"]) for run in runs}
    assert len(temperatures) == 5 and all(0.05 <= t <= 0.5 for t in temperatures)
    ran = [int(run.data.metrics["epoch"]) for run in runs]  # a stopped one: its rung, or the epoch after
    assert max(ran[:2]) == 4 and all(1 <= epochs < 4 for epochs in ran[2:])
    last_report = []
    for run, epochs in zip(runs, ran):  # every epoch's objective is a point of the trial's curve
        curve = client.get_metric_history(run.info.run_id, "knn_top1_k20")
        assert [m.step for m in curve] == [4 * (epoch + 1) for epoch in range(epochs)]
        assert all(0 < m.value <= 1 for m in curve)
        assert ("stopped_early" in run.data.tags) == (epochs < 4) and "failure_reason" not in run.data.tags
        # one worker: the trial trained in its Tune actor (no Train run), its last checkpoint where Train's would be
        assert run.data.tags["trained_in"] == "tune trial"
        checkpoints = list((tmp_path / "runs" / "asha" / "trials" / run.info.run_name).glob("checkpoint_*"))
        assert len(checkpoints) == 1 and json.loads((checkpoints[0] / "backbone.json").read_text())["epochs"] in (
            epochs - 1, epochs)  # a trial stopped between logging an epoch and storing its checkpoint has the one before
        if epochs < 4:
            assert run.data.tags["stopped_early"] == f"by asha after epoch {epochs} of 4"
        last_report.append(curve[-1].timestamp)
    first, second, *stopped = runs
    # the first two ran at once; each later one started once an earlier one had reported for the last time, the
    # fifth once one of the stopped third and fourth had
    assert max(first.info.start_time, second.info.start_time) < min(last_report[:2])
    assert all(started > left for started, left in zip(sorted(r.info.start_time for r in stopped[:2]), sorted(last_report[:2])))
    assert stopped[2].info.start_time > min(last_report[2:4])
    kept = max((first, second), key=lambda run: (run.data.metrics["epoch"], run.data.metrics["knn_top1_k20"]))
    assert kept.data.tags["sweep.best"] == "true" and parent.data.tags["best_run_id"] == kept.info.run_id
    assert [run for run in runs if "sweep.best" in run.data.tags] == [kept]
    assert max(run.data.metrics["knn_top1_k20"] for run in stopped) < 0.2 < min(
        first.data.metrics["knn_top1_k20"], second.data.metrics["knn_top1_k20"])
    assert parent.data.metrics["best_knn_top1_k20"] == kept.data.metrics["knn_top1_k20"]
    for run in stopped:
        weights = {artifact.path for artifact in client.list_artifacts(run.info.run_id, "backbone")}
        assert {"backbone/backbone.safetensors", "backbone/backbone.json"} <= weights
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"trials.json", "trials.md", "objective_vs_axes.png", "best_preset.yaml"} <= artifacts
    config = load_config(tmp_path / "runs" / "asha" / "best.yaml")  # accepted by pipelines.pretrain as it is
    assert config.method.temperature == float(kept.data.params["method.temperature"])
    assert config.eval.online_bank_size == int(kept.data.params["eval.online_bank_size"]) and config.train.epochs == 4
    assert config.train.storage_path == str(tmp_path / "runs") and config.tracking.run_name is None
    assert "python -m pipelines.pretrain --config" in capsys.readouterr().out


BAD_SPACES = {
    "unknown field": ("dino", {"axes": {"method.teacher_temp": {"distribution": "uniform", "low": 0.02, "high": 0.07}}},
                      "axes.method.teacher_temp"),
    "value out of range": ("mae", {"axes": {"method.mask_ratio": {"distribution": "grid", "values": [0.5, 1.0]}}},
                           "axes.method.mask_ratio = 1.0"),
    "low above high": ("simclr", {"axes": {"method.temperature": {"distribution": "uniform", "low": 0.5, "high": 0.1}}},
                       "axes.method.temperature: low (0.5) must be below high (0.1)"),
    "log of zero": ("simclr", {"axes": {"optim.lr": {"distribution": "loguniform", "low": 0, "high": 0.1}}},
                    "axes.optim.lr: a loguniform axis needs low > 0"),
    "unknown distribution": ("byol", {"axes": {"optim.lr": {"distribution": "normal", "low": 0, "high": 1}}},
                             "axes.optim.lr.distribution must be one of"),
    "misspelt key": ("byol", {"axis": {}}, "unknown key 'axis'"),
    "loss as objective": ("byol", {"objective": "loss"}, "never the SSL loss"),
}


@pytest.mark.parametrize("case", BAD_SPACES, ids=list(BAD_SPACES))
def test_a_bad_space_file_is_refused_with_a_message_naming_the_key(case, tmp_path, capsys):
    method, changes, message = BAD_SPACES[case]
    tree = yaml.safe_load((PROJECT_ROOT / "tune_spaces" / f"{method}.yaml").read_text())
    tree.update(changes)
    path = tmp_path / f"{method}.yaml"
    path.write_text(yaml.safe_dump(tree))
    assert sweep.main(["--space", str(path), "--set", f"train.storage_path={tmp_path}"]) == 2
    assert message in capsys.readouterr().err


def test_a_space_for_another_method_and_optuna_on_a_grid_are_refused(tmp_path, capsys):
    common = ["--set", f"train.storage_path={tmp_path}"]
    assert sweep.main(["--space", str(PROJECT_ROOT / "tune_spaces" / "dino.yaml"),
                       "--config", str(PROJECT_ROOT / "configs" / "byol_fmnist_quick.yaml"), *common]) == 2
    assert "the space is for method 'dino' but the configuration trains 'byol'" in capsys.readouterr().err
    assert sweep.main(["--space", str(PROJECT_ROOT / "tune_spaces" / "mae.yaml"), "--search", "optuna", *common]) == 2
    assert "grid axes (method.mask_ratio) need --search random" in capsys.readouterr().err
    assert sweep.main(["--space", SIMCLR_SPACE, "--set", "eval.every_epochs=4", *common]) == 2
    assert "eval.every_epochs=4, but a trial reports its objective knn_top1_k20 to Ray Tune every epoch" in capsys.readouterr().err
    assert sweep.main(["--resume", "nothing-here", *common]) == 2
    assert "no sweep named 'nothing-here'" in capsys.readouterr().err


def test_trial_concurrency_follows_the_cluster_cpus_and_gpus():
    config = load_config(None)  # a trial reserves 0.5 (worker) + 0.5 (augmentation) + 1 (file listing) CPUs
    assert trial_concurrency(config, {"CPU": 8}, None) == 4
    assert trial_concurrency(config, {"CPU": 8}, 2) == 2
    gpus = load_config(None, ["train.num_workers=2", "train.use_gpu=true"])
    assert trial_concurrency(gpus, {"CPU": 64, "GPU": 4}, None) == 2
    with pytest.raises(ConfigError, match="train.cpus_per_worker"):
        trial_concurrency(config, {"CPU": 1.5}, None)


def test_a_trial_of_one_worker_reserves_its_worker_and_a_gpu_where_the_run_would_use_one():
    one = load_config(None)
    assert trial_resources(one, {"CPU": 8}) == {"CPU": 0.5, "GPU": 0}
    assert trial_resources(one, {"CPU": 8, "GPU": 1}) == {"CPU": 0.5, "GPU": 1}  # train.use_gpu unset: the cluster's
    assert trial_resources(load_config(None, ["train.use_gpu=false"]), {"CPU": 8, "GPU": 1})["GPU"] == 0
    assert trial_resources(load_config(None, ["train.num_workers=2"]), {"CPU": 8, "GPU": 1})["CPU"] == 0


def test_a_knn_objective_on_data_without_labels_is_refused_and_the_objective_can_be_replaced(tmp_path, capsys):
    from pipelines.data.store import DatasetInfo, write_info

    data = tmp_path / "unlabelled"
    write_info(str(data), DatasetInfo("photos", 3, {"train": 144}))  # what read_info sees of an unlabelled ingest
    common = ["--space", SIMCLR_SPACE, "--set", f"train.storage_path={tmp_path}", "--set", f"data.path={data}"]
    assert sweep.main(common) == 2
    assert "objective knn_top1_k20 needs labels, and " in capsys.readouterr().err
    assert sweep.main(common + ["--objective", "loss"]) == 2  # the replacement is checked as a file's objective
    assert "objective 'loss' is not reported" in capsys.readouterr().err


def test_a_trial_tune_could_not_start_is_a_row_of_the_table_with_tunes_error():
    """A trial that fails before its MLflow run exists (Tune could not hand it an actor) has no child run: the
    table still lists it, with its values and Tune's error, and never as the best."""
    from pipelines.tuning.report import trial_table
    from pipelines.tuning.space import load_space
    from pipelines.tuning.sweep_summary import errored_before_their_runs

    space, _ = load_space(SIMCLR_SPACE)
    error = "Trainable runner reuse requires reset_config() to be implemented and return True."
    errored = [("46f39_00002", {"method.temperature": 0.2003, "optim.lr": 0.01}, error)]
    rows = errored_before_their_runs(errored, {"46f39_00001"}, space)
    assert [(row["trial_id"], row["status"], row["run_id"]) for row in rows] == [("46f39_00002", "ERROR", None)]
    assert rows[0]["values"]["method.temperature"] == 0.2003 and rows[0]["error"] == error
    assert errored_before_their_runs(errored, {"46f39_00002"}, space) == []  # it has a run: its row says the rest
    line = trial_table(rows, space)[0]
    assert line["status"] == "ERROR" and line["best"] is False and line["error"] == error


@pytest.mark.slow
def test_tunes_saved_state_gives_each_errored_trials_values_and_error(ray_session, tmp_path):
    from ray import tune

    from pipelines.tuning.sweep import saved_trials
    from pipelines.tuning.sweep_summary import errored_trials

    def fails(config):
        raise RuntimeError(f"no trial at temperature {config['method.temperature']}")

    tune.Tuner(fails, param_space={"method.temperature": tune.grid_search([0.1])},
               run_config=tune.RunConfig(name="errors", storage_path=str(tmp_path), verbose=0)).fit()
    [(trial_id, values, error)] = errored_trials(saved_trials(str(tmp_path / "errors")))
    assert values == {"method.temperature": 0.1} and error.endswith("RuntimeError: no trial at temperature 0.1")
    assert trial_id.endswith("_00000")
