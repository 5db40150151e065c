"""What a pretraining checks before it starts (CPUs, locations every node sees, steps per epoch) and how it starts or joins Ray."""
import math
import os
from typing import Optional

from pipelines.config.project import IN_RAY_JOB_COPY, PROJECT_ROOT
from pipelines.config.schema import Config
from pipelines.config.section import ConfigError
from pipelines.data.stream import LISTING_CPUS
from pipelines.training.driver import check_cpus


def required_cpus(config: Config) -> float:
    """Logical CPUs the run reserves at once: Train workers, augmentation actors (which read their row groups),
    and Ray Data's file listing. Fewer means a deadlock."""
    data = config.data
    workers = config.train.num_workers * config.train.cpus_per_worker
    return workers + data.augment_actors * data.augment_cpus + LISTING_CPUS


def trains_in_trial(config: Config) -> bool:
    """Whether a sweep trial of this configuration trains in its own Tune actor (one worker:
    pipelines/training/session.py) or drives a TorchTrainer (several workers, which Train starts and keeps in step)."""
    return config.train.num_workers == 1


def uses_gpu(config: Config, cluster: Optional[dict] = None) -> bool:
    """`train.use_gpu`, or where it is unset whether the cluster has a GPU (`cluster`: its resources, else Ray's)."""
    if config.train.use_gpu is not None:
        return config.train.use_gpu
    if cluster is None:
        import ray

        cluster = ray.cluster_resources()
    return cluster.get("GPU", 0) > 0


def trains_here(config: Config, trial: bool) -> bool:
    """Whether the run trains in this process (pipelines/training/session.py): one worker, and a sweep trial (whose
    Tune actor reserves it) or a driver on a one-machine Ray it did not join through RAY_ADDRESS (as under `ray job
    submit`) that asks Ray Train for no retries (`train.max_failures`)."""
    if not trains_in_trial(config) or trial:
        return trains_in_trial(config)
    import ray

    from pipelines.cluster.start import cluster_address

    alive = [node for node in ray.nodes() if node["Alive"]]
    return config.train.max_failures == 0 and cluster_address() is None and len(alive) == 1


def init_ray(config: Config, verbose: bool = True) -> None:
    """Joins RAY_ADDRESS's cluster, else starts a local instance with enough logical CPUs for the run
    (threads are set explicitly, so logical CPUs only decide what may be scheduled together). Not
    `verbose`: the workers' and Ray's own output stays in Ray's log files."""
    import ray

    from pipelines.cluster.start import start_ray
    from pipelines.tracking.uri import tracking_uri

    start_ray(verbose, num_cpus=max(os.cpu_count() or 1, math.ceil(required_cpus(config))))
    check_shared_storage(config, tracking_uri(config), len([n for n in ray.nodes() if n["Alive"]]))
    check_cpus(required_cpus(config), ray.cluster_resources().get("CPU", 0),
               "the run (train.num_workers x train.cpus_per_worker + data.augment_actors x data.augment_cpus + 1 for "
               "file listing)", "lower train.cpus_per_worker or data.augment_cpus")


def is_local(path: str) -> bool:
    return "://" not in path or path.startswith(("file://", "sqlite://"))


def local_locations(config: Config, uri: str) -> list[tuple[str, str]]:
    """(setting, value) of the run's data, checkpoint and MLflow locations that are paths on this machine."""
    return [(name, value) for name, value in (("data.path", config.data.path),
                                              ("train.storage_path", config.train.storage_path),
                                              ("tracking.tracking_uri", uri),
                                              ("tracking.artifact_location", config.tracking.artifact_location))
            if value and is_local(value)]


def check_shared_storage(config: Config, uri: str, nodes: int) -> None:
    """On several nodes every worker must reach the data, the checkpoints and MLflow: local paths
    only do if they are a shared mount, which the user has to say (train.shared_storage); MLflow must be
    a server, since SQLite's file locking is unreliable over network mounts."""
    if nodes < 2:
        return
    if uri.startswith("sqlite:") and config.train.shared_storage:
        raise ConfigError(
            f"the Ray cluster has {nodes} nodes and tracking.tracking_uri={uri} is a SQLite file: several nodes "
            "writing one SQLite file over a shared mount corrupt it (its locking is unreliable there); run an "
            "MLflow server (scripts/cluster.sh start) and set tracking.tracking_uri=http://...")
    if config.train.shared_storage:
        return
    local = [f"{name}={value}" for name, value in local_locations(config, uri)]
    if local:
        raise ConfigError(
            f"the Ray cluster has {nodes} nodes but {', '.join(local)} "
            f"{'is a path' if len(local) == 1 else 'are paths'} on this node only: use object storage URIs "
            "(s3://, gs://) and an MLflow server (http://), or set train.shared_storage=true if they are a "
            "mount every node sees")


def check_job_locations(config: Config, uri: str) -> None:
    """Under `ray job submit` the project folder is Ray's unpacked copy of the working directory, deleted when
    the job ends: defaults built from it would lose the job's checkpoints and runs (and hold no data)."""
    if not IN_RAY_JOB_COPY:
        return
    inside = [f"{name}={value.replace(PROJECT_ROOT.as_posix(), '<job copy>')}"
              for name, value in local_locations(config, uri) if PROJECT_ROOT.as_posix() in value]
    if inside:
        raise ConfigError(
            f"this job runs in Ray's copy of the project ({PROJECT_ROOT}), which Ray may delete once the job ends "
            "(when its cache of job copies outgrows RAY_RUNTIME_ENV_WORKING_DIR_CACHE_SIZE_GB, 10 by default), "
            f"and {', '.join(inside)} {'points' if len(inside) == 1 else 'point'} into it: set cluster-wide "
            "locations, e.g. --set data.path=s3://bucket/data --set train.storage_path=s3://bucket/runs "
            "--set tracking.tracking_uri=http://mlflow-server:5000 (or export MLFLOW_TRACKING_URI), or folders "
            "on a mount every node sees")


def steps_per_epoch(config: Config, train_images: int) -> int:
    steps = train_images // config.train.num_workers // config.data.batch_size
    if steps < 1:
        raise ConfigError(
            f"data.batch_size={config.data.batch_size} x train.num_workers={config.train.num_workers} "
            f"is larger than the {train_images} training images: lower data.batch_size"
        )
    return steps
