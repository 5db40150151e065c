"""Where the training loop runs: in Ray Train's workers, or in this process when a run has one worker.

A run of one worker needs no Train controller, worker group, placement-group cleaner, synchronisation actor or
split coordinator: started for every run, they cost about 10 s of a 2-core machine before its first step
(BENCHMARKS.md, "Test suite" and "Sweep trials"). Such a run trains in the process that asked for it: a sweep
trial's Tune actor (which reserves the worker's CPUs and GPU, and which Tune hands on to the next trial of a FIFO
sweep, imports and all), or the driver of a run on a Ray it has to itself on one machine (`trains_here`). The loop
is the same; it reads the Dataset's stream itself, reports each epoch to Tune in a trial, and writes its checkpoints
where Ray Train writes them (`<storage>/<run>/checkpoint_<time>`, the last one kept), so the run is resumed,
evaluated or started from as any other, by either. What Train's controller adds is handled: a trial is retried by
Tune from its last checkpoint (`tune.FailureConfig(max_failures=train.max_failures)`), and a run that asks for
retries (`train.max_failures`), joins a cluster or has more workers trains in Ray Train."""
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import ray.train
import ray.train.torch
import torch

from pipelines.storage.files import STORED_MARK, checkpoint_folders, file_exists, latest_checkpoint, store_checkpoint

TRAIN_SNAPSHOT = "checkpoint_manager_snapshot.json"  # written by Ray Train once it has registered a checkpoint


class WorkerSession:
    """A Ray Train worker's: rank, device and the checkpoint to resume from as Train gives them; reports go to Train's
    controller, which uploads the checkpoint."""
    kind, echo = "ray train workers", True  # a worker's output is its log

    def __init__(self, run_folder: str):
        context = ray.train.get_context()
        self.rank, self.world_size = context.get_world_rank(), context.get_world_size()
        self.local_world_size = context.get_local_world_size()
        self.device = ray.train.torch.get_device()
        self.checkpoint = ray.train.get_checkpoint() or unrecorded_checkpoint(run_folder)

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return ray.train.torch.prepare_model(model)

    def report(self, metrics: dict, folder: Optional[Path], upload: str) -> None:
        """`folder`: the checkpoint (rank 0's; None on the other ranks), removed once uploaded."""
        checkpoint = ray.train.Checkpoint.from_directory(str(folder)) if folder else None
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_upload_mode=ray.train.CheckpointUploadMode[
            upload.upper()], delete_local_checkpoint_after_upload=True)


def unrecorded_checkpoint(run_folder: str) -> Optional[ray.train.Checkpoint]:
    """The newest checkpoint of a run that Ray Train has no record of (no snapshot of its checkpoint manager): one
    written in a process session, which a Train run resuming it (more workers, a cluster) then starts from."""
    found = None if train_recorded(run_folder) else marked_checkpoint(run_folder)  # Train resumes from its own
    return ray.train.Checkpoint(found) if found else None


def resumable_checkpoint(run_folder: str) -> Optional[str]:
    """The newest checkpoint known to be whole: in a run Ray Train has a record of, its newest; else the newest a
    process session marked whole. A copy stopped halfway (a trial's actor ended by Ctrl+C while it stored one) has
    no mark, and the one before it is taken."""
    return latest_checkpoint(run_folder) if train_recorded(run_folder) else marked_checkpoint(run_folder)


def train_recorded(run_folder: str) -> bool:
    return file_exists(f"{run_folder.rstrip('/')}/{TRAIN_SNAPSHOT}")


def marked_checkpoint(run_folder: str) -> Optional[str]:
    return next((folder for folder in reversed(checkpoint_folders(run_folder))
                 if file_exists(f"{folder}/{STORED_MARK}")), None)


class ProcessSession:
    """A run of one worker in this process: a sweep trial's Tune actor (`trial`) or the driver."""
    rank, world_size, local_world_size = 0, 1, 1

    def __init__(self, run_folder: str, use_gpu: bool, trial: bool = False):
        self.run_folder, self.trial = run_folder, trial
        self.kind = "tune trial" if trial else "driver"
        self.echo = trial  # a trial's output is its log; the driver's console shows the progress line
        self.device = torch.device("cuda", 0) if use_gpu else torch.device("cpu")  # a trial sees its GPU only
        found = resumable_checkpoint(run_folder)
        self.checkpoint = ray.train.Checkpoint(found) if found else None
        self.metrics: dict = {}

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self.device)

    def report(self, metrics: dict, folder: Optional[Path], upload: str) -> None:
        """Stores the checkpoint before Tune hears of the epoch (a trial Tune stops then has it)."""
        if folder:
            self.checkpoint = ray.train.Checkpoint(store_checkpoint(self.run_folder, str(folder)))
            shutil.rmtree(folder, ignore_errors=True)
        self.metrics = metrics
        if self.trial:
            from ray import tune

            tune.report(metrics)


@dataclass
class ProcessResult:
    """What `ProcessSession` ends with, as Ray Train's Result holds it for a Train run."""
    metrics: dict
    checkpoint: Optional[ray.train.Checkpoint]
