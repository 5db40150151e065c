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
import time
from dataclasses import asdict
from typing import Optional

from pipelines.data.store import DatasetInfo, split_files
from pipelines.evaluation.classifier import check_linear_dino
from pipelines.evaluation.finetune_loop import EvalBatch, finetune_loop
from pipelines.evaluation.finetune_settings import (
    AUGMENT_CPUS,
    EVAL_CPUS,
    READ_CPUS,
    WORKER_CPUS,
    FinetuneResult,
    FinetuneSettings,
    required_cpus,
)
from pipelines.features.extract import eval_rows
from pipelines.storage.files import DatasetError


def supervised_datasets(info: DatasetInfo, data: str, image_size: int, settings: FinetuneSettings):
    """(train dataset with every epoch in one stream, test dataset, labelled train images used); RandAugment
    fills with the dataset's mean."""
    import ray.data

    from pipelines.data.augment_batch import AugmentBatch
    from pipelines.data.row_groups import ShuffledRowGroups
    from pipelines.data.stream import poll_gently

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

    from pipelines.data.store import read_info
    from pipelines.evaluation.embeddings import check_compatible, weights_meta
    from pipelines.storage.export import WEIGHTS_FILE
    from pipelines.storage.files import read_bytes
    from pipelines.training import driver as train_driver

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
