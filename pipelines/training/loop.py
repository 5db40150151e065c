"""The training loop (in each Ray Train worker, or in a one-worker sweep trial's process: pipelines/training/
session.py), its evaluation, checkpoints and metrics."""
import hashlib
import math
import random
import tempfile
import time
from pathlib import Path
from typing import Iterable

import numpy as np
import ray
import torch

from pipelines.config.schema import Config
from pipelines.data.augment_batch import MASKS, view_column
from pipelines.data.store import DatasetInfo
from pipelines.features.extract import Normalizer, evaluate_backbone, extract_features, label_free_metrics
from pipelines.features.extract import load_eval_sets, load_images, load_sample
from pipelines.storage.checkpoint import rng_state, save_training_state, worker_checkpoint_folder
from pipelines.storage.export import save_backbone
from pipelines.tracking.mlflow_runs import MetricLogger
from pipelines.tracking.pictures import method_pictures
from pipelines.tracking.progress import StepClock, say
from pipelines.training.driver import torch_threads
from pipelines.training.methods import build_spec
from pipelines.training.step import TrainStep, configure_device, prepare
from ssl_models.distributed import gather_objects
from ssl_models.metrics import alignment
from ssl_models.online_probe import FirstOutput, OnlineProbe


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Evaluator:
    """Every few epochs (rank 0 only): kNN on a labelled subset, and the label-free measures (RankMe, uniformity)
    on its queries, or without labels on as many training images; alignment on the last batch's first two
    views. The whole splits are evaluated after training, by the transfer stage (pipelines/evaluation/transfer.py)."""

    def __init__(self, config: Config, info: DatasetInfo, device, autocast):
        self.config, self.info, self.autocast = config, info, autocast
        self.normalize = Normalizer(info.mean, info.std, device)
        e = config.eval
        self.subset = load_eval_sets(info, config.data.path, config.data.image_size, e.online_bank_size,
                                     e.online_query_size, config.train.seed)
        self.sample = None if self.subset else load_sample(info, config.data.path, "train", config.data.image_size,
                                                           e.online_query_size, config.train.seed)

    def online(self, backbone, views: list[torch.Tensor]) -> dict[str, float]:
        e = self.config.eval
        if self.subset:
            metrics = evaluate_backbone(backbone, *self.subset, len(self.info.classes), self.normalize, e.knn_k,
                                        e.knn_temperature, e.batch_size, self.autocast)
        else:
            metrics = label_free_metrics(extract_features(backbone, self.sample, self.normalize, e.batch_size,
                                                          self.autocast))
        if len(views) >= 2:  # in fp32: a measurement, and CPUs emulate half precision slowly
            was_training = backbone.training
            with torch.no_grad():
                backbone.eval()
                metrics["alignment"] = alignment(backbone(views[0]), backbone(views[1])).item()
            backbone.train(was_training)
        return metrics


class MetricWindow:
    """Step values kept as tensors on the device and reduced once every `train.log_every` steps: one host
    sync per window instead of several per step. The loss is checked for nan/inf at that cadence."""

    def __init__(self):
        self.values: dict[str, list] = {}
        self.steps: list[int] = []

    def add(self, step: int, values: dict) -> None:
        self.steps.append(step)
        for key, value in values.items():
            self.values.setdefault(key, []).append(value)

    def reduce(self, epoch: int) -> dict[str, float]:
        """Means of the window's values; raises FloatingPointError at the first step whose loss was not finite."""
        tensors = {key: torch.stack(values).float() for key, values in self.values.items()
                   if isinstance(values[0], torch.Tensor)}
        losses = tensors["loss"]
        means = torch.stack([values.mean().to(losses.device) for values in tensors.values()])
        packed = torch.cat([losses, means]).tolist()
        losses, means = packed[:len(losses)], packed[len(losses):]
        for step, loss in zip(self.steps, losses):
            if not math.isfinite(loss):
                raise FloatingPointError(f"loss is {loss} at step {step} (epoch {epoch}); "
                                         "lower optim.lr or check the data")
        reduced = dict(zip(tensors, means))
        reduced.update({key: float(np.mean(values)) for key, values in self.values.items() if key not in tensors})
        self.values, self.steps = {}, []
        return reduced


