"""Joining or starting Ray, the same way for every command."""
import logging
import os
from typing import Optional

from pipelines.cluster.ray_compat import TRAIN_HEALTH_CHECK_INTERVAL_S, TRAIN_PREEMPTION_WATCHER, session_logs_dir
from pipelines.config.section import ConfigError


def start_ray(verbose: bool = False, num_cpus: Optional[int] = None) -> None:
    """Joins RAY_ADDRESS's cluster (as under `ray job submit`), else starts a local instance (`num_cpus`
    logical CPUs; default: this machine's cores). Not `verbose`: the output of Ray and of its workers stays
    in Ray's log files, whose folder is named here (errors still reach this process)."""
    import ray

    address = cluster_address()  # checked even where Ray runs already (a notebook, a test session)
    if not ray.is_initialized():
        quiet = {} if verbose else {"log_to_driver": False, "logging_level": logging.ERROR}
        if address:
            context = ray.init(address=address, **quiet)
        else:
            use_one_machine_train_settings()
            context = ray.init(num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1", **quiet)
        if not verbose:
            dashboard = f"dashboard http://{context.dashboard_url}; " if context.dashboard_url else ""
            print(f"Ray: {dashboard}its logs and the workers' in {session_logs_dir()} "
                  "(--verbose shows them here)", flush=True)
    ray.data.DataContext.get_current().enable_progress_bars = False
    if not verbose:
        logging.getLogger("ray.data").setLevel(logging.ERROR)


def cluster_address() -> Optional[str]:
    """RAY_ADDRESS, the cluster a command joins: the head's GCS (host:6379) or `auto`. A job server's URL there
    (http://host:8265, which `ray job submit` reads from RAY_API_SERVER_ADDRESS) is refused by name."""
    address = os.environ.get("RAY_ADDRESS") or None
    if address and address.split("://")[0].lower() in ("http", "https"):
        raise ConfigError(
            f"RAY_ADDRESS={address} is a job server's URL, not a cluster to join: export the head's address there "
            f"(RAY_ADDRESS=<head>:6379) and give `ray job submit` the URL as RAY_API_SERVER_ADDRESS={address} (or "
            "--address), or unset RAY_ADDRESS to start Ray on this machine")
    return address


# Ray Train V2's settings for one machine, read by each run's controller (Ray passes them on): no preemption
# watcher (an actor more per run, watching for the drain of a node that nothing here drains) and the workers'
# status polled every 0.5 s instead of 2 s (a run's end is seen that much sooner).
# And the raylet's: a pooled worker idle beyond the pool's soft limit (one per CPU) lives 60 s, not 1 s, before it
# is ended. Ray Data's tasks come in bursts (an evaluation's reads, an ingest's checks); with Ray's 1 s, each burst
# started new worker processes (about 1 CPU-second each): 8 against 4 over 2,400 web photos, when training still
# read in tasks of their own.
ONE_MACHINE_TRAIN_SETTINGS = {TRAIN_PREEMPTION_WATCHER: "0", TRAIN_HEALTH_CHECK_INTERVAL_S: "0.5",
                              "RAY_idle_worker_killing_time_threshold_ms": "60000"}


def use_one_machine_train_settings() -> None:
    """ONE_MACHINE_TRAIN_SETTINGS into this process's environment (a value the user set is kept), before it
    starts a local Ray, whose processes inherit it (a sweep's trials too). A cluster joined by RAY_ADDRESS
    keeps Ray's defaults."""
    for key, value in ONE_MACHINE_TRAIN_SETTINGS.items():
        os.environ.setdefault(key, value)
