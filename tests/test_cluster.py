"""Against real processes: a token-authenticated Ray head and an MLflow server started by
scripts/cluster.sh, a job sent with `ray job submit`, a second node, a Train worker killed mid-epoch."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipelines.config import PROJECT_ROOT
from tests.conftest import tiny_overrides

pytestmark = pytest.mark.slow
RAY_CLI = str(Path(sys.executable).parent / "ray")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cluster")
    ports = {name: str(free_port()) for name in ("RAY_PORT", "DASHBOARD_PORT", "MLFLOW_PORT", "AGENT_PORT",
                                                  "NODE_AGENT_PORT")}
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    env.update(ports, CLUSTER_DIR=str(folder), RAY_TMP=f"/tmp/ray_t{ports['RAY_PORT']}", RAY_AUTH_MODE="token")
    script = str(PROJECT_ROOT / "scripts" / "cluster.sh")
    subprocess.run([script, "start", "2"], env=env, check=True, timeout=300)
    try:
        yield {"env": env, "script": script, "folder": folder, "gcs": f"127.0.0.1:{ports['RAY_PORT']}",
               "jobs": f"http://127.0.0.1:{ports['DASHBOARD_PORT']}", "mlflow": f"http://127.0.0.1:{ports['MLFLOW_PORT']}"}
    finally:
        subprocess.run([script, "stop"], env=env, timeout=120)


def sets(overrides: list[str]) -> list[str]:
    return [part for text in overrides for part in ("--set", text)]


def finished_run(uri: str, name: str):
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              filter_string=f"attributes.run_name = '{name}'")
    assert len(runs) == 1, f"{len(runs)} MLflow runs named {name}"
    return client, runs[0]


def test_a_submitted_job_succeeds_and_its_run_is_in_the_mlflow_server(cluster, fmnist_slice):
    overrides = tiny_overrides(fmnist_slice, str(cluster["folder"] / "runs"), cluster["mlflow"],
                               **{"tracking.run_name": "submitted"})
    result = subprocess.run(
        [RAY_CLI, "job", "submit", "--address", cluster["jobs"], "--working-dir", str(PROJECT_ROOT), "--",
         "python", "-m", "pipelines.pretrain", *sets(overrides)],
        env=cluster["env"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and "succeeded" in result.stdout + result.stderr, result.stdout[-3000:] + result.stderr[-3000:]
    client, run = finished_run(cluster["mlflow"], "submitted")
    assert run.info.status == "FINISHED" and 0 < run.data.metrics["final_knn_top1_k20"] <= 1
    assert "backbone" in {a.path for a in client.list_artifacts(run.info.run_id)}


def test_a_sweep_runs_under_ray_job_submit(cluster, fmnist_slice):
    overrides = tiny_overrides(fmnist_slice, str(cluster["folder"] / "runs"), cluster["mlflow"], "simclr",
                               **{"train.cpus_per_worker": 0.25})
    result = subprocess.run(
        [RAY_CLI, "job", "submit", "--address", cluster["jobs"], "--working-dir", str(PROJECT_ROOT), "--",
         "python", "-m", "pipelines.sweep", "--space", "tune_spaces/simclr.yaml", "--num-samples", "1",
         "--name", "submitted-sweep", *sets(overrides)],
        env=cluster["env"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and "succeeded" in result.stdout + result.stderr, result.stdout[-3000:] + result.stderr[-3000:]
    client, parent = finished_run(cluster["mlflow"], "submitted-sweep")
    assert parent.info.status == "FINISHED" and "best_run_id" in parent.data.tags
    assert client.get_run(parent.data.tags["best_run_id"]).info.status == "FINISHED"


def test_dashboard_job_server_and_mlflow_answer_on_loopback_only(cluster):
    from ray._private.services import get_node_ip_address

    outside = get_node_ip_address()
    assert not outside.startswith("127."), "this machine has no other address to try"
    for url in (cluster["jobs"], cluster["mlflow"]):
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        with pytest.raises(OSError):
            socket.create_connection((outside, port), timeout=5).close()


def run_driver(cluster, overrides: list[str], timeout: float = 600, **popen) -> subprocess.Popen:
    env = {**cluster["env"], "RAY_ADDRESS": cluster["gcs"]}
    return subprocess.Popen([sys.executable, "-m", "pipelines.pretrain", *sets(overrides)], cwd=PROJECT_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def test_two_nodes_train_with_one_worker_on_each(cluster, fmnist_slice):
    subprocess.run([cluster["script"], "add-node", "2"], env=cluster["env"], check=True, timeout=120)
    overrides = tiny_overrides(fmnist_slice, str(cluster["folder"] / "runs"), cluster["mlflow"],
                               **{"tracking.run_name": "two-nodes", "train.num_workers": 2, "data.batch_size": 32,
                                  "train.placement_strategy": "STRICT_SPREAD"})
    refused = run_driver(cluster, overrides)
    output, _ = refused.communicate(timeout=300)
    assert refused.returncode == 2 and "the Ray cluster has 2 nodes but data.path=" in output, output[-3000:]

    driver = run_driver(cluster, overrides + ["train.shared_storage=true"])  # one machine: paths are shared
    output, _ = driver.communicate(timeout=600)
    assert driver.returncode == 0, output[-3000:]
    _, run = finished_run(cluster["mlflow"], "two-nodes")
    nodes = run.data.tags["worker_nodes"].split(",")
    assert len(nodes) == 2 and nodes[0] != nodes[1]
    assert run.info.status == "FINISHED" and run.data.metrics["step"] == 8  # 512 images / (2 workers x 32)


def train_worker_pids(cluster) -> list[int]:
    listed = subprocess.run([RAY_CLI, "list", "actors", "--address", cluster["jobs"], "--format", "json", "--detail",
                             "--filter", "class_name=RayTrainWorker", "--filter", "state=ALIVE"],
                            env=cluster["env"], capture_output=True, text=True, timeout=60)
    pids = [actor["pid"] for actor in json.loads(listed.stdout or "[]")]
    assert pids, f"no Train worker to kill: {listed.stdout[-500:]} {listed.stderr[-1500:]}"
    return pids


def test_a_worker_killed_mid_epoch_resumes_from_its_checkpoint_in_the_same_mlflow_run(cluster, fmnist_slice):
    storage = cluster["folder"] / "runs"
    overrides = tiny_overrides(fmnist_slice, str(storage), cluster["mlflow"],
                               **{"tracking.run_name": "killed", "train.epochs": 2, "train.max_failures": 1,
                                  "train.shared_storage": "true"})
    driver = run_driver(cluster, overrides)
    try:
        deadline = time.time() + 300
        while not list((storage / "killed").glob("checkpoint_*")):  # epoch 1 is saved, epoch 2 starts
            assert driver.poll() is None and time.time() < deadline, driver.stdout.read()[-3000:]
            time.sleep(0.5)
        time.sleep(2)
        for pid in train_worker_pids(cluster):  # this cluster's only, not those of other Ray instances here
            os.kill(pid, signal.SIGKILL)
        output, _ = driver.communicate(timeout=600)
    finally:
        driver.kill()
    assert driver.returncode == 0, output[-3000:]
    assert "resumed from checkpoint: epoch 1" in output
    client, run = finished_run(cluster["mlflow"], "killed")
    assert run.info.status == "FINISHED"
    # the same steps as an uninterrupted run, none lost and none logged twice
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == list(range(2, 17, 2))
    assert [m.value for m in client.get_metric_history(run.info.run_id, "epoch")] == [1, 2]
    assert run.data.metrics["step"] == 16
