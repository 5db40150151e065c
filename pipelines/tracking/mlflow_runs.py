"""MLflow: where runs go, how they start, what the training loop logs, how they end."""
import hashlib
import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from pipelines.config.project import IN_RAY_JOB_COPY, PROJECT_ROOT
from pipelines.config.schema import Config
from pipelines.config.section import ConfigError

MAX_PARAM_LENGTH = 6000


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fails in seconds, before anything starts, when an MLflow server does not answer (MLflow's own
    client retries for minutes)."""
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=timeout).raise_for_status()
    except requests.RequestException as error:
        raise ConfigError(f"the MLflow tracking server {uri} does not answer ({type(error).__name__}): start it "
                          "(scripts/cluster.sh start) or point tracking.tracking_uri / MLFLOW_TRACKING_URI "
                          "elsewhere") from None


def open_store(uri: str) -> None:
    """MLflow's store for `uri`, made once per process (a new SQLite store's tables are created here): the run's
    clients then find it ready."""
    MlflowClient(uri).search_experiments(max_results=1)


def ui_command(uri: str) -> str:
    if uri.startswith("sqlite:"):
        return f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"
    return f"open {uri} in a browser"


def ensure_experiment(client: MlflowClient, name: str, uri: str, artifact_location: Optional[str] = None) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    if artifact_location is None and uri.startswith("sqlite:"):
        artifact_location = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts" / name).as_uri()
    return client.create_experiment(name, artifact_location=artifact_location)


def source_tags() -> dict[str, str]:
    """MLflow's source tags: the entry point and the git commit of the code (from `GIT_COMMIT` when set,
    as a job's submitter can pass it: Ray's copy of the working directory has no .git)."""
    import subprocess
    import sys

    entry = Path(sys.argv[0]).resolve()
    tags = {"mlflow.source.name": str(entry.relative_to(PROJECT_ROOT) if entry.is_relative_to(PROJECT_ROOT) else entry),
            "mlflow.source.type": "JOB" if IN_RAY_JOB_COPY else "LOCAL"}
    commit = os.environ.get("GIT_COMMIT")
    if not commit:
        found = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True)
        commit = found.stdout.strip() if found.returncode == 0 else None
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def start_run(config: Config, uri: str, run_name: str, tags: Optional[dict] = None) -> tuple[MlflowClient, str]:
    client = MlflowClient(uri)
    experiment_id = ensure_experiment(client, config.tracking.experiment or config.method.name, uri,
                                      config.tracking.artifact_location)
    run = client.create_run(experiment_id, run_name=run_name,
                            tags={"method": config.method.name, **source_tags(), **(tags or {}),
                                  **({"init": config.model.init} if config.model.init else {})})
    params = [Param(key, str(value)[:MAX_PARAM_LENGTH]) for key, value in config.flat().items()]
    for start in range(0, len(params), 100):
        client.log_batch(run.info.run_id, params=params[start : start + 100])
    return client, run.info.run_id


def log_dataset(client: MlflowClient, run_id: str, path: str, info) -> None:
    """The ingested dataset (`info`: its DatasetInfo) as the run's training input: the run page's Datasets panel, and
    runs found by dataset. Its digest is its description's (name, splits, classes, statistics) SHA-256."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    described = json.dumps(asdict(info), sort_keys=True)
    profile = {"images": info.splits, "classes": len(info.classes or []), "channels": info.channels,
               "skipped": info.skipped, "min_side": info.min_side}
    dataset = Dataset(name=info.name, digest=hashlib.sha256(described.encode()).hexdigest()[:16],
                      source_type=path.split("://")[0] if "://" in path else "local",
                      source=json.dumps({"uri": path}), profile=json.dumps(profile))
    client.log_inputs(run_id, [DatasetInput(dataset, [InputTag("mlflow.data.context", "training")])])


FAILURE_FILE = "failure.txt"


def fail_run(client: MlflowClient, run_id: str, reason: str, status: str = "FAILED", details: str = "") -> None:
    """`reason` as the run's tag; `details` (a traceback) as its artifact failure.txt."""
    client.set_tag(run_id, "failure_reason", reason[:5000])
    if details:
        client.log_text(run_id, details, FAILURE_FILE)
    client.set_terminated(run_id, status)


class MetricLogger:
    """Metrics through MLflow's asynchronous logging (its own queue and thread batch them; training never waits
    on a round trip), points of steps already in MLflow left out, `flush()` waiting until all are stored."""

    def __init__(self, uri: str, run_id: str):
        self.client = MlflowClient(uri)
        self.run_id = run_id
        self.pending = []
        self.logged_through = -1

    def skip_steps_already_logged(self, key: str = "train/loss") -> None:
        """After a restart from a checkpoint the steps between it and the failure are trained again;
        their points are in MLflow already and are not logged twice."""
        history = self.client.get_metric_history(self.run_id, key)
        self.logged_through = max((m.step for m in history), default=-1)

    def log(self, metrics: dict[str, float], step: int) -> None:
        if step <= self.logged_through:
            return
        now = int(time.time() * 1000)
        points = [Metric(key, float(value), now, step) for key, value in metrics.items()]
        for start in range(0, len(points), 1000):  # MLflow's limit per batch
            self.pending.append(self.client.log_batch(self.run_id, metrics=points[start:start + 1000],
                                                      synchronous=False))

    def log_picture(self, key: str, picture, step: int) -> None:
        """With MLflow's image logging: the UI shows a step slider and compares runs side by side."""
        if step > self.logged_through:
            self.client.log_image(self.run_id, picture, key=key, step=step)

    def flush(self) -> None:
        for operation in self.pending:
            operation.wait()
        self.pending = []


def log_figure(client: MlflowClient, run_id: str, figure, artifact_file: str) -> None:
    """A matplotlib figure as a PNG artifact of the run, then closed (pyplot keeps every figure until then)."""
    import matplotlib.pyplot as plt

    client.log_figure(run_id, figure, artifact_file, save_kwargs={"dpi": 110})
    plt.close(figure)
