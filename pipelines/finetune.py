"""Supervised transfer on Ray Train: fine-tuning (MAE's protocol), the same network from random init at the
same budget (what pretraining is worth), and the linear probe with augmentation (the "full path").

Every protocol trains a backbone plus a linear head on the labelled train split (random resized crop and
flip, decoded and augmented by Ray Data actors) and scores top-1 on the test split (or the held-out 10 %
of train) after each epoch, every worker on its shard of it:

- `finetune`: the whole network, AdamW, layer-wise lr decay for ViTs, linear warm-up then cosine, label
  smoothing 0.1, weight decay 0.05, head initialised at std 2e-5 (MAE's fine-tuning recipe), and as settings
  MAE's RandAugment, random erasing, mixup and cutmix (`finetune_augment.MAE_AUGMENT`; off by default);
- `scratch`: the same, from the same architecture's random initialisation;
- `linear_aug`: the backbone frozen (its BatchNorm statistics too), a parameter-free BatchNorm and a linear
  layer trained with SGD (momentum 0.9, no weight decay), cosine schedule (MAE's linear probing);
- `linear_dino`: DINO's linear evaluation of a ViT (eval_linear.py): frozen, the class tokens of its last
  `last_blocks` blocks under the final norm concatenated (4 for ViT-S), with `avg_patch_tokens` the last
  block's patch tokens averaged beside them (ViT-B: 1 block and the average), a plain linear layer (no
  BatchNorm) from N(0, 0.01), SGD lr 0.001 x batch / 256, momentum 0.9, no weight decay.
"""
import math
import time
from dataclasses import asdict, dataclass
from functools import partial
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from pipelines.dataset_store import DatasetError, DatasetInfo, split_files
from pipelines.features import Normalizer, decode_for_eval, eval_rows
from ssl_models.online_probe import linear_classifier

SUPERVISED = ("finetune", "scratch", "linear_aug", "linear_dino")
FROZEN = ("linear_aug", "linear_dino")  # the backbone as pretrained, a linear classifier on its features
# logical CPUs: a Train worker and an augmentation actor half a CPU each, the test decoding actor a quarter and
# each read an eighth, so that two workers fit on two cores (threads are set explicitly; these numbers only decide what Ray schedules side by side)
WORKER_CPUS, AUGMENT_CPUS, EVAL_CPUS, READ_CPUS = 0.5, 0.5, 0.25, 0.125


def required_cpus(settings: "FinetuneSettings") -> float:
    return settings.num_workers * WORKER_CPUS + settings.augment_actors * AUGMENT_CPUS + EVAL_CPUS + 2 * READ_CPUS


FINETUNE_DROP_PATH = 0.1  # MAE's fine-tuning recipe for ViTs (stochastic depth; BEiT's too)


