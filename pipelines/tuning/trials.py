"""A sweep's trials: what each reserves, how many run at once and are retried, where they live (their storage
folder, their MLflow child runs), and a field of a trial's configuration."""
from typing import Optional

from pipelines.config.schema import Config
from pipelines.config.section import ConfigError
from pipelines.training.checks import required_cpus, trains_in_trial, uses_gpu

TRIAL_ACTOR_MEMORY = 2**27  # a trial that only drives its TorchTrainer: no CPU, 128 MiB


def trial_resources(config: Config, cluster: dict) -> dict:
    """What a trial's Tune actor reserves: a trial of one worker trains in it (the worker's CPUs and GPU,
    pipelines/training/session.py); one of more workers only drives their TorchTrainer."""
    if trains_in_trial(config):
        return {"CPU": config.train.cpus_per_worker, "GPU": 1 if uses_gpu(config, cluster) else 0}
    return {"CPU": 0, "memory": TRIAL_ACTOR_MEMORY}


def trial_concurrency(config: Config, cluster: dict, wanted: Optional[int]) -> int:
    """Trials that fit at once: each reserves its Train workers, augmentation actors and file listing
    (and GPUs), so trials, Train workers and Ray Data never wait on each other's CPUs."""
    fits = int(cluster.get("CPU", 0) // required_cpus(config))
    if uses_gpu(config, cluster):
        fits = min(fits, int(cluster.get("GPU", 0) // config.train.num_workers))
    if fits < 1:
        raise ConfigError(f"one trial reserves {required_cpus(config):g} CPUs but the cluster has "
                          f"{cluster.get('CPU', 0):g}: lower train.cpus_per_worker or data.augment_cpus")
    return min(fits, wanted) if wanted else fits


def trial_failures(config: Config):
    """Ray Train restarts a TorchTrainer's failed workers (`train.max_failures`); Tune restarts a trial that trains in
    its own actor as often, and the trial resumes from its last checkpoint."""
    from ray import tune

    return tune.FailureConfig(max_failures=config.train.max_failures if trains_in_trial(config) else 0)


def trial_storage(base: Config, sweep_name: str) -> str:
    return f"{base.train.storage_path.rstrip('/')}/{sweep_name}/trials"


def child_runs(client, state: dict) -> list:
    parent = state["parent_run_id"]
    return client.search_runs([client.get_run(parent).info.experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{parent}'", max_results=10000)


def tree_value(tree: dict, field: str):
    node = tree
    for key in field.split("."):
        node = node.get(key) if isinstance(node, dict) else None
    return node
