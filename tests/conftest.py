from pathlib import Path

import pytest

from pipelines.ingestion.datasets import FASHION_MNIST_DIR, ingest_fashion_mnist

RAY_FIXTURES = {"ray_session", "two_worker_results", "sorted_shards", "s3_server"}


@pytest.fixture(autouse=True)
def fast_tests_start_no_ray_work(request, monkeypatch):
    """`pytest -m "not slow"` is the fast lane: a test without the mark may not start Ray (a Train run, a Ray Data
    job, a folder ingest) nor use a fixture that does; it fails saying so."""
    if request.node.get_closest_marker("slow"):
        return
    used = RAY_FIXTURES & set(request.fixturenames)
    assert not used, f"{request.node.nodeid} uses {', '.join(sorted(used))}: mark it slow"
    import ray

    def refuse(*args, **kwargs):
        raise AssertionError(f"{request.node.nodeid} starts Ray: mark it slow")

    monkeypatch.setattr(ray, "init", refuse)


@pytest.fixture(scope="session")
def fmnist_slice(tmp_path_factory) -> str:
    """The first 640 training and 320 test images of the real Fashion-MNIST, as Parquet shards."""
    if not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.fail("Fashion-MNIST is missing: run `make test`, which installs it")
    out = tmp_path_factory.mktemp("fmnist") / "slice"
    ingest_fashion_mnist(FASHION_MNIST_DIR, str(out), limit=640, rows_per_shard=320)
    return str(out)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for the whole test session (a folder ingest may have started it already)."""
    import ray

    from pipelines.cluster.start import use_one_machine_train_settings

    if not ray.is_initialized():
        use_one_machine_train_settings()
        ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1")
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def two_worker_results(ray_session, tmp_path_factory) -> dict:
    """Every `@two_worker_check` of the collected test modules, run in one 2-worker Ray Train run."""
    from tests.two_workers import CHECKS, run_on_two_workers

    return run_on_two_workers(dict(CHECKS), tmp_path_factory.mktemp("two_workers"))


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


@pytest.fixture(scope="session")
def sorted_folder(tmp_path_factory) -> Path:
    return write_sorted_folder(tmp_path_factory.mktemp("sorted") / "pictures")


@pytest.fixture(scope="session")
def sorted_shards(sorted_folder, tmp_path_factory) -> str:
    from pipelines.ingestion.folder import ingest_folder

    out = tmp_path_factory.mktemp("sorted_shards") / "shards"
    ingest_folder(sorted_folder, str(out))
    return str(out)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """An S3 server (moto) on loopback with a bucket `test`; `env` holds the settings a user would export."""
    import os
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    import boto3
    from pyarrow.fs import S3FileSystem

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = open(tmp_path_factory.mktemp("s3") / "moto.log", "w")
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(60):
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            break
        except OSError:
            time.sleep(0.5)
    credentials = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                 region_name="us-east-1").create_bucket(Bucket="test")
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    env.update(credentials, AWS_ENDPOINT_URL=endpoint, MLFLOW_S3_ENDPOINT_URL=endpoint)
    yield {"env": env, "fs": S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http", access_key="testing",
                                          secret_key="testing", region="us-east-1")}
    server.terminate()
    server.wait(timeout=30)
    log.close()


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
