"""The Ray Data pipeline: Parquet row groups in a new random order each epoch, read, decoded and augmented
in an actor pool -> one column per view."""
import math
import re
import time
from typing import Callable, Optional

import numpy as np
import ray.data

from pipelines.cluster.ray_compat import ExecutionCallback, with_execution_callback, without_actor_restarts
from pipelines.config.schema import Config
from pipelines.data.augment_batch import AugmentBatch, AugmentTables
from pipelines.data.row_groups import ShuffledRowGroups
from pipelines.data.sampling import stratified_sample
from pipelines.data.store import ROWS_PER_GROUP, DatasetInfo, split_files, split_labels

AHEAD_BATCHES = 8
AHEAD_FLOOR = 64 * 2**20
LISTING_CPUS = 1.0  # Ray Data's file listing (not configurable in Ray 2.60)
MAX_READ_TASKS = 20_000  # a row group each up to here (ImageNet: 5,000 an epoch); the tasks are made on the driver


class PollGently(ExecutionCallback):
    """Ray Data's scheduling loop blocks on its running tasks; with none running (augmentation ahead of training,
    held back) it spins, a whole core at 100 % for as long as training lasts (Ray 2.60). A pause in such
    back-to-back steps gives that core to training (BYOL here: 49 -> 200+ images/s with 20 ms). 50 ms halves what
    the loop still costs while augmentation waits ahead (0.08 -> 0.05 of a core), which training's two threads feel
    more than its share: the first epoch of `benchmarks/first_epoch.py` 74 -> 68 s; training waits on no batch
    (BENCHMARKS.md, "The first epoch")."""

    PAUSE = 0.05

    def __init__(self):
        self.last = 0.0

    def on_execution_step(self, executor) -> None:
        if time.perf_counter() - self.last < 0.005:
            time.sleep(self.PAUSE)
        self.last = time.perf_counter()


def poll_gently(dataset: ray.data.Dataset) -> ray.data.Dataset:
    """`dataset` executed with `PollGently` (a stream of many epochs that training holds back)."""
    return with_execution_callback(dataset, PollGently)


def limited_rows(config: Config, info: DatasetInfo) -> Optional[np.ndarray]:
    """`data.limit` as a seeded random subset of the train split, stratified by class; None: every row."""
    limit = config.data.limit
    if not limit or limit >= info.splits.get("train", 0):
        return None
    return stratified_sample(split_labels(config.data.path, "train"), limit, config.train.seed)


def train_rows(config: Config, info: DatasetInfo, columns=("image",), epochs: int = 1,
               transform: Optional[Callable] = None, read: Callable[..., ray.data.Dataset] = ray.data.read_datasource,
               **read_options) -> ray.data.Dataset:
    """The training rows (after `data.limit`) `epochs` times over, each time in a new seeded random
    row-group order, in one stream: a read task per row group of ROWS_PER_GROUP (consecutive smaller ones,
    as `data.limit` leaves, share one; past MAX_READ_TASKS, so do full ones); `transform` as ShuffledRowGroups',
    `read` with `read_options` reads them."""
    source = ShuffledRowGroups(split_files(config.data.path, "train"), list(columns), config.train.seed,
                               limited_rows(config, info), epochs, transform=transform)
    rows = epochs * sum(unit.rows for unit in source.units)
    tasks = max(1, min(math.ceil(rows / ROWS_PER_GROUP), len(source.units) * epochs, MAX_READ_TASKS))
    return read(source, override_num_blocks=tasks, **read_options)


def training_dataset(config: Config, info: DatasetInfo, restarts: bool = True) -> ray.data.Dataset:
    """Every epoch of the run in one stream of augmented views (the loop cuts it into epochs). Without `restarts` an
    augmentation actor that dies fails the stream (a run that retries nothing) instead of being started again.

    The read tasks run in the augmentation actors and augment what they read (AugmentTables): no read task in a
    worker process of its own, and the image bytes never pass through the object store (BENCHMARKS.md, "Photos")."""
    data = config.data
    pool = ray.data.ActorPoolStrategy(min_size=data.augment_actors, max_size=augment_pool_max(config))
    columns = ("image", "label") if info.labelled else ("image",)
    read = ray.data.read_datasource if restarts else without_actor_restarts(ray.data.read_datasource)
    augment = AugmentTables(augment_arguments(config, info))
    return poll_gently(train_rows(config, info, columns, config.train.epochs, augment, read=read, compute=pool,
                                  num_cpus=data.augment_cpus))


def augment_pool_max(config: Config, cluster_cpus: Optional[float] = None) -> int:
    """The most augmentation actors the pool grows to. `auto`: every CPU of the cluster (`cluster_cpus`, else Ray's
    count) that the Train workers and the file listing do not reserve, one actor per data.augment_cpus."""
    data = config.data
    if data.augment_actors_max != "auto":
        return max(data.augment_actors, data.augment_actors_max or 0)
    cpus = ray.cluster_resources().get("CPU", 0) if cluster_cpus is None else cluster_cpus
    spare = cpus - config.train.num_workers * config.train.cpus_per_worker - LISTING_CPUS
    return max(data.augment_actors, int(spare // data.augment_cpus))


def augment_arguments(config: Config, info: DatasetInfo) -> dict:
    data = config.data
    return {"method": config.method.model_dump(mode="json"), "image_size": data.image_size, "channels": info.channels,
            "crop_scale_min": config.crop_scale_min(), "removed": list(data.remove_augmentations),
            "mask_grid": mask_grid(config)}


def mask_grid(config: Config) -> Optional[tuple[int, int]]:
    """DINOv2's patch grid of a global crop (its masks are drawn in the augmentation actors); None for the other
    methods, and for a ViT whose timm name does not say its patch size (the step draws its masks)."""
    named = re.search(r"patch(\d+)", config.model.backbone)
    if config.method.name != "dinov2" or not (config.model.patch_size or named):
        return None
    side = config.data.image_size // (config.model.patch_size or int(named.group(1)))
    return side, side


def ahead_bytes(config: Config, info: DatasetInfo) -> int:
    """How much augmented data may wait for training (`data.ahead_mb`)."""
    if config.data.ahead_mb is not None:
        return int(config.data.ahead_mb * 2**20)
    views = sum(math.prod(shape) for shape in AugmentBatch(**augment_arguments(config, info)).shapes)
    return max(AHEAD_FLOOR, AHEAD_BATCHES * views * config.data.batch_size * config.train.num_workers)


def ingest_options(config: Config, info: DatasetInfo):
    """Train's Ray Data options for the training stream (its default ones, built here without the deprecated
    `exclude_resources` that `DataConfig.default_ingest_options` passes, which warned on every run's console),
    with its object-store memory bounded."""
    from ray.data import ExecutionOptions
    from ray.data.context import DataContext

    current = DataContext.get_current().execution_options
    return ExecutionOptions(
        resource_limits=current.resource_limits.copy(object_store_memory=ahead_bytes(config, info)),
        preserve_order=current.preserve_order, verbose_progress=current.verbose_progress)


def ingest_config(config: Config, info: DatasetInfo):
    from ray.train import DataConfig

    return DataConfig(execution_options={"train": ingest_options(config, info)})


def train_size(config: Config, info: DatasetInfo) -> int:
    return min(info.splits.get("train", 0), config.data.limit or float("inf"))
