"""The Ray Data pipeline: Parquet shards -> decode + augment in an actor pool -> one column per view."""
import ray.data

from pipelines.augment import AugmentBatch
from pipelines.config import Config
from pipelines.dataset_store import DatasetInfo, split_files


def training_dataset(config: Config, info: DatasetInfo) -> ray.data.Dataset:
    data = config.data
    dataset = ray.data.read_parquet(split_files(data.path, "train"), num_cpus=data.read_cpus)
    dataset = dataset.select_columns(["image"])
    if data.limit:
        dataset = dataset.limit(data.limit)
    return dataset.map_batches(
        AugmentBatch,
        fn_constructor_kwargs={"method": config.method.model_dump(mode="json"), "image_size": data.image_size,
                               "channels": info.channels, "crop_scale_min": data.crop_scale_min},
        batch_size=min(data.batch_size, 256),
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=data.augment_actors),
        num_cpus=data.augment_cpus,
    )


def train_size(config: Config, info: DatasetInfo) -> int:
    return min(info.splits.get("train", 0), config.data.limit or float("inf"))
