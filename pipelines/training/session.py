"""Where the training loop runs: in a Ray Train worker, or in the Tune actor of a sweep trial of one worker.

A trial of one worker does not start a Train controller, worker group, placement-group cleaner or synchronisation
actor of its own (about 10 s of a 2-core machine before every trial's first step: BENCHMARKS.md, "Sweep trials").
It runs the same loop in its Tune actor, which Tune hands on to the next trial of a FIFO sweep, imports and all,
reads the Dataset's stream itself (no split coordinator), reports each epoch to Tune (ASHA sees it), and writes
its checkpoints where Ray Train writes them (`<storage>/<run>/checkpoint_<time>`, the last one kept), so a trial's
run is resumed, evaluated or started from as any other. Train's retries are Tune's there: a failed trial
restarts from its last checkpoint (`tune.FailureConfig(max_failures=train.max_failures)`)."""
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import ray.train
import ray.train.torch
import torch

from pipelines.storage.files import latest_checkpoint, store_checkpoint


class WorkerSession:
    """A Ray Train worker's: rank, device and the checkpoint to resume from as Train gives them; reports go to Train's
    controller, which uploads the checkpoint."""
    kind = "ray train workers"

    def __init__(self):
        context = ray.train.get_context()
        self.rank, self.world_size = context.get_world_rank(), context.get_world_size()
        self.local_world_size = context.get_local_world_size()
        self.device = ray.train.torch.get_device()
        self.checkpoint = ray.train.get_checkpoint()

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return ray.train.torch.prepare_model(model)

    def report(self, metrics: dict, folder: Optional[Path], upload: str) -> None:
        """`folder`: the checkpoint (rank 0's; None on the other ranks), removed once uploaded."""
        checkpoint = ray.train.Checkpoint.from_directory(str(folder)) if folder else None
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_upload_mode=ray.train.CheckpointUploadMode[
            upload.upper()], delete_local_checkpoint_after_upload=True)


class TrialSession:
    """A one-worker sweep trial's own process (its Tune actor reserves the worker's CPUs and GPU)."""
    kind = "tune trial"
    rank, world_size, local_world_size = 0, 1, 1

    def __init__(self, run_folder: str, use_gpu: bool):
        self.run_folder = run_folder
        self.device = torch.device("cuda", 0) if use_gpu else torch.device("cpu")  # Ray shows the trial its GPU only
        latest = latest_checkpoint(run_folder)
        self.checkpoint = ray.train.Checkpoint(latest) if latest else None
        self.metrics: dict = {}

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self.device)

    def report(self, metrics: dict, folder: Optional[Path], upload: str) -> None:
        """Stores the checkpoint before Tune hears of the epoch (a trial Tune stops then has it)."""
        from ray import tune

        if folder:
            self.checkpoint = ray.train.Checkpoint(store_checkpoint(self.run_folder, str(folder)))
            shutil.rmtree(folder, ignore_errors=True)
        self.metrics = metrics
        tune.report(metrics)


@dataclass
class TrialResult:
    """What `TrialSession` ends with, as Ray Train's Result holds it for a Train run."""
    metrics: dict
    checkpoint: Optional[ray.train.Checkpoint]