@dataclass
class FinetuneSettings:
    protocol: str = "finetune"
    epochs: int = 10
    batch_size: int = 128  # per worker
    lr: Optional[float] = None  # per 256 images; None: 1e-3 (AdamW) for fine-tuning, 0.1 (SGD) for linear_aug,
    # 0.001 (SGD) for linear_dino
    layer_decay: float = 0.75  # ViTs only
    warmup_epochs: float = 1.0
    label_smoothing: Optional[float] = None  # None: 0.1 for fine-tuning, 0 for linear_aug
    weight_decay: Optional[float] = None  # None: 0.05 for fine-tuning, 0 for linear_aug
    crop_scale_min: float = 0.2  # MAE uses 0.08 on ImageNet; 28 px images keep more of the object
    drop_path: Optional[float] = None  # ViTs trained whole; None: 0.1 (MAE's fine-tuning), 0 for linear_aug
    global_pool: Optional[str] = None  # ViTs: "token" or "avg"; None: avg after MAE pretraining, else token
    mixup: float = 0.0  # finetune and scratch: mixup's alpha (MAE: 0.8); 0: off
    cutmix: float = 0.0  # cutmix's alpha (MAE: 1.0); with mixup, one of them per batch
    rand_augment: Optional[str] = None  # timm's RandAugment setting (MAE: rand-m9-mstd0.5-inc1)
    random_erasing: float = 0.0  # the chance to erase a random box of each image with noise (MAE: 0.25)
    last_blocks: int = 4  # linear_dino: the class tokens of this many last blocks
    avg_patch_tokens: bool = False  # linear_dino: and the last block's patch tokens averaged
    num_workers: int = 1
    augment_actors: int = 1
    train_limit: Optional[int] = None  # a stratified random subset of the labelled train rows
    test_limit: Optional[int] = None
    precision: str = "auto"
    seed: int = 0

    def __post_init__(self):
        if self.protocol not in SUPERVISED:
            raise ValueError(f"unknown supervised protocol '{self.protocol}'; choose from {', '.join(SUPERVISED)}")
        linear = self.protocol in FROZEN
        self.lr = self.lr if self.lr is not None else {"linear_aug": 0.1, "linear_dino": 0.001}.get(self.protocol, 1e-3)
        self.label_smoothing = self.label_smoothing if self.label_smoothing is not None else (0.0 if linear else 0.1)
        self.weight_decay = self.weight_decay if self.weight_decay is not None else (0.0 if linear else 0.05)
        self.drop_path = self.drop_path if self.drop_path is not None else (0.0 if linear else FINETUNE_DROP_PATH)
        if self.global_pool not in (None, "token", "avg"):
            raise ValueError(f"global_pool '{self.global_pool}': choose token (the class token) or avg (the patch tokens)")
        if linear and (self.drop_path or self.global_pool not in (None, "token")):
            raise ValueError(f"{self.protocol} keeps the backbone as pretrained: no drop_path or global_pool")
        self.check_regularisers(linear)
        if self.last_blocks < 1:
            raise ValueError(f"last_blocks {self.last_blocks}: at least the last block")

    def check_regularisers(self, linear: bool) -> None:
        on = [name for name in ("mixup", "cutmix", "rand_augment", "random_erasing") if getattr(self, name)]
        if linear and on:
            raise ValueError(f"{self.protocol} trains a linear head on the crop and flip alone: no {', '.join(on)}")
        for name in ("mixup", "cutmix"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} {getattr(self, name)}: an alpha of 0 (off) or more")
        if not 0 <= self.random_erasing <= 1:
            raise ValueError(f"random_erasing {self.random_erasing}: a chance between 0 and 1")
        if (self.mixup or self.cutmix) and self.batch_size % 2:
            raise ValueError(f"batch_size {self.batch_size}: mixup and cutmix pair each image with another, "
                             "so the batch size per worker must be even")
        if self.rand_augment:
            from pipelines.finetune_augment import rand_augment

            rand_augment(self.rand_augment, 32, (0,))


@dataclass
class FinetuneResult:
    top1: float
    curve: list[float]  # test top-1 after each epoch
    losses: list[float]  # mean training loss of each epoch
    images_per_second: float
    checkpoint: str  # the trained classifier (classifier.safetensors, backbone.json)


class Classifier(nn.Module):
    """Backbone and linear head; a frozen backbone stays in eval mode and out of autograd, and the head reads
    `features(images)` (default: the backbone's output) through a parameter-free BatchNorm, or as they are with
    `plain_head`."""

    def __init__(self, backbone: nn.Module, width: int, classes: int, frozen: bool,
                 features: Optional[Callable[[torch.Tensor], torch.Tensor]] = None, plain_head: bool = False):
        super().__init__()
        self.backbone, self.frozen, self.features = backbone, frozen, features  # a function, not a submodule
        if frozen:
            backbone.requires_grad_(False)
        if frozen and not plain_head:
            self.head = linear_classifier(width, classes)
        else:
            self.head = nn.Linear(width, classes)
            init = partial(nn.init.normal_, std=0.01) if frozen else partial(nn.init.trunc_normal_, std=2e-5)
            init(self.head.weight)  # DINO's linear classifier; MAE's fine-tuning head
            nn.init.zeros_(self.head.bias)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.frozen:
            with torch.no_grad():
                features = (self.features or self.backbone)(images).float()
            return self.head(features)
        return self.head(self.backbone(images))


def dino_tokens(vit: nn.Module, images: torch.Tensor, last_blocks: int, avg_patch_tokens: bool) -> torch.Tensor:
    """DINO's linear-evaluation features of a timm ViT: the class token of each of its last `last_blocks` blocks
    under the final norm, concatenated, and with `avg_patch_tokens` the last block's patch tokens averaged."""
    outputs = vit.forward_intermediates(images, indices=last_blocks, norm=True, output_fmt="NLC",
                                        intermediates_only=True, return_prefix_tokens=True)
    features = [prefix[:, 0] for _, prefix in outputs]
    if avg_patch_tokens:
        features.append(outputs[-1][0].mean(dim=1))
    return torch.cat(features, dim=-1)


