"""What the tests share: tiny methods, tiny runs' settings, real MLflow stores and image folders, the session's
2-worker Ray Train run, and studies at their smoke budget. Heavy imports (Ray, MLflow) stay inside the functions,
so that a fast test importing one helper stays fast."""
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from pipelines.config.project import PROJECT_ROOT


def tiny_backbone() -> nn.Module:
    """An 8-feature backbone of images of 3 channels at any size."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(12, 8))


# Heads a few units wide, per method: a step takes milliseconds and every mathematical property still shows.
TINY_HEADS = {
    "byol": {"projector_hidden_dim": 16, "projection_dim": 8, "predictor_hidden_dim": 16},
    "simsiam": {"projector_hidden_dim": 16, "projection_dim": 8, "predictor_hidden_dim": 16},
    "simclr": {"projector_hidden_dim": 16, "projection_dim": 8},
    "barlow_twins": {"projector_hidden_dim": 16, "projection_dim": 8},
    "vicreg": {"projector_hidden_dim": 16, "projection_dim": 8},
    "moco": {"projector_hidden_dim": 16, "projection_dim": 8, "queue_size": 32},
    "dino": {"out_dim": 16, "head_hidden_dim": 32, "bottleneck_dim": 8},
    "dinov2": {"out_dim": 32, "patch_out_dim": 16, "head_hidden_dim": 32, "bottleneck_dim": 8},
    "mae": {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2},
}


def tiny_method(name: str, backbone: nn.Module = None, width: int = 8, total_steps: int = 10, **settings):
    """The method `name` (as in ssl_models.METHODS) with tiny heads on `backbone` (default: `tiny_backbone()`, 8
    features wide); `settings` override the heads or set anything else the method takes."""
    from ssl_models import METHODS

    return METHODS[name](backbone if backbone is not None else tiny_backbone(), width, total_steps,
                         **{**TINY_HEADS[name], **settings})


_EMPTY_STORE: list[Path] = []


def mlflow_store(folder: Path) -> str:
    """`sqlite:///<folder>/mlflow.db`: a real MLflow store, copied from one migrated once per test session
    (creating MLflow's tables takes 1.4 s a store here); a store already in `folder` is kept as it is."""
    import shutil
    import tempfile

    from mlflow.tracking import MlflowClient

    if not _EMPTY_STORE:
        empty = Path(tempfile.mkdtemp(prefix="mlflow_empty_")) / "mlflow.db"
        MlflowClient(f"sqlite:///{empty}").search_experiments()  # migrates the schema
        _EMPTY_STORE.append(empty)
    store = Path(folder) / "mlflow.db"
    if not store.exists():
        store.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_EMPTY_STORE[0], store)
    return f"sqlite:///{store}"


def tiny_overrides(data_path: str, storage: str, uri: str, method: str = "byol", **extra) -> list[str]:
    """A real but tiny run: 512 images, batch 64, small heads, small evaluation sets."""
    heads = {"model.projector_hidden_dim": 256, "model.projection_dim": 64}
    if method in ("byol", "simsiam"):
        heads["model.predictor_hidden_dim"] = 256
    if method == "mae":
        heads = {"model.backbone": "vit_tiny_patch16_224", "model.patch_size": 4, "method.decoder_dim": 64,
                 "method.decoder_depth": 1}
    if method == "distill":
        heads = {"model.projector_hidden_dim": 256, "method.head_hidden_dim": 256, "method.bottleneck_dim": 64}
    if method in ("dino", "dinov2"):
        heads = {"method.out_dim": 256, "method.head_hidden_dim": 256, "method.bottleneck_dim": 64,
                 "method.num_local_crops": 2, "model.backbone": "vit_tiny_patch16_224", "model.patch_size": 4,
                 **({"method.patch_out_dim": 256} if method == "dinov2" else {})}
    values = {
        "method.name": method,
        "data.path": data_path, "data.limit": 512, "data.batch_size": 64, "data.shuffle_buffer": 256, **heads,
        "train.epochs": 1, "train.storage_path": storage, "train.log_every": 2,
        "eval.online_bank_size": 320, "eval.online_query_size": 160,
        "eval.final_protocols": "[]", "tracking.tracking_uri": uri,
        **extra,
    }
    return [f"{key}={value}" for key, value in values.items()]


