"""Joining or starting Ray, the same way for every command."""
import logging
import os
from typing import Optional


def start_ray(verbose: bool = False, num_cpus: Optional[int] = None) -> None:
    """Joins RAY_ADDRESS's cluster (as under `ray job submit`), else starts a local instance (`num_cpus`
    logical CPUs; default: this machine's cores). Not `verbose`: the output of Ray and of its workers stays
    in Ray's log files, whose folder is named here (errors still reach this process)."""
    import ray

    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        quiet = {} if verbose else {"log_to_driver": False, "logging_level": logging.ERROR}
        if address:
            context = ray.init(address=address, **quiet)
        else:
            context = ray.init(num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1", **quiet)
        if not verbose:
            from ray._private.worker import _global_node

            dashboard = f"dashboard http://{context.dashboard_url}; " if context.dashboard_url else ""
            print(f"Ray: {dashboard}its logs and the workers' in {_global_node.get_logs_dir_path()} "
                  "(--verbose shows them here)", flush=True)
    ray.data.DataContext.get_current().enable_progress_bars = False
    if not verbose:
        logging.getLogger("ray.data").setLevel(logging.ERROR)
