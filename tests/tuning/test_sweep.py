"""Sweeps for real: Ray Tune trials that each fit a TorchTrainer on a Fashion-MNIST slice, their MLflow
parent and child runs, ASHA's early stop, bad spaces."""
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipelines import sweep
from pipelines.config.load import load_config
from pipelines.config.project import PROJECT_ROOT
from pipelines.config.section import ConfigError
from pipelines.tuning.sweep import trial_concurrency
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
def test_a_sweep_runs_its_trials_as_child_runs_asha_stops_the_one_sure_to_lose_and_the_best_becomes_a_preset(
        ray_session, fmnist_slice, tmp_path, capsys):
    """Three trials under ASHA (rungs after epochs 1, 2 and 4 of 4), two at a time, each with its own sampled
    temperature. The first two (kNN banks of 320 and 256 images) run together; the third's bank holds one image, so
    it predicts that image's class for every query (about 10 %). It starts only when one of the first two has left,
    which had recorded the first rung: it loses that rung for certain, and Tune stops it. Its MLflow run is FINISHED
    (not FAILED, though Tune tore its Train run down), tagged `stopped_early`, with the weights of its last epoch. Of
    the first two, whichever comes second to a rung below the other may be stopped too; one of them always runs to
    the end, and the best trial (the longest run, then the highest objective) becomes the sweep's preset. 4 epochs,
    not 2: an epoch here takes 2 s, and with 2 the Train run once finished its last epoch before Tune's stop reached
    it (then it did run to the end, and its run rightly says so). (Optuna's search: the sweep under `ray job submit`
    in tests/end_to_end/test_cluster.py; an interrupted sweep resumed without rerunning a finished trial: the SimSiam
    study in tests/tuning/test_studies.py, a study being a sweep of rows.)"""
    space = tmp_path / "asha.yaml"
    space.write_text(yaml.safe_dump({"method": "simclr", "objective": "knn_top1_k20", "axes": {
        "eval.online_bank_size": {"distribution": "grid", "values": [320, 256, 1]},
        "method.temperature": {"distribution": "loguniform", "low": 0.05, "high": 0.5}}}))
    arguments = sweep_arguments(fmnist_slice, tmp_path, "asha", samples=1, space=str(space))
    assert sweep.main(arguments + ["--max-concurrent", "2", "--scheduler", "asha", "--grace-epochs", "1",
                                   "--set", "train.epochs=4", "--set", "data.augment_cpus=0.25"]) == 0
    client = MlflowClient(mlflow_store(tmp_path))
    parent = parent_of(client, "asha")
    assert parent.info.status == "FINISHED" and parent.data.params["sweep.scheduler"] == "asha"
    assert parent.data.params["sweep.concurrency"] == "2"
    runs = {run.data.params["eval.online_bank_size"]: run for run in children(client, parent.info.run_id)}
    first, second, stopped = runs["320"], runs["256"], runs["1"]
    assert first.info.status == second.info.status == stopped.info.status == "FINISHED"
    temperatures = {float(run.data.params["method.temperature"]) for run in runs.values()}
    assert len(temperatures) == 3 and all(0.05 <= t <= 0.5 for t in temperatures)
    ran = {size: int(run.data.metrics["epoch"]) for size, run in runs.items()}  # a stopped one: its rung, or later
    assert max(ran["320"], ran["256"]) == 4 and 1 <= ran["1"] < 4
    last_report = {}
    for size, run in runs.items():  # every epoch's objective is a point of the trial's curve
        curve = client.get_metric_history(run.info.run_id, "knn_top1_k20")
        assert [m.step for m in curve] == [4 * (epoch + 1) for epoch in range(ran[size])]
        assert all(0 < m.value <= 1 for m in curve)
        assert ("stopped_early" in run.data.tags) == (ran[size] < 4) and "failure_reason" not in run.data.tags
        last_report[size] = curve[-1].timestamp
    # the first two ran at once; the third started once one of them had reported for the last time
    assert max(first.info.start_time, second.info.start_time) < min(last_report["320"], last_report["256"])
    assert stopped.info.start_time > min(last_report["320"], last_report["256"])
    assert stopped.data.tags["stopped_early"] == f"by asha after epoch {ran['1']} of 4"
    kept = max((first, second), key=lambda run: (run.data.metrics["epoch"], run.data.metrics["knn_top1_k20"]))
    other = second if kept is first else first
    assert kept.data.tags["sweep.best"] == "true" and parent.data.tags["best_run_id"] == kept.info.run_id
    assert "sweep.best" not in stopped.data.tags and "sweep.best" not in other.data.tags
    assert stopped.data.metrics["knn_top1_k20"] < 0.2 < min(first.data.metrics["knn_top1_k20"],
                                                            second.data.metrics["knn_top1_k20"])
    assert parent.data.metrics["best_knn_top1_k20"] == kept.data.metrics["knn_top1_k20"]
    weights = {artifact.path for artifact in client.list_artifacts(stopped.info.run_id, "backbone")}
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


def test_a_knn_objective_on_data_without_labels_is_refused_and_the_objective_can_be_replaced(tmp_path, capsys):
    from pipelines.data.store import DatasetInfo, write_info

    data = tmp_path / "unlabelled"
    write_info(str(data), DatasetInfo("photos", 3, {"train": 144}))  # what read_info sees of an unlabelled ingest
    common = ["--space", SIMCLR_SPACE, "--set", f"train.storage_path={tmp_path}", "--set", f"data.path={data}"]
    assert sweep.main(common) == 2
    assert "objective knn_top1_k20 needs labels, and " in capsys.readouterr().err
    assert sweep.main(common + ["--objective", "loss"]) == 2  # the replacement is checked as a file's objective
    assert "objective 'loss' is not reported" in capsys.readouterr().err
