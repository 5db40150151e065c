"""The supervised protocols' Ray Train worker loop: train an epoch, score the test split, report."""
import math
import time

import numpy as np
import torch
from torch import nn

from pipelines.evaluation.classifier import build_classifier, classifier_meta, param_groups
from pipelines.evaluation.finetune_settings import FinetuneSettings
from pipelines.features.extract import Normalizer, decode_for_eval


class EvalBatch:
    """Ray Data stage for the test split: decoded as evaluation decodes (resize, centre crop)."""

    def __init__(self, channels: int, image_size: int):
        self.channels, self.image_size = channels, image_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images, kept = decode_for_eval(list(batch["image"]), self.channels, self.image_size)
        shape = (0, self.channels, self.image_size, self.image_size)
        return {"view_0": np.stack(images) if images else np.zeros(shape, np.uint8),
                "label": np.asarray(batch["label"])[kept].astype(np.int64)}


def finetune_loop(loop_config: dict) -> None:
    """One Ray Train worker: trains the classifier on its shard, scores its shard of the test split each epoch
    and sums the counts over the workers; the chief logs to MLflow (when a run is given)."""
    import ray.train
    import ray.train.torch

    from pipelines.data.finetune_augment import batch_regulariser
    from pipelines.tracking.mlflow_runs import MetricLogger
    from pipelines.tracking.progress import say
    from pipelines.training.driver import torch_threads
    from pipelines.training.step import autocast_for, configure_device, resolve_precision, scaled_step
    from pipelines.training.worker import started_stream
    from ssl_models.backbones import is_vit
    from ssl_models.schedules import value_at, warmup_cosine_schedule

    settings = FinetuneSettings(**loop_config["settings"])
    meta = classifier_meta(loop_config["meta"], settings)  # also the trained classifier's backbone.json
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(torch_threads(context.get_local_world_size()))
    device = ray.train.torch.get_device()
    configure_device(device)
    batches = started_stream(ray.train.get_dataset_shard("train"), batch_size=settings.batch_size, drop_last=True,
                             local_shuffle_buffer_size=4 * settings.batch_size)
    torch.manual_seed(settings.seed + rank)
    model = build_classifier(meta, loop_config["weights"], loop_config["classes"], settings).to(device)
    groups = param_groups(model, settings, is_vit(meta["timm_name"]))
    lr = settings.lr * settings.batch_size * world_size / 256
    if model.frozen:
        optimizer = torch.optim.SGD(groups, lr=lr, momentum=0.9)
    else:
        optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999))
    model = ray.train.torch.prepare_model(model)
    precision = resolve_precision(settings.precision, device)
    autocast, scaler = autocast_for(precision, device), torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    regularise, criterion = batch_regulariser(settings.mixup, settings.cutmix, settings.random_erasing,
                                              settings.label_smoothing, loop_config["classes"], device)
    spe, epochs = loop_config["steps_per_epoch"], settings.epochs
    schedule = warmup_cosine_schedule(lr, 0.0, spe * epochs, round(settings.warmup_epochs * spe))
    normalize = Normalizer(meta["mean"], meta["std"], device)
    logger = MetricLogger(loop_config["tracking_uri"], loop_config["run_id"]) if rank == 0 and loop_config["run_id"] else None
    board = loop_config.get("progress_board") if rank == 0 else None
    step, curve, epoch_losses = 0, [], []
    for epoch in range(epochs):
        model.train()
        started, losses = time.time(), []
        for _, batch in zip(range(spe), batches):
            for group in optimizer.param_groups:
                group["lr"] = value_at(schedule, step) * group.get("lr_scale", 1.0)
            images, targets = normalize(batch["view_0"]), batch["label"].to(device)
            if regularise:
                images, targets = regularise(images, targets)
            with autocast():
                loss = criterion(model(images).float(), targets)
            scaled_step(loss, optimizer, scaler)
            losses.append(loss.detach())
            step += 1
        seconds = time.time() - started
        train_loss = torch.stack(losses).mean().item()
        if not math.isfinite(train_loss):
            raise FloatingPointError(f"{settings.protocol}: the training loss is {train_loss} in epoch {epoch + 1}; "
                                     "lower the learning rate")
        model.eval()
        counts = torch.zeros(2, dtype=torch.float64, device=device)  # correct, total: summed on the device
        with torch.no_grad():
            for batch in ray.train.get_dataset_shard("test").iter_torch_batches(batch_size=256):
                with autocast():
                    logits = model(normalize(batch["view_0"]))
                labels = batch["label"].to(device)
                counts[0] += (logits.argmax(1) == labels).sum()
                counts[1] += len(labels)
        if world_size > 1:
            torch.distributed.all_reduce(counts)
        correct, total = counts.tolist()
        curve.append(correct / max(total, 1))
        epoch_losses.append(train_loss)
        metrics = {"epoch": epoch + 1, f"{settings.protocol}/train_loss": train_loss,
                   f"{settings.protocol}/top1": curve[-1],
                   "images_per_second": spe * settings.batch_size * world_size / seconds}
        if logger:
            logger.log(metrics, epoch + 1)
            logger.flush()
        if rank == 0:
            say(f"{settings.protocol} epoch {epoch + 1}/{epochs}: loss {train_loss:.4f}, "
                f"top-1 {correct / max(total, 1):.2%} on {int(total)} images", board)
        report({**metrics, "curve": curve, "losses": epoch_losses}, model, meta, last=epoch == epochs - 1,
               chief=rank == 0)


def report(metrics: dict, model: nn.Module, meta: dict, last: bool, chief: bool) -> None:
    """Each epoch's metrics; after the last one the trained classifier as the checkpoint (safetensors, with
    the backbone's description), which also carries the metrics back to the driver."""
    import json
    import tempfile

    import ray.train
    import safetensors.torch

    checkpoint = None
    if last and chief:
        folder = tempfile.mkdtemp(prefix="classifier_")
        module = getattr(model, "module", model)
        safetensors.torch.save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()},
                                    f"{folder}/classifier.safetensors")
        with open(f"{folder}/backbone.json", "w") as out:
            json.dump(meta, out, indent=2)
        checkpoint = ray.train.Checkpoint.from_directory(folder)
    ray.train.report(metrics, checkpoint=checkpoint, delete_local_checkpoint_after_upload=checkpoint is not None)