def train_loop(loop_config: dict, batches: Iterable[dict], session) -> None:
    """Trains on `batches` (`train_worker.started_stream` of this worker's shard, every epoch in one stream: see
    pipelines/data/row_groups.py; a resumed run reads it from its start) where `session` runs it (a
    `WorkerSession` or `ProcessSession`: its rank, device, checkpoint to resume from, and reports)."""
    config = Config.model_validate(loop_config["config"])
    info = DatasetInfo(**loop_config["dataset"])
    steps_per_epoch, epochs = loop_config["steps_per_epoch"], config.train.epochs
    rank, world_size = session.rank, session.world_size
    board = loop_config.get("progress_board") if rank == 0 else None  # pipelines/tracking/progress.py
    echo = session.echo or board is None  # the driver that trains draws its board; its console gets no step lines

    def tell(line: str, to_board: bool = True) -> None:
        say(line, board if to_board else None, echo)
    # the cores of this node are shared by the workers on this node, not by every worker of the run
    torch.set_num_threads(torch_threads(session.local_world_size, config.train.torch_threads))
    device = session.device
    configure_device(device)
    seed_everything(config.train.seed + rank)
    batch_size = config.data.batch_size

    with worker_checkpoint_folder(session.checkpoint) as folder:
        prepared = prepare(config, info.channels, steps_per_epoch, device, Path(folder) if folder else None,
                           session.prepare_model, (info.mean, info.std))
    method, optimizer, restored = prepared.method, prepared.optimizer, prepared.restored
    train_step = TrainStep(config, method, optimizer, steps_per_epoch, device)
    step, start_epoch = 0, 0
    if restored:
        step, start_epoch = restored["step"], restored["epoch"]
        if not restored["rng_restored"]:  # more workers than when the checkpoint was written
            seed_everything(config.train.seed + rank + 7919 * step)
        if rank == 0:
            tell(f"resumed from checkpoint: epoch {start_epoch}, step {step}")

    is_chief = rank == 0
    logger = MetricLogger(loop_config["tracking_uri"], loop_config["mlflow_run_id"]) if is_chief else None
    if logger:  # a resumed or restarted run (even one restarted before its first checkpoint) trains steps again
        logger.skip_steps_already_logged()
    nodes = worker_nodes()
    if logger:
        logger.client.set_tag(logger.run_id, "worker_nodes", ",".join(nodes))
        logger.client.set_tag(logger.run_id, "trained_in", session.kind)
    evaluator = Evaluator(config, info, device, train_step.autocast) if is_chief and config.eval.every_epochs else None
    normalize = Normalizer(info.mean, info.std, device)

    probe = None
    if info.labelled and config.eval.online_probe:
        probe = OnlineProbe(method.backbone.num_features, len(info.classes), config.eval.online_probe_lr)
        probe = probe.to(device).start_in_sync()
    tap = FirstOutput(method.backbone) if probe else None
    picture_images = (load_images(config.data.path, "train", info.channels, config.data.image_size, 6)
                      if is_chief and config.eval.picture_every else None)
    clock = StepClock()
    for epoch in range(start_epoch, epochs):
        started, seen, window, probe_top1 = time.time(), 0, MetricWindow(), []
        ready = started  # when the loop last asked for a batch
        for index, batch in zip(range(steps_per_epoch), batches):
            arrived = time.time()
            views = [normalize(batch[view_column(v)]) for v in range(method.num_views)]  # onto the device
            if tap:
                tap.take()  # drop what evaluation or pictures embedded since the last step
            values = train_step(views, step, {"masks": batch[MASKS]} if MASKS in batch else None)  # on the host
            if "label" in batch:
                labels = batch["label"].to(device, non_blocking=True)
                values["classes_per_batch"] = classes_present(labels, len(info.classes))
            if probe:
                values.update(probe_step(probe, tap, method, views[0], labels, train_step.autocast))
                probe_top1.append(values["online_probe_top1"])
            # the host's seconds: waiting for the batch, then the step (on a GPU, until its kernels are queued)
            values["data_seconds"], values["step_seconds"] = arrived - ready, time.time() - arrived
            window.add(step, values)
            clock.tick()
            step += 1
            seen += batch_size * world_size
            if step % config.train.log_every == 0 or index == steps_per_epoch - 1:
                averaged = {f"train/{k}": v for k, v in window.reduce(epoch + 1).items()}
                if train_step.skipped_steps:
                    averaged["train/skipped_steps"] = train_step.skipped_steps
                if is_chief:
                    logger.log(averaged, step)
                    elapsed = time.time() - started
                    tell(f"epoch {epoch + 1}/{epochs} step {index + 1}/{steps_per_epoch} "
                         f"loss {averaged['train/loss']:.4f} lr {averaged['train/lr']:.2e} {seen / elapsed:.0f} img/s",
                         to_board=False)
                    if board is not None:
                        left = (epochs - epoch - 1) * steps_per_epoch + steps_per_epoch - index - 1
                        board.update.remote({"epoch": epoch + 1, "epochs": epochs, "step": index + 1,
                                             "steps": steps_per_epoch, "images_per_second": seen / elapsed,
                                             "loss": averaged["train/loss"], "seconds_left": clock.seconds_left(left)})
            ready = time.time()
        seconds = time.time() - started
        metrics = {"epoch": epoch + 1, "step": step, "images_per_second": seen / seconds, "epoch_seconds": seconds}
        if probe_top1:  # the online probe's accuracy over the epoch's batches (as solo-learn logs it)
            metrics["online_linear_top1"] = torch.stack(probe_top1).mean().item()
        last = epoch == epochs - 1
        if world_size > 1:
            metrics["replicas_identical"] = float(len(set(gather_objects(replica_fingerprint(method, probe)))) == 1)
            if not metrics["replicas_identical"] and is_chief:
                tell("warning: the workers' copies of the method differ (targets, teachers or queues out of sync)")
        if evaluator and config.eval.every_epochs and ((epoch + 1) % config.eval.every_epochs == 0 or last):
            metrics.update(evaluator.online(method.backbone, views[:2] if method.num_views >= 2 else []))
        if picture_images is not None and ((epoch + 1) % config.eval.picture_every == 0 or last):
            for name, picture in method_pictures(method, picture_images.to(device), normalize).items():
                logger.log_picture(name, picture, step)
        if is_chief:
            logger.log(metrics, step)
            logger.flush()
            tell(f"epoch {epoch + 1}/{epochs} done in {seconds:.0f}s: {fmt(metrics)}")
        blocked = report(session, method, optimizer, step, epoch + 1, metrics, is_chief, config, info)
        if is_chief:
            logger.log({"checkpoint_seconds": blocked}, step)  # how long training waited for the checkpoint
            logger.flush()
    if start_epoch >= epochs and is_chief:
        tell(f"nothing to train: the checkpoint already holds {start_epoch} of {epochs} epochs")