def param_groups(model: Classifier, settings: FinetuneSettings, vit: bool) -> list[dict]:
    """`build.param_groups` as MAE's fine-tuning sets them: on ViTs layer l of n at lr x decay^(n + 1 - l) (the
    head and the final norm at the full rate, the patch embedding slowest), no weight decay on biases, norms and
    the backbone's tokens (its `no_weight_decay`)."""
    from pipelines.build import param_groups as groups

    skip = getattr(model.backbone, "no_weight_decay", lambda: ())()
    return groups(model, settings.weight_decay, settings.layer_decay if vit else 1.0,
                  no_decay_names=[f"backbone.{name}" for name in skip])


def classifier_meta(meta: dict, settings: FinetuneSettings) -> dict:
    """The backbone's description as the protocol trains it: a ViT trained whole gets stochastic depth
    (`settings.drop_path`) and, after MAE pretraining unless `settings.global_pool` says otherwise, the average of
    its patch tokens under a fresh norm as the head's input (MAE's fine-tuning) instead of the class token, which
    MAE never trains. linear_aug and other backbones: the description as pretrained."""
    from ssl_models.backbones import is_vit

    if settings.protocol in FROZEN or not is_vit(meta["timm_name"]):
        return meta
    kwargs = {key: value for key, value in meta.get("timm_kwargs", {}).items() if key not in ("drop_path_rate", "global_pool")}
    if settings.drop_path:
        kwargs["drop_path_rate"] = settings.drop_path
    if (settings.global_pool or ("avg" if meta.get("method") == "mae" else "token")) == "avg":
        kwargs["global_pool"] = "avg"  # timm then norms the pooled tokens (fc_norm) and drops the final norm
    return {**meta, "timm_kwargs": kwargs}


def check_linear_dino(meta: dict) -> None:
    from ssl_models.backbones import is_vit

    if not is_vit(meta["timm_name"]):
        raise ValueError(f"linear_dino reads a ViT's class tokens, which {meta['timm_name']} has not: use linear_aug")


def build_classifier(meta: dict, weights: Optional[bytes], classes: int, settings: FinetuneSettings) -> Classifier:
    """The backbone `meta` describes (see `classifier_meta`), with `weights` (None: random init, seeded) and a new
    head. A ViT pooled by averaging starts its fc_norm fresh and leaves the pretrained final norm out, as MAE's
    reference does; any other weight that does not fit is an error."""
    import safetensors.torch

    from ssl_models import BackboneSpec, create_backbone

    if weights is None:
        torch.manual_seed(settings.seed)
    backbone, _ = create_backbone(BackboneSpec.from_meta(meta))
    if weights is not None:
        state = safetensors.torch.load(weights)
        if isinstance(getattr(backbone, "norm", None), nn.Identity):
            state = {key: value for key, value in state.items() if not key.startswith("norm.")}
        missing, unexpected = backbone.load_state_dict(state, strict=False)
        missing = [key for key in missing if not key.startswith("fc_norm.")]
        if missing or unexpected:
            raise ValueError(f"the weights do not fit {meta['timm_name']}: missing {missing}, unexpected {unexpected}")
    if settings.protocol != "linear_dino":
        return Classifier(backbone, meta["feature_dim"], classes, frozen=settings.protocol in FROZEN)
    check_linear_dino(meta)
    if settings.last_blocks > len(backbone.blocks):
        raise ValueError(f"last_blocks {settings.last_blocks}: {meta['timm_name']} has {len(backbone.blocks)} blocks")
    width = meta["feature_dim"] * (settings.last_blocks + settings.avg_patch_tokens)
    return Classifier(backbone, width, classes, frozen=True, plain_head=True,
                      features=partial(dino_tokens, backbone, last_blocks=settings.last_blocks,
                                       avg_patch_tokens=settings.avg_patch_tokens))


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

    from pipelines.finetune_augment import batch_regulariser
    from pipelines.progress import say
    from pipelines.step import autocast_for, configure_device, resolve_precision, scaled_step
    from pipelines.train_worker import started_stream
    from pipelines.tracking import MetricLogger
    from pipelines.train_driver import torch_threads
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