def write_photo_folder(root: Path, labelled: bool) -> Path:
    """Colour photos of mixed sizes as JPEGs (scikit-image's cat, coffee and astronaut; 96 px crops, the
    astronaut's 10-17 px): three class folders of 48, or the same 144 files in one folder without labels."""
    import numpy as np
    from PIL import Image
    from skimage import data as photos

    rng = np.random.default_rng(0)
    for name, picture in (("cat", photos.chelsea()), ("coffee", photos.coffee()), ("astronaut", photos.astronaut())):
        folder = root / (name if labelled else "")
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(48):
            top, left = rng.integers(0, 200, 2)
            size = 96 if name != "astronaut" else 10 + index % 8
            Image.fromarray(picture[top:top + size, left:left + size]).save(folder / f"{name}{index}.jpg")
    return root


SORTED_CLASSES = ("astronaut", "brick", "camera", "chelsea", "coffee", "coins", "grass", "gravel", "moon", "rocket")


def write_sorted_folder(root: Path) -> Path:
    """A class-sorted image folder as users have them, at `root`: 10 classes (32 px crops of ten skimage photos,
    grey and colour mixed), 48 images each, file names in class order, no test split."""
    import numpy as np
    from PIL import Image
    from skimage import data as photos

    rng = np.random.default_rng(0)
    for name in SORTED_CLASSES:
        picture = getattr(photos, name)()
        (root / name).mkdir(parents=True)
        for index in range(48):
            top, left = rng.integers(0, min(picture.shape[:2]) - 32, 2)
            Image.fromarray(picture[top:top + 32, left:left + 32]).save(root / name / f"{index:03d}.png")
    return root


def write_run_files(storage: Path, name: str, config, method, uri: str = None, run_id: str = None) -> Path:
    """The files a finished 1-channel run leaves under train.storage_path: run.json, and a checkpoint holding the
    exported backbone and the training state."""
    import json

    import torch

    from pipelines.storage.checkpoint import save_training_state
    from pipelines.storage.export import save_backbone
    from pipelines.training.methods import build_spec

    checkpoint = Path(storage) / name / "checkpoint_000"
    checkpoint.mkdir(parents=True)
    (checkpoint.parent / "run.json").write_text(json.dumps(
        {"config": config.model_dump(mode="json"), "mlflow_run_id": run_id, "tracking_uri": uri}))
    save_backbone(checkpoint, method.backbone, build_spec(config, 1),
                  {"feature_dim": method.backbone.num_features, "image_size": config.data.image_size,
                   "mean": [0.3], "std": [0.35]})
    save_training_state(checkpoint, method, torch.optim.SGD(method.trained.parameters(), lr=0.1), 10, 1, {})
    return checkpoint


def interrupt_after_first_trial(module: str, arguments: list[str], folder: Path, name: str, experiment: str,
                                ray_session, timeout: float = 300) -> tuple[int, str]:
    """`python -m <module> <arguments>` (a sweep or a study, trials one at a time) in a process of its own on the
    session's Ray, sent SIGINT as Ctrl+C would once its first trial's MLflow run is FINISHED: (exit code, output).
    Its runs live under `folder`/runs and in `folder`/mlflow.db."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from mlflow.tracking import MlflowClient

    from pipelines.config.project import PROJECT_ROOT

    address = ray_session.get_runtime_context().gcs_address
    process = subprocess.Popen([sys.executable, "-m", module, *arguments], cwd=PROJECT_ROOT,
                               env={**os.environ, "RAY_ADDRESS": address},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def one_trial_finished() -> bool:
        assert process.poll() is None, process.stdout.read()[-3000:]
        if not list((folder / "runs").glob(f"{name}/trials/*/run.json")):
            return False
        client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
        found = client.get_experiment_by_name(experiment)
        if found is None:
            return False
        done = client.search_runs([found.experiment_id],
                                  filter_string=f"tags.sweep = '{name}' and attributes.status = 'FINISHED'")
        return any("mlflow.parentRunId" in run.data.tags for run in done)

    try:
        deadline = time.time() + timeout
        while not one_trial_finished():
            assert time.time() < deadline, "timed out waiting for the first trial to finish"
            time.sleep(2)
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=180)
    finally:
        process.kill()
    return process.returncode, output


def smoke_overrides(data: str, tmp_path) -> list[str]:
    """A study at its smoke budget on the real Fashion-MNIST slice, its runs under `tmp_path`, as CI affords it."""
    return [f"data.path={data}", f"train.storage_path={tmp_path / 'runs'}",
            f"tracking.tracking_uri={mlflow_store(tmp_path)}",
            "train.cpus_per_worker=0.25"]  # one row (0.25 + 0.5 augmentation + 1 file listing) at a time in 3 CPUs


def smoke_sets(data: str, tmp_path) -> list[str]:
    """`smoke_overrides` as the command's flags."""
    return [part for text in smoke_overrides(data, tmp_path) for part in ("--set", text)]


