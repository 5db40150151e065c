"""The test session's fixtures: real data, one Ray instance, the 2-worker run, an S3 server (helpers: tests/helpers.py)."""
from pathlib import Path

import pytest

from pipelines.ingestion.datasets import FASHION_MNIST_DIR, ingest_fashion_mnist
from tests.helpers import write_sorted_folder

RAY_FIXTURES = {"ray_session", "two_worker_results", "sorted_shards", "s3_server"}
# The session's Ray has 3 logical CPUs on any machine: one sweep trial (0.25 CPU per Train worker, 0.25 per
# augmentation actor, 1 for Ray Data's file listing) fits twice, so ASHA runs two trials at once
# (tests/tuning/test_sweep.py); the tests' usual trial (0.5 of augmentation: 1.75) still runs one at a time.
SESSION_CPUS = 3
SESSION_RAY = {"started": False}


@pytest.fixture(autouse=True)
def fast_tests_start_no_ray_work(request, monkeypatch):
    """`pytest -m "not slow"` is the fast lane: a test without the mark may not start Ray (a Train run, a Ray Data
    job, a folder ingest) nor use a fixture that does; it fails saying so. A slow test that starts Ray in this
    process starts the session's, through `ray_session`."""
    if request.node.get_closest_marker("slow"):
        yield
        import ray

        assert SESSION_RAY["started"] or not ray.is_initialized(), (
            f"{request.node.nodeid} started Ray itself (an in-process ingest?): let it use the ray_session fixture, "
            f"whose Ray has {SESSION_CPUS} CPUs on every machine")
        return
    used = RAY_FIXTURES & set(request.fixturenames)
    assert not used, f"{request.node.nodeid} uses {', '.join(sorted(used))}: mark it slow"
    import ray

    def refuse(*args, **kwargs):
        raise AssertionError(f"{request.node.nodeid} starts Ray: mark it slow")

    monkeypatch.setattr(ray, "init", refuse)
    yield


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
    """One local Ray instance for the whole test session, started before any test's own code can start one."""
    import ray

    from pipelines.cluster.start import use_one_machine_train_settings

    use_one_machine_train_settings()
    ray.init(num_cpus=SESSION_CPUS, include_dashboard=True, dashboard_host="127.0.0.1")
    SESSION_RAY["started"] = True
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def two_worker_results(ray_session, tmp_path_factory) -> dict:
    """Every `@two_worker_check` of the collected test modules, run in one 2-worker Ray Train run."""
    from tests.helpers import CHECKS, run_on_two_workers

    return run_on_two_workers(dict(CHECKS), tmp_path_factory.mktemp("two_workers"))


@pytest.fixture(scope="session")
def sorted_folder(tmp_path_factory) -> Path:
    return write_sorted_folder(tmp_path_factory.mktemp("sorted") / "pictures")


@pytest.fixture(scope="session")
def sorted_shards(ray_session, sorted_folder, tmp_path_factory) -> str:
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