def probe_step(probe: OnlineProbe, tap: FirstOutput, method, first_view: torch.Tensor, labels: torch.Tensor,
               autocast) -> dict:
    """The online probe's step on the features the method's first backbone call produced (its first view); a
    method that does not call its backbone on whole images (MAE embeds visible patches only) gets one more
    forward pass of the first view, without gradients."""
    features = tap.take()
    if features is None or features.ndim != 2:
        with torch.no_grad(), autocast():
            features = method.backbone(first_view)
        tap.take()
    return probe.step(features[: len(first_view)], labels)


def classes_present(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """How many classes a batch holds (unlabelled rows, -1, not counted), without a host sync."""
    counts = torch.zeros(num_classes + 1, device=labels.device).scatter_add_(
        0, labels.long() + 1, torch.ones(len(labels), device=labels.device))
    return (counts[1:] > 0).sum()


def replica_fingerprint(method, probe=None) -> str:
    """A hash of every parameter and of every buffer outside the DDP-wrapped network (whose BatchNorm
    statistics DDP re-broadcasts at each forward), and of the online probe's parameters: equal on every rank
    when the replicas are in sync."""
    skip = {id(buffer) for buffer in method.trained.buffers()}
    digest = hashlib.sha1()
    for tensor in [*method.parameters(), *method.buffers(), *(probe.parameters() if probe else ())]:
        if id(tensor) not in skip:
            digest.update(tensor.detach().reshape(-1).cpu().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def worker_nodes() -> list[str]:
    """The Ray node of every worker, in rank order (so a run shows where its workers ran)."""
    return gather_objects(ray.get_runtime_context().get_node_id())


def report(session, method, optimizer, step, epoch, metrics, is_chief, config, info) -> float:
    """Saves the checkpoint (chief) and reports the epoch; returns the seconds training waited for it."""
    started = time.time()
    rng_states = gather_objects(rng_state())  # each rank resumes its own random stream
    folder = None
    if is_chief:
        folder = Path(tempfile.mkdtemp(prefix="checkpoint_"))  # removed once stored
        save_training_state(folder, method, optimizer, step, epoch, metrics, rng_states)
        export_backbone(folder, method.backbone, config, info, epoch, step)
    session.report({k: v for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}, folder,
                   config.train.checkpoint_upload)
    return time.time() - started


def export_backbone(folder: Path, backbone, config: Config, info: DatasetInfo, epoch: int, step: int) -> None:
    """backbone.safetensors and backbone.json (with what evaluation needs: image size, normalisation)."""
    save_backbone(folder, backbone, build_spec(config, info.channels),
                  {"feature_dim": backbone.num_features, "image_size": config.data.image_size, "mean": info.mean,
                   "std": info.std, "method": config.method.name, "epochs": epoch, "steps": step})


def fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