def study_results(stem: str, name: str, tmp_path):
    """The MLflow client, parent run, child runs by row and the table the parent holds of a study run."""
    import yaml
    from mlflow.tracking import MlflowClient

    from pipelines.tuning.space import ROW_AXIS

    client = MlflowClient(mlflow_store(tmp_path))
    experiment = client.get_experiment_by_name(f"study-{stem}").experiment_id  # rows may switch methods
    parent = client.search_runs([experiment], filter_string=f"attributes.run_name = '{name}'")[0]
    children = client.search_runs([experiment], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    table = yaml.safe_load(open(client.download_artifacts(parent.info.run_id, "study/study_table.json", str(tmp_path))))
    return client, parent, {run.data.tags[ROW_AXIS]: run for run in children}, table


def run_smoke(stem: str, name: str, data: str, tmp_path, overrides: list[str] = (), rows: list[str] = None):
    """The study at its smoke budget, as a notebook runs it: its StudyResult and `study_results`."""
    from pipelines.tuning.jobs import StudySettings, study

    result = study(StudySettings(study=str(PROJECT_ROOT / "tune_spaces" / "studies" / f"{stem}.yaml"), budget="smoke",
                                 name=name, rows=rows, overrides=smoke_overrides(data, tmp_path) + list(overrides)))
    return result, *study_results(stem, name, tmp_path)


CHECKS: dict[str, Callable[[int], Any]] = {}


def two_worker_check(body: Callable[[int], Any]) -> Callable[[int], Any]:
    """Registers a module-level `body(rank)` whose result (tensors, dicts of them) a test inspects."""
    CHECKS[f"{body.__module__}.{body.__name__}"] = body
    return body


def run_on_two_workers(bodies: dict[str, Callable[[int], Any]], folder: Path) -> dict[str, dict[int, Any]]:
    """{name: {rank: body(rank)}} for ranks 0 and 1 of one 2-worker Ray Train run; a body that raised holds
    {"error": its traceback}."""
    from ray import cloudpickle
    from ray.train import RunConfig, ScalingConfig, get_context
    from ray.train.torch import TorchTrainer

    for body in bodies.values():
        cloudpickle.register_pickle_by_value(sys.modules[body.__module__])  # pytest imports tests by file path

    def loop(config):
        rank = get_context().get_world_rank()
        for name, body in bodies.items():
            try:
                result = body(rank)
            except Exception:  # the other checks still run; the test of this one shows why it failed
                result = {"error": traceback.format_exc()}
            torch.save(result, Path(config["folder"]) / f"{name}.rank{rank}.pt")

    TorchTrainer(loop, train_loop_config={"folder": str(folder)},
                 scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
                 run_config=RunConfig(name="two-workers", storage_path=str(folder))).fit()
    return {name: {rank: torch.load(folder / f"{name}.rank{rank}.pt", weights_only=True) for rank in range(2)}
            for name in bodies}


def results_of(all_results: dict[str, dict[int, Any]], body: Callable[[int], Any]) -> dict[int, Any]:
    """{rank: result} of one check; fails with the worker's traceback when it raised."""
    results = all_results[f"{body.__module__}.{body.__name__}"]
    for rank, result in results.items():
        if isinstance(result, dict) and set(result) == {"error"} and isinstance(result["error"], str):
            raise AssertionError(f"rank {rank} raised:\n{result['error']}")
    return results