def supervised_datasets(info: DatasetInfo, data: str, image_size: int, settings: FinetuneSettings):
    """(train dataset with every epoch in one stream, test dataset, labelled train images used); RandAugment
    fills with the dataset's mean."""
    import ray.data

    from pipelines.augment_batch import AugmentBatch
    from pipelines.data import poll_gently
    from pipelines.row_groups import ShuffledRowGroups

    plan = eval_rows(info, data, settings.train_limit, settings.test_limit, settings.seed)
    if plan is None:
        raise DatasetError(f"'{data}' has no labels: {settings.protocol} trains with labels")
    (train_split, train_rows), (test_split, test_rows) = plan
    train = ray.data.read_datasource(ShuffledRowGroups(split_files(data, train_split), ["image", "label"],
                                                       settings.seed, train_rows, settings.epochs), num_cpus=READ_CPUS)
    train = poll_gently(train).map_batches(
        AugmentBatch, fn_constructor_kwargs={"method": {"name": "finetune", "rand_augment": settings.rand_augment,
                                                        "fill": [round(255 * m) for m in info.mean]}, "image_size": image_size,
                                             "channels": info.channels, "crop_scale_min": settings.crop_scale_min},
        batch_size=min(settings.batch_size, 256), batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=settings.augment_actors), num_cpus=AUGMENT_CPUS)
    test = ray.data.read_datasource(ShuffledRowGroups(split_files(data, test_split), ["image", "label"],
                                                      settings.seed, test_rows), num_cpus=READ_CPUS)
    test = test.map_batches(EvalBatch, fn_constructor_kwargs={"channels": info.channels, "image_size": image_size},
                            batch_size=256, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=1), num_cpus=EVAL_CPUS)
    return train, test, len(train_rows)


def run_supervised(weights: str, data: str, settings: FinetuneSettings, storage: str,
                   run_id: Optional[str] = None, uri: Optional[str] = None, progress: bool = True) -> FinetuneResult:
    """Trains and scores one supervised protocol; `weights` as pretraining exports them (for `scratch`
    only their description is used). With `run_id` the chief logs the curves into that MLflow run."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig

    from pipelines import train_driver
    from pipelines.dataset_store import read_info
    from pipelines.embed import check_compatible, weights_meta
    from pipelines.export import WEIGHTS_FILE
    from pipelines.storage import read_bytes

    train_driver.check_cpus(required_cpus(settings), ray.cluster_resources().get("CPU", 0),
                            f"{settings.protocol} ({WORKER_CPUS:g} per worker, {AUGMENT_CPUS:g} per augmentation "
                            f"actor, {EVAL_CPUS + 2 * READ_CPUS:g} for reading and test decoding)", "use fewer --workers")
    info = read_info(data)
    meta = weights_meta(weights, info)
    check_compatible(meta, info, data)
    if settings.protocol == "linear_dino":
        check_linear_dino(meta)
    train, test, images = supervised_datasets(info, data, meta["image_size"], settings)
    spe = images // (settings.batch_size * settings.num_workers)
    if spe < 1:
        raise ValueError(f"{images} labelled training images cannot fill one batch of {settings.batch_size} per "
                         f"worker on {settings.num_workers} workers: lower the batch size")
    result = train_driver.fit(
        finetune_loop,
        {"settings": asdict(settings), "meta": meta, "classes": len(info.classes),
         "weights": None if settings.protocol == "scratch" else read_bytes(f"{weights}/{WEIGHTS_FILE}"),
         "steps_per_epoch": spe, "run_id": run_id, "tracking_uri": uri},
        progress,
        scaling_config=ScalingConfig(num_workers=settings.num_workers, resources_per_worker={"CPU": WORKER_CPUS},
                                     use_gpu=ray.cluster_resources().get("GPU", 0) > 0),
        run_config=RunConfig(name=f"{settings.protocol}-{time.strftime('%Y%m%d-%H%M%S')}", storage_path=storage,
                             checkpoint_config=CheckpointConfig(num_to_keep=1),
                             failure_config=FailureConfig(max_failures=0)),
        datasets={"train": train, "test": test},
    )
    if result.error:
        raise result.error
    metrics = result.metrics
    return FinetuneResult(metrics[f"{settings.protocol}/top1"], list(metrics["curve"]), list(metrics["losses"]),
                          metrics["images_per_second"], result.checkpoint.path)
