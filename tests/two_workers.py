"""Two real Ray Train workers (TorchTrainer, gloo on CPU), for tests of cross-worker collectives."""
import sys
from pathlib import Path

import torch
from ray import cloudpickle
from ray.train import RunConfig, ScalingConfig, get_context
from ray.train.torch import TorchTrainer


def run_on_two_workers(body, folder: Path) -> dict:
    """{rank: body(rank)} for ranks 0 and 1 of a 2-worker Ray Train run; `body` must be module-level."""
    cloudpickle.register_pickle_by_value(sys.modules[body.__module__])  # pytest imports tests by file path

    def loop(config):
        rank = get_context().get_world_rank()
        torch.save(body(rank), Path(config["folder"]) / f"rank{rank}.pt")

    TorchTrainer(loop, train_loop_config={"folder": str(folder)},
                 scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
                 run_config=RunConfig(name="two-workers", storage_path=str(folder))).fit()
    return {rank: torch.load(folder / f"rank{rank}.pt", weights_only=True) for rank in range(2)}
