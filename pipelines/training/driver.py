"""What the two Ray Train drivers share (pretraining, fine-tuning): the run's CPUs checked against the cluster's,
the torch threads of each process on a machine, and the TorchTrainer fitted under the progress line."""
import os
from typing import Callable, Optional

from pipelines.config.section import ConfigError


def torch_threads(processes: int, configured: Optional[int] = None) -> int:
    """Threads for each of `processes` processes sharing this machine's cores; `configured` wins."""
    return configured or max(1, (os.cpu_count() or 1) // max(1, processes))


def check_cpus(needed: float, available: float, what: str, remedy: str) -> None:
    """Refuses a run that reserves more logical CPUs than the cluster has: Ray would wait for them for ever."""
    if available < needed:
        raise ConfigError(f"{what} reserves {needed:g} CPUs but the Ray cluster has {available:g}: {remedy}")


def fit(train_function: Callable[[dict], None], loop_config: dict, progress: bool = True, **trainer_arguments):
    """A TorchTrainer of `train_function` fitted while the progress line shows what its chief worker posts
    (`loop_config["progress_board"]`, None without `progress`); its Result."""
    from ray.train.torch import TorchTrainer

    from pipelines.tracking.progress import progress_line, start_board

    board = start_board() if progress else None
    trainer = TorchTrainer(train_function, train_loop_config={**loop_config, "progress_board": board},
                           **trainer_arguments)
    with progress_line(board):
        return trainer.fit()
