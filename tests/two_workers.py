"""Two real Ray Train workers (TorchTrainer, gloo on CPU), for tests of cross-worker collectives.

A worker group takes 15-20 s to start on this machine, so every check registered with `@two_worker_check`
runs in one 2-worker Ray Train run per test session (the `two_worker_results` fixture), one after the other;
each test then asserts on its own check's results."""
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

import torch
from ray import cloudpickle
from ray.train import RunConfig, ScalingConfig, get_context
from ray.train.torch import TorchTrainer

CHECKS: dict[str, Callable[[int], Any]] = {}


def two_worker_check(body: Callable[[int], Any]) -> Callable[[int], Any]:
    """Registers a module-level `body(rank)` whose result (tensors, dicts of them) a test inspects."""
    CHECKS[f"{body.__module__}.{body.__name__}"] = body
    return body


def run_on_two_workers(bodies: dict[str, Callable[[int], Any]], folder: Path) -> dict[str, dict[int, Any]]:
    """{name: {rank: body(rank)}} for ranks 0 and 1 of one 2-worker Ray Train run; a body that raised holds
    {"error": its traceback}."""
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
