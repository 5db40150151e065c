"""What each Ray Train worker runs: the training loop, its evaluation, checkpoints and metrics."""
import math
import os
import random
import sys
import tempfile
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import numpy as np
import ray.train
import ray.train.torch
import torch

from pipelines.augment import view_column
from pipelines.build import build_method, build_optimizer, build_spec, lr_schedule, weight_decay_schedule
from pipelines.checkpoint import load_training_state, save_training_state
from pipelines.config import Config
from pipelines.dataset_store import DatasetInfo
from pipelines.evaluate import Normalizer, evaluate_backbone, load_eval_sets, load_images
from pipelines.export import save_backbone
from pipelines.pictures import method_pictures
from pipelines.tracking import MetricLogger
from ssl_models.schedules import value_at


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def autocast_for(precision: str, device: torch.device):
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp32":
        return nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return partial(torch.autocast, device_type=device.type, dtype=dtype)


class Evaluator:
    """kNN on the labelled subset every few epochs, and on the whole splits at the end (rank 0 only)."""

    def __init__(self, config: Config, info: DatasetInfo, device, autocast):
        self.config, self.info, self.autocast = config, info, autocast
        self.normalize = Normalizer(info.mean, info.std, device)
        self.full = None
        self.subset = load_eval_sets(info, config.data.path, config.data.image_size,
                                     config.eval.online_bank_size, config.eval.online_query_size)

    def _run(self, backbone, sets, prefix: str) -> dict[str, float]:
        if sets is None:
            return {}
        e = self.config.eval
        metrics = evaluate_backbone(backbone, *sets, len(self.info.classes), self.normalize, e.knn_k,
                                    e.knn_temperature, e.batch_size, self.autocast)
        return {f"{prefix}{key}": value for key, value in metrics.items()}

    def online(self, backbone) -> dict[str, float]:
        return self._run(backbone, self.subset, "")

    def final(self, backbone, prefix: str) -> dict[str, float]:
        if self.full is None:
            e = self.config.eval
            self.full = load_eval_sets(self.info, self.config.data.path, self.config.data.image_size,
                                       e.final_bank_size, e.final_query_size)
        return self._run(backbone, self.full, prefix)


