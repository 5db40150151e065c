import socket
import subprocess
import sys

import pytest

from pipelines.config.load import load_config
from pipelines.config.project import PROJECT_ROOT
from pipelines.config.section import ConfigError
from pipelines.pretrain import main as pretrain_main
from tests.helpers import mlflow_store


def test_defaults_preset_and_overrides(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("optim: {lr: 0.01}\ntrain: {epochs: 5}\n")
    config = load_config(preset, ["optim.lr=3e-4", "model.small_stem=true"])
    assert config.optim.lr == 3e-4 and config.train.epochs == 5 and config.model.small_stem is True
    assert config.flat()["optim.lr"] == 3e-4


@pytest.mark.parametrize("override, field", [
    ("optim.lr=-1", "optim.lr"),
    ("optim.name=adam", "optim.name"),
    ("train.epochs=many", "train.epochs"),
    ("method.momentum_start=1.5", "method.momentum_start"),
    ("data.batchsize=3", "data.batchsize"),
    ("method.name=dinov2", "model.backbone: method dinov2 needs a ViT"),
    ("method.name=distill", "method.teacher_run or method.teacher_weights"),
])
def test_bad_value_names_the_field(override, field):
    with pytest.raises(ConfigError) as error:
        load_config(None, [override])
    assert field in str(error.value)


def test_unknown_field_lists_allowed_ones():
    with pytest.raises(ConfigError, match="allowed: .*batch_size"):
        load_config(None, ["data.batchsize=3"])


def test_a_configuration_logged_before_a_setting_was_retired_still_loads(tmp_path):
    """A run logged with data.read_cpus and data.read_tasks (gone: training reads in its augmentation actors) is
    resumed from its own configuration, and a study's preset file with them still runs."""
    preset = tmp_path / "best.yaml"
    preset.write_text("data: {read_cpus: 0.25, read_tasks: 3, batch_size: 64}\n")
    assert load_config(preset, []).data.batch_size == 64


@pytest.mark.slow
def test_cli_reports_bad_value_without_traceback():
    """The one test of the real `python -m` path; the others call the same `main` in process."""
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.pretrain", "--set", "optim.lr=-1"],
        capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=120,
    )
    assert result.returncode == 2
    assert "optim.lr" in result.stderr and "greater than 0" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_reports_missing_dataset_without_traceback(tmp_path, capsys):
    assert pretrain_main(["--set", f"data.path={tmp_path / 'nothing'}"]) == 2
    err = capsys.readouterr().err
    assert "no dataset at" in err and f"--out {tmp_path / 'nothing'}" in err


def test_cli_fails_fast_when_the_mlflow_server_does_not_answer(fmnist_slice, tmp_path, capsys):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert pretrain_main(["--set", f"data.path={fmnist_slice}", "--set",
                          f"tracking.tracking_uri=http://127.0.0.1:{port}", "--set", f"train.storage_path={tmp_path}"]) == 2
    assert f"the MLflow tracking server http://127.0.0.1:{port} does not answer" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing started


def test_a_multi_node_run_refuses_node_local_paths_unless_they_are_shared():
    from pipelines.training.checks import check_shared_storage

    config = load_config(None, ["train.storage_path=s3://bucket/runs", "data.path=s3://bucket/data"])
    check_shared_storage(config, "http://10.0.0.1:5000", nodes=2)  # all reachable from every node
    check_shared_storage(load_config(None), "sqlite:////tmp/mlflow.db", nodes=1)  # one node: anything goes
    with pytest.raises(ConfigError) as refused:
        check_shared_storage(load_config(None, ["data.path=s3://bucket/data"]), "sqlite:////tmp/m.db", nodes=2)
    message = str(refused.value)
    assert "2 nodes" in message and "train.storage_path=" in message and "tracking.tracking_uri=sqlite" in message
    assert "data.path" not in message and "train.shared_storage=true" in message
    check_shared_storage(load_config(None, ["train.shared_storage=true"]), "http://10.0.0.1:5000", nodes=2)
    with pytest.raises(ConfigError, match="SQLite file: several nodes"):  # even on a shared mount
        check_shared_storage(load_config(None, ["train.shared_storage=true"]), "sqlite:////nfs/m.db", nodes=2)


def test_a_new_experiment_keeps_its_artifacts_where_tracking_artifact_location_says(tmp_path):
    from pipelines.tracking.mlflow_runs import start_run

    config = load_config(None, [f"tracking.artifact_location={(tmp_path / 'shared' / 'art').as_uri()}",
                                "tracking.experiment=placed"])
    client, run_id = start_run(config, mlflow_store(tmp_path), "placed-run")
    client.log_text(run_id, "hello", "note.txt")
    assert (tmp_path / "shared" / "art").is_dir()
    assert client.get_run(run_id).info.artifact_uri.startswith((tmp_path / "shared" / "art").as_uri())
    assert list((tmp_path / "shared" / "art").rglob("note.txt"))


@pytest.mark.parametrize("override, expected", [
    ("method.name=dinov3", "'byol', 'simsiam', 'simclr', 'barlow_twins', 'vicreg', 'moco', 'dino', 'dinov2', 'distill', 'mae'"),
    ("model.backbone=resnet81", "unknown backbone 'resnet81'"),
])
def test_cli_names_the_valid_methods_and_suggests_backbones(override, expected, fmnist_slice, capsys):
    assert pretrain_main(["--set", override, "--set", f"data.path={fmnist_slice}"]) == 2
    assert expected in capsys.readouterr().err


def test_lr_follows_the_global_batch_and_the_resolved_values_are_logged():
    config = load_config(None, ["optim.lr=1e-3", "data.batch_size=128", "train.num_workers=4"])
    assert config.global_batch() == 512 and config.effective_lr() == pytest.approx(2e-3)
    assert load_config(None, ["optim.lr=1e-3", "data.batch_size=128", "train.num_workers=4",
                              "optim.lr_scaling=none"]).effective_lr() == 1e-3
    flat = config.flat()
    assert flat["resolved.effective_lr"] == pytest.approx(2e-3) and flat["resolved.global_batch"] == 512
    # DINOv2's rule: base lr 4e-3 x sqrt(global batch / 1024), its default
    dinov2 = ["method.name=dinov2", "model.backbone=vit_tiny_patch16_224"]
    assert load_config(None, [*dinov2, "data.batch_size=256"]).effective_lr() == pytest.approx(2e-3)
    assert load_config(None, [*dinov2, "data.batch_size=512", "train.num_workers=2"]).effective_lr() == pytest.approx(4e-3)
    assert load_config(None, [*dinov2, "data.batch_size=64", "optim.lr_scaling=linear"]).effective_lr() == pytest.approx(1e-3)
    assert load_config(None, ["optim.lr_scaling=sqrt", "optim.lr=1e-3", "data.batch_size=64"]).effective_lr() == pytest.approx(2.5e-4)


@pytest.mark.parametrize("method, synced", [("byol", True), ("dino", True), ("simclr", True), ("distill", True),
                                             ("moco", False)])
def test_global_batchnorm_follows_the_paper_unless_set(method, synced):
    method = [f"method.name={method}"] + (["method.teacher_run=teacher"] if method == "distill" else [])
    assert load_config(None, method).sync_batchnorm() is synced
    assert load_config(None, [*method, "train.sync_batchnorm=false"]).sync_batchnorm() is False
