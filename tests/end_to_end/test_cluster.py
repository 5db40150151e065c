"""Against real processes: a token-authenticated Ray head, an MLflow server and an S3 server (moto) started
by scripts/cluster.sh, jobs sent with `ray job submit`, a second node that trains from object storage with no
shared folder, and the second node lost mid-run (its Train worker with it)."""
import ipaddress
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
from pyarrow.fs import FileType, S3FileSystem

from pipelines.config.project import PROJECT_ROOT
from tests.helpers import tiny_overrides, write_photo_folder

pytestmark = pytest.mark.slow
RAY_CLI = str(Path(sys.executable).parent / "ray")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def printed_exports(output: str) -> dict[str, str]:
    """KEY=VALUE of the `export` lines in `output` (lines continued with a backslash joined)."""
    exports = {}
    for line in output.replace("\\\n", " ").splitlines():
        if line.strip().startswith("export "):
            exports.update(pair.split("=", 1) for pair in line.split()[1:])
    return exports


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cluster")
    ports = {name: str(free_port()) for name in ("RAY_PORT", "DASHBOARD_PORT", "MLFLOW_PORT", "AGENT_PORT",
                                                  "NODE_AGENT_PORT", "S3_PORT")}
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS" and not key.startswith("AWS_")}
    # the GCS declares a node dead after 3 failed health checks 0.5 s apart (Ray's default: 5, 3 s apart, 28 s here):
    # Train restarts the lost node's workers only then
    env.update(ports, CLUSTER_DIR=str(folder), RAY_TMP=f"/tmp/ray_t{ports['RAY_PORT']}", RAY_AUTH_MODE="token",
               RAY_health_check_period_ms="500", RAY_health_check_timeout_ms="1000",
               RAY_health_check_failure_threshold="3")
    script = str(PROJECT_ROOT / "scripts" / "cluster.sh")
    # 4 logical CPUs: after the second node is lost, both workers of a 2-worker run fit on the head
    started = subprocess.run([script, "start", "4"], env=env, check=True, timeout=300, capture_output=True, text=True)
    # the exports the script prints for the user's shell (the README's): every command below runs with them, the
    # drivers started here joining by RAY_ADDRESS, `ray job submit` finding the job server by RAY_API_SERVER_ADDRESS
    exports = printed_exports(started.stdout)
    gcs, jobs = f"127.0.0.1:{ports['RAY_PORT']}", f"http://127.0.0.1:{ports['DASHBOARD_PORT']}"
    assert exports["RAY_ADDRESS"] == gcs and exports["RAY_API_SERVER_ADDRESS"] == jobs, started.stdout
    assert exports["AWS_ENDPOINT_URL"] == f"http://127.0.0.1:{ports['S3_PORT']}", started.stdout
    env.update(exports)
    try:
        yield {"env": env, "script": script, "folder": folder, "gcs": gcs,
               "jobs": jobs, "mlflow": f"http://127.0.0.1:{ports['MLFLOW_PORT']}",
               "s3": S3FileSystem(endpoint_override=f"127.0.0.1:{ports['S3_PORT']}", scheme="http",
                                  access_key="testing", secret_key="testing", region="us-east-1")}
    finally:
        subprocess.run([script, "stop"], env=env, timeout=120)


@pytest.fixture(scope="module")
def s3_slice(cluster) -> str:
    """The Fashion-MNIST slice ingested into the cluster's S3 bucket, as a user would."""
    uri = "s3://ssl/data/fmnist_slice"
    subprocess.run([sys.executable, "-m", "pipelines.ingest", "fashion-mnist", "--out", uri, "--limit", "640",
                    "--rows-per-shard", "320"], env=cluster["env"], check=True, timeout=120, cwd=PROJECT_ROOT)
    return uri


def s3_overrides(cluster, s3_slice, name: str, **extra) -> list[str]:
    """Data, checkpoints and MLflow artifacts in object storage, runs in the MLflow server: no shared folder."""
    return tiny_overrides(s3_slice, "s3://ssl/runs", cluster["mlflow"], **{
        "tracking.run_name": name, "tracking.experiment": "s3", "tracking.artifact_location": "s3://ssl/mlflow",
        **extra})


def wait_for_checkpoint(cluster, driver, run_name: str) -> None:
    """Until Ray Train has registered a checkpoint of the run (uploaded and recorded, not just begun)."""
    deadline = time.time() + 300
    snapshot = f"ssl/runs/{run_name}/checkpoint_manager_snapshot.json"
    while cluster["s3"].get_file_info(snapshot).type != FileType.File:
        assert driver.poll() is None and time.time() < deadline, driver.stdout.read()[-3000:]
        time.sleep(0.5)


