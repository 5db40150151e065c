"""The Ray Data pipeline: Parquet row groups in a new random order each epoch -> decode + augment in an
actor pool -> one column per view."""
from typing import Optional

import numpy as np
import ray.data

from pipelines.augment import AugmentBatch
from pipelines.config import Config
from pipelines.dataset_store import DatasetInfo, split_files, split_labels
from pipelines.row_groups import ShuffledRowGroups
from pipelines.sampling import stratified_sample


def limited_rows(config: Config, info: DatasetInfo) -> Optional[np.ndarray]:
    """`data.limit` as a seeded random subset of the train split, stratified by class; None: every row."""
    limit = config.data.limit
    if not limit or limit >= info.splits.get("train", 0):
        return None
    return stratified_sample(split_labels(config.data.path, "train"), limit, config.train.seed)


def train_rows(config: Config, info: DatasetInfo, columns=("image",), epochs: int = 1) -> ray.data.Dataset:
    """The training rows (after `data.limit`) `epochs` times over, each time in a new seeded random
    row-group order, in one stream."""
    source = ShuffledRowGroups(split_files(config.data.path, "train"), list(columns), config.train.seed,
                               limited_rows(config, info), epochs)
    return ray.data.read_datasource(source, num_cpus=config.data.read_cpus)


def training_dataset(config: Config, info: DatasetInfo) -> ray.data.Dataset:
    """Every epoch of the run in one stream of augmented views (the loop cuts it into epochs)."""
    data = config.data
    pool = ray.data.ActorPoolStrategy(min_size=data.augment_actors,
                                      max_size=max(data.augment_actors, data.augment_actors_max or 0))
    columns = ("image", "label") if info.labelled else ("image",)
    return train_rows(config, info, columns, config.train.epochs).map_batches(
        AugmentBatch,
        fn_constructor_kwargs={"method": config.method.model_dump(mode="json"), "image_size": data.image_size,
                               "channels": info.channels, "crop_scale_min": config.crop_scale_min(),
                               "removed": list(data.remove_augmentations)},
        batch_size=min(data.batch_size, 256),
        batch_format="numpy",
        compute=pool,
        num_cpus=data.augment_cpus,
    )


def train_size(config: Config, info: DatasetInfo) -> int:
    return min(info.splits.get("train", 0), config.data.limit or float("inf"))