def train_loop_per_worker(loop_config: dict) -> None:
    config = Config.model_validate(loop_config["config"])
    info = DatasetInfo(**loop_config["dataset"])
    steps_per_epoch, epochs = loop_config["steps_per_epoch"], config.train.epochs
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(config.train.torch_threads or max(1, (os.cpu_count() or 1) // world_size))
    device = ray.train.torch.get_device()
    seed_everything(config.train.seed + rank)
    autocast = autocast_for(config.train.precision, device)

    method = build_method(config, info.channels, steps_per_epoch).to(device)
    optimizer = build_optimizer(config, method.trained)
    scaler = torch.amp.GradScaler(device.type, enabled=config.train.precision == "fp16")
    lrs, wds = lr_schedule(config, steps_per_epoch), weight_decay_schedule(config, steps_per_epoch)
    step, start_epoch, baseline_metrics = 0, 0, {}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            restored = load_training_state(Path(folder), method, optimizer, device)
        step, start_epoch = restored["step"], restored["epoch"]
        baseline_metrics = {k: v for k, v in restored["metrics"].items() if k.startswith("init_")}
        if rank == 0:
            say(f"resumed from checkpoint: epoch {start_epoch}, step {step}")
    method.wrap_trained(ray.train.torch.prepare_model)

    is_chief = rank == 0
    logger = MetricLogger(loop_config["tracking_uri"], loop_config["mlflow_run_id"]) if is_chief else None
    if logger and checkpoint:
        logger.skip_steps_already_logged()
    nodes = worker_nodes(world_size)
    if logger:
        logger.client.set_tag(logger.run_id, "worker_nodes", ",".join(nodes))
    evaluator = Evaluator(config, info, device, autocast) if is_chief and info.labelled else None
    normalize = Normalizer(info.mean, info.std, device)
    if evaluator and step == 0 and config.eval.baseline:
        baseline_metrics.update(evaluator.final(method.backbone, "init_"))
        logger.log(baseline_metrics, step=0)
        say(f"random-init backbone: {fmt(baseline_metrics)}")

    picture_images = (load_images(config.data.path, "train", info.channels, config.data.image_size, 6)
                      if is_chief and config.eval.picture_every else None)
    shard = ray.train.get_dataset_shard("train")
    batch_size = config.data.batch_size
    for epoch in range(start_epoch, epochs):
        started, seen, window = time.time(), 0, []
        batches = shard.iter_torch_batches(batch_size=batch_size, drop_last=True,
                                           local_shuffle_buffer_size=config.data.shuffle_buffer or None)
        for index, batch in enumerate(batches):
            if index >= steps_per_epoch:
                continue  # drain the shard so every worker ends its epoch together
            views = [normalize(batch[view_column(v)]) for v in range(method.num_views)]
            lr, weight_decay = value_at(lrs, step), value_at(wds, step)
            for group in optimizer.param_groups:
                group["lr"] = lr
                if group["weight_decay"] > 0:  # biases and norms stay at 0
                    group["weight_decay"] = weight_decay
            with autocast():
                outputs = method.training_step(views, step)
            loss = outputs["loss"]
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at step {step} (epoch {epoch + 1}); "
                                         "lower optim.lr or check the data")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            method.after_backward(step)
            if config.optim.clip_grad:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(method.trained.parameters(), config.optim.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            logged = method.after_optimizer_step(step)
            step += 1
            seen += batch_size * world_size
            window.append({"loss": loss.item(), "lr": lr, **{k: float(v) for k, v in outputs.items() if k != "loss"}, **logged})
            if is_chief and (step % config.train.log_every == 0 or index == steps_per_epoch - 1):
                averaged = {f"train/{k}": float(np.mean([w[k] for w in window])) for k in window[0]}
                logger.log(averaged, step)
                window = []
                rate = seen / (time.time() - started)
                say(f"epoch {epoch + 1}/{epochs} step {index + 1}/{steps_per_epoch} "
                      f"loss {averaged['train/loss']:.4f} lr {lr:.2e} {rate:.0f} img/s")
        seconds = time.time() - started
        metrics = {"epoch": epoch + 1, "step": step, "images_per_second": seen / seconds, "epoch_seconds": seconds}
        last = epoch == epochs - 1
        if evaluator and config.eval.every_epochs and ((epoch + 1) % config.eval.every_epochs == 0 or last):
            metrics.update(evaluator.online(method.backbone))
        if evaluator and last:
            metrics.update(evaluator.final(method.backbone, "final_"))
        if picture_images is not None and ((epoch + 1) % config.eval.picture_every == 0 or last):
            for name, picture in method_pictures(method, picture_images.to(device), normalize).items():
                logger.log_picture(name, picture, epoch + 1)
        if is_chief:
            logger.log(metrics, step)
            logger.flush()
            say(f"epoch {epoch + 1}/{epochs} done in {seconds:.0f}s: {fmt(metrics)}")
        report(method, optimizer, step, epoch + 1, {**baseline_metrics, **metrics}, is_chief, config, info)
    if start_epoch >= epochs and is_chief:
        say(f"nothing to train: the checkpoint already holds {start_epoch} of {epochs} epochs")


def worker_nodes(world_size: int) -> list[str]:
    """The Ray node of every worker, in rank order (so a run shows where its workers ran)."""
    node = ray.get_runtime_context().get_node_id()
    if world_size == 1:
        return [node]
    nodes = [None] * world_size
    torch.distributed.all_gather_object(nodes, node)
    return nodes


def report(method, optimizer, step, epoch, metrics, is_chief, config, info) -> None:
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = None
        if is_chief:
            save_training_state(Path(folder), method, optimizer, step, epoch, metrics)
            save_backbone(Path(folder), method.backbone, build_spec(config, info.channels),
                          {"feature_dim": method.backbone.num_features, "image_size": config.data.image_size,
                           "mean": info.mean, "std": info.std, "method": config.method.name,
                           "epochs": epoch, "steps": step})
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report({k: v for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)},
                         checkpoint=checkpoint)


def say(line: str) -> None:
    # Ray Train patches print() to go through a logger that echoes it twice on the driver.
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
