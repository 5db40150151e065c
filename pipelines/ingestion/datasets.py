"""Fashion-MNIST's IDX files and scikit-learn's digits as Parquet shards (the folder ingest is ingestion.folder)."""
import gzip
import json
import struct
from pathlib import Path
from typing import Optional

import numpy as np

from pipelines.data.decode import channel_stats, encode_png
from pipelines.data.sampling import stratified_holdout
from pipelines.data.store import DatasetInfo, ShardWriter, prepare_dataset_folder, write_info
from pipelines.storage.files import write_text

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]


STATS_SAMPLE = 2000


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped or not) as a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as stream:
        zero, dtype_code, ndim = struct.unpack(">HBB", stream.read(4))
        if zero != 0 or dtype_code != 0x08:
            raise ValueError(f"{path} is not an unsigned-byte IDX file")
        shape = struct.unpack(f">{ndim}I", stream.read(4 * ndim))
        return np.frombuffer(stream.read(), dtype=np.uint8).reshape(shape)


def ingest_arrays(name: str, splits: dict[str, tuple[np.ndarray, np.ndarray, str]], classes: list[str], out: str,
                  rows_per_shard: int = 10_000, seed: int = 0) -> DatasetInfo:
    """Grey images held as arrays, (N, H, W) uint8 with labels per split, written as PNG rows in a seeded random order
    (the third item of each split names where the images came from)."""
    counts = {}
    prepare_dataset_folder(out)
    for split, (images, labels, source) in splits.items():
        writer = ShardWriter(out, split, rows_per_shard)
        for index in np.random.default_rng(seed).permutation(len(images)):
            writer.add(encode_png(images[index]), int(labels[index]), f"{source}#{index}")
        writer.flush()
        counts[split] = writer.count
        print(f"  {split}: {writer.count} images in {writer.shards} shards")
    mean, std = channel_stats([image[:, :, None] for image in splits["train"][0][:STATS_SAMPLE]])
    info = DatasetInfo(name, 1, counts, classes, mean, std, min_side=int(min(splits["train"][0].shape[1:3])))
    write_info(out, info)
    write_text(out, "ingest_report.json", json.dumps({"skipped": []}, indent=2))
    return info


def ingest_fashion_mnist(source: Path, out: str, limit: Optional[int] = None, rows_per_shard: int = 10_000,
                         seed: int = 0) -> DatasetInfo:
    files = {"train": "train", "test": "t10k"}
    splits = {}
    for split, prefix in files.items():
        images_path = next(iter(sorted(source.glob(f"{prefix}-images-idx3-ubyte*"))), None)
        labels_path = next(iter(sorted(source.glob(f"{prefix}-labels-idx1-ubyte*"))), None)
        if images_path is None or labels_path is None:
            raise FileNotFoundError(
                f"Fashion-MNIST {prefix}-*-ubyte(.gz) files not found in {source}. On Debian: "
                "`apt-get install dataset-fashion-mnist`; elsewhere download the four IDX files "
                "and pass their folder with --source."
            )
        images, labels = read_idx(images_path), read_idx(labels_path)
        splits[split] = (images[:limit], labels[:limit], images_path.name)
    return ingest_arrays("fashion-mnist", splits, FASHION_MNIST_CLASSES, out, rows_per_shard, seed)


def ingest_digits(out: str, test_fraction: float = 0.2, rows_per_shard: int = 10_000, seed: int = 0) -> DatasetInfo:
    """scikit-learn's handwritten digits (1,797 images of 8x8 px, 17 grey levels, bundled with the library, so
    available offline): another labelled dataset to transfer to. A stratified, seeded `test_fraction` is the test
    split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * 255 / 16).astype(np.uint8)
    train, test = stratified_holdout(digits.target, test_fraction, seed)
    splits = {"train": (images[train], digits.target[train], "sklearn-digits"),
              "test": (images[test], digits.target[test], "sklearn-digits")}
    return ingest_arrays("digits", splits, [str(label) for label in range(10)], out, rows_per_shard, seed)