def s3_artifact(cluster, run, path: str) -> bool:
    location = run.info.artifact_uri.removeprefix("s3://")
    return cluster["s3"].get_file_info(f"{location}/{path}").type == FileType.File


def sets(overrides: list[str]) -> list[str]:
    return [part for text in overrides for part in ("--set", text)]


def finished_run(uri: str, name: str):
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              filter_string=f"attributes.run_name = '{name}'")
    assert len(runs) == 1, f"{len(runs)} MLflow runs named {name}"
    return client, runs[0]


def test_a_job_without_storage_settings_is_refused_before_its_results_could_vanish(cluster):
    """Defaults built from the project folder would point into Ray's temporary copy of it."""
    result = subprocess.run(
        [RAY_CLI, "job", "submit", "--working-dir", str(PROJECT_ROOT), "--",
         "python", "-m", "pipelines.pretrain", "--set", f"tracking.tracking_uri={cluster['mlflow']}"],
        env=cluster["env"], capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "exit code 2" in output, output[-3000:]
    assert "which Ray may delete once the job ends" in output and "Traceback" not in output
    # what the message says: the jobs' copies are still there after their jobs ended (Ray's cache keeps them)
    copies = Path(cluster["env"]["RAY_TMP"]).glob("session_latest/runtime_resources/working_dir_files/_ray_pkg_*")
    assert any((copy / "pipelines" / "pretrain.py").is_file() for copy in copies)
    assert "data.path=<job copy>/data/fashion_mnist, train.storage_path=<job copy>/runs point into it" in output


def test_a_sweep_of_unlabelled_photos_runs_under_ray_job_submit_with_optuna_on_rankme(cluster, tmp_path):
    """The one end-to-end sweep with Optuna's TPE as its search (test_sweep's runs the default search), on photos
    without labels in object storage, maximising the label-free objective."""
    uri = "s3://ssl/data/unlabelled_photos"
    subprocess.run([sys.executable, "-m", "pipelines.ingest", "folder", "--source",
                    str(write_photo_folder(tmp_path / "photos", labelled=False)), "--out", uri],
                   env=cluster["env"], check=True, timeout=300, cwd=PROJECT_ROOT, capture_output=True)
    overrides = tiny_overrides(uri, str(cluster["folder"] / "runs"), cluster["mlflow"], "simclr",
                               **{"train.cpus_per_worker": 0.25, "data.image_size": 32})
    submit = [RAY_CLI, "job", "submit", "--working-dir", str(PROJECT_ROOT), "--", "python", "-m", "pipelines.sweep",
              "--space", "tune_spaces/simclr.yaml", "--num-samples", "1", "--search", "optuna", *sets(overrides)]
    result = subprocess.run(submit + ["--name", "submitted-sweep", "--objective", "rankme"], env=cluster["env"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and "succeeded" in result.stdout + result.stderr, result.stdout[-3000:] + result.stderr[-3000:]
    client, parent = finished_run(cluster["mlflow"], "submitted-sweep")
    assert parent.info.status == "FINISHED" and parent.data.params["sweep.search"] == "optuna"
    assert parent.data.params["sweep.objective"] == "rankme"
    best = client.get_run(parent.data.tags["best_run_id"])
    assert best.info.status == "FINISHED" and 0.05 <= float(best.data.params["method.temperature"]) <= 0.5
    assert 1 < best.data.metrics["rankme"] and not [key for key in best.data.metrics if "knn" in key]


def cluster_processes(cluster) -> dict:
    """The cluster's processes and their listening sockets, as scripts/cluster_processes.py finds them."""
    pids = [path.read_text().strip() for path in Path(cluster["folder"]).glob("*.pid")]
    listed = subprocess.run([sys.executable, str(PROJECT_ROOT / "scripts" / "cluster_processes.py"), "list",
                             cluster["env"]["RAY_TMP"], cluster["env"]["RAY_PORT"], *pids],
                            capture_output=True, text=True, timeout=60, check=True)
    return json.loads(listed.stdout)


def on_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return (getattr(ip, "ipv4_mapped", None) or ip).is_loopback


def test_every_listener_of_the_cluster_is_on_loopback_and_refuses_this_machines_address(cluster):
    """Ray takes 127.0.0.1 to mean the machine's network address unless told it is a one-machine Ray
    (scripts/cluster.sh): then the GCS, the raylet, the agents and Ray's client server listened everywhere."""
    from ray.util import get_node_ip_address

    found = cluster_processes(cluster)
    ports = {entry["port"] for entry in found["listening"]}
    named = {int(cluster["env"][key]) for key in ("RAY_PORT", "DASHBOARD_PORT", "MLFLOW_PORT", "AGENT_PORT", "S3_PORT")}
    assert named <= ports, found  # what the script started is what was found
    assert [entry for entry in found["listening"] if not on_loopback(entry["address"])] == []
    outside = get_node_ip_address()
    assert not outside.startswith("127."), "this machine has no other address to try"
    for port in named:
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        if port in elsewhere(found):  # another process (the test session's Ray) listens there on another address
            continue
        with pytest.raises(OSError):
            socket.create_connection((outside, port), timeout=5).close()


def elsewhere(found: dict) -> set[int]:
    """Ports that processes outside the cluster listen on, on an address of their own (not loopback): the test
    session's Ray workers take random ports, and CI once saw one on a port of the cluster's."""
    import psutil

    return {c.laddr.port for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN
            and c.pid not in found["pids"] and not on_loopback(c.laddr.ip)}


def run_driver(cluster, overrides: list[str], timeout: float = 600, **popen) -> subprocess.Popen:
    env = cluster["env"]  # RAY_ADDRESS: the head, as the README exports it
    return subprocess.Popen([sys.executable, "-m", "pipelines.pretrain", *sets(overrides)], cwd=PROJECT_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def assert_resumed_once(cluster, output: str, name: str, epochs: int, steps_per_epoch: int):
    """Resumed from the epoch-1 checkpoint, in one MLflow run, with the steps of an uninterrupted run: none
    lost and none logged twice."""
    assert "resumed from checkpoint: epoch 1" in output, output[-3000:]
    client, run = finished_run(cluster["mlflow"], name)
    assert run.info.status == "FINISHED"
    steps = epochs * steps_per_epoch
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == list(range(2, steps + 1, 2))
    assert [m.value for m in client.get_metric_history(run.info.run_id, "epoch")] == list(range(1, epochs + 1))
    assert run.data.metrics["step"] == steps
    assert s3_artifact(cluster, run, "backbone/backbone.safetensors")  # the weights exported to object storage
    return run


def node_processes(node_id: str) -> list[int]:
    """The raylet of `node_id` (this cluster's own, found by its id) and every process under it."""
    parents = {}
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            parents[int(entry.name)] = (command, int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]))
        except (ValueError, OSError):
            continue
    tree = {pid for pid, (command, _) in parents.items() if "raylet" in command and f"--node_id={node_id}" in command}
    assert tree, f"no raylet process of node {node_id}"
    while True:
        children = {pid for pid, (_, parent) in parents.items() if parent in tree} - tree
        if not children:
            return sorted(tree)
        tree |= children


def submit(cluster, module: str, arguments: list[str], **popen) -> subprocess.Popen:
    """`ray job submit --working-dir <project> -- python -m <module> <arguments>`, as the README sends a job."""
    return subprocess.Popen([RAY_CLI, "job", "submit", "--working-dir", str(PROJECT_ROOT), "--", "python", "-m",
                             module, *arguments], env=cluster["env"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **popen)


def test_a_submitted_job_trains_on_two_nodes_from_object_storage_and_a_node_lost_mid_run_resumes_in_one_mlflow_run(
        cluster, fmnist_slice, s3_slice, monkeypatch):
    """A second node joins; a run whose data sit in a node-local folder is refused; a 2-worker pretraining sent
    with `ray job submit`, its data, checkpoints and artifacts in object storage (no shared folder), trains on both
    nodes; after its epoch-1 checkpoint the second node's raylet and every process under it (a Train worker among
    them) are killed: Ray Train restarts the worker group on the head, from the checkpoint in S3, in the same
    MLflow run; the job ends SUCCEEDED with its final evaluation logged, and the evaluation command, a job of its
    own, finds the run in S3 by name. (A lone Train worker killed is the same recovery: a worker group restarted
    from the last checkpoint.)"""
    subprocess.run([cluster["script"], "add-node", "2"], env=cluster["env"], check=True, timeout=120)
    local = tiny_overrides(fmnist_slice, str(cluster["folder"] / "runs"), cluster["mlflow"],
                           **{"tracking.run_name": "two-nodes", "train.num_workers": 2})
    refused = run_driver(cluster, local)
    output, _ = refused.communicate(timeout=300)
    assert refused.returncode == 2 and "the Ray cluster has 2 nodes but data.path=" in output, output[-3000:]

    listed = subprocess.run([RAY_CLI, "list", "nodes", "--address", cluster["jobs"], "--format", "json"],
                            env=cluster["env"], capture_output=True, text=True, timeout=60)
    second = [node["node_id"] for node in json.loads(listed.stdout) if not node["is_head_node"] and node["state"] == "ALIVE"]
    assert len(second) == 1, listed.stdout[-2000:]
    # SPREAD, not STRICT_SPREAD: the restart must fit on the head alone
    job = submit(cluster, "pipelines.pretrain", sets(s3_overrides(cluster, s3_slice, "node-lost", **{
        "train.epochs": 2, "train.max_failures": 1, "train.num_workers": 2, "data.batch_size": 32,
        "model.backbone": "resnet10t",  # its checkpoints, half resnet18's, go to and from object storage three times
        "train.placement_strategy": "SPREAD", "eval.final_protocols": "[knn]"})))
    try:
        wait_for_checkpoint(cluster, job, "node-lost")
        _, run = finished_run(cluster["mlflow"], "node-lost")
        nodes = run.data.tags["worker_nodes"].split(",")
        assert len(nodes) == 2 and nodes[0] != nodes[1] and second[0] in nodes  # one worker on each node
        assert run.data.tags["trained_in"] == "ray train workers"
        assert run.info.artifact_uri.startswith("s3://ssl/mlflow/")
        for pid in node_processes(second[0]):
            os.kill(pid, signal.SIGKILL)
        output, _ = job.communicate(timeout=600)
    finally:
        job.kill()
    assert job.returncode == 0 and "succeeded" in output, output[-3000:]
    # a readable job log: the run's own lines, not every worker's and Ray's (those stay in Ray's log folder)
    assert "epoch 2/2 done in" in output and "(RayTrainWorker" not in output and "(SplitCoordinator" not in output
    run = assert_resumed_once(cluster, output, "node-lost", epochs=2, steps_per_epoch=8)
    assert second[0] not in run.data.tags["worker_nodes"]  # the restarted workers ran on the head
    # the final evaluation ran inside the job too: embeddings of the S3 data, kNN, into MLflow
    assert 0 < run.data.metrics["eval/knn_top1_k20"] <= 1 and s3_artifact(cluster, run, "backbone/backbone.json")
    assert cluster["s3"].get_file_info("ssl/runs/node-lost/run.json").type == FileType.File
    evaluation = submit(cluster, "pipelines.evaluate", [
        "--run", "node-lost", "--storage", "s3://ssl/runs", "--protocol", "linear", "--linear-epochs", "2",
        "--linear-lrs", "0.1", "--train-limit", "200", "--test-limit", "100"])
    output, _ = evaluation.communicate(timeout=600)
    assert evaluation.returncode == 0 and f"logged into MLflow run {run.info.run_id}" in output, output[-3000:]
    client, _ = finished_run(cluster["mlflow"], "node-lost")
    assert 0 < client.get_run(run.info.run_id).data.metrics["eval/linear_top1"] <= 1
    # `--resume last` and `pipelines.sweep --resume last` look for the newest run in object storage too
    for key in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(key, cluster["env"][key])
    from pipelines.storage.runs import last_run_name

    assert last_run_name("s3://ssl/runs") == "node-lost"


def test_stop_leaves_no_process_of_the_cluster_and_no_port_open(cluster):
    """The module's last test (the fixture's own stop then finds nothing to do): after the jobs and the lost node,
    every listener still on loopback; after `stop`, none of the processes found before runs (a zombie, which this
    machine's init may leave unreaped, holds no socket) and none of their ports listens, the agents and Ray's
    client server included (they outlived the old `stop`, whose match on the temporary folder missed them)."""
    import psutil

    found = cluster_processes(cluster)
    assert found["pids"] and [entry for entry in found["listening"] if not on_loopback(entry["address"])] == []
    subprocess.run([cluster["script"], "stop"], env=cluster["env"], check=True, timeout=120)

    def running(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    assert [pid for pid in found["pids"] if running(pid)] == []
    listening = {(c.laddr.ip, c.laddr.port) for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
    assert listening & {(entry["address"], entry["port"]) for entry in found["listening"]} == set()
    assert cluster_processes(cluster)["pids"] == []
