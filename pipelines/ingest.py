"""Turn Fashion-MNIST IDX files, scikit-learn's digits or a folder of images into Parquet shards.

    python -m pipelines.ingest fashion-mnist --out data/fashion_mnist
    python -m pipelines.ingest digits --out data/digits
    python -m pipelines.ingest folder --source ~/pictures --out data/pictures

    python -m pipelines.ingest folder --source s3://bucket/pictures --out s3://bucket/data/pictures

A folder may hold class sub-folders (labels are then taken from their names) and may hold
`train/` and `test/` (or `val/`) sub-folders as splits. Unreadable files are skipped,
counted and listed in `ingest_report.json`; one bad file never stops the ingest. Each split is
written in a random order drawn with `--seed`, so no shard or row group holds one class only.
The folder ingest is a streaming Ray Data job (pipelines/folder_ingest.py): it joins RAY_ADDRESS's
cluster (or `ray job submit`'s) when there is one, else starts Ray on this machine.
"""
import argparse
import gzip
import json
import struct
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

from pipelines.dataset_store import DatasetInfo, ShardWriter, write_info
from pipelines.folder_ingest import ingest_folder
from pipelines.images import channel_stats, encode_png
from pipelines.sampling import stratified_holdout
from pipelines.storage import write_text

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


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.ingest", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="kind", required=True)
    fmnist = sub.add_parser("fashion-mnist", help="Fashion-MNIST IDX files")
    fmnist.add_argument("--source", type=Path, default=FASHION_MNIST_DIR)
    fmnist.add_argument("--limit", type=int, default=None, help="first N images of each split")
    digits = sub.add_parser("digits", help="scikit-learn's 8x8 handwritten digits (bundled, offline), for transfer")
    digits.add_argument("--test-fraction", type=float, default=0.2)
    folder = sub.add_parser("folder", help="a folder of images")
    folder.add_argument("--source", required=True, help="a folder, or an object-storage prefix (s3://bucket/pictures)")
    folder.add_argument("--split", default="train", help="split name when the folder has no train/test sub-folders")
    folder.add_argument("--min-size", type=int, default=8, help="skip images whose shorter side is below this (px)")
    for each in (fmnist, digits, folder):
        each.add_argument("--out", required=True, help="output folder or URI")
        each.add_argument("--rows-per-shard", type=int, default=10_000)
        each.add_argument("--seed", type=int, default=0, help="seed of the random order rows are written in")
    folder.add_argument("--verbose", action="store_true", help="show Ray's and its workers' output here")
    args = parser.parse_args(argv)
    started = time.time()
    try:
        if args.kind == "fashion-mnist":
            info = ingest_fashion_mnist(args.source, args.out, args.limit, args.rows_per_shard, args.seed)
        elif args.kind == "digits":
            info = ingest_digits(args.out, args.test_fraction, args.rows_per_shard, args.seed)
        else:
            info, skipped = ingest_folder(args.source, args.out, args.split, args.rows_per_shard,
                                          min_size=args.min_size, seed=args.seed, verbose=args.verbose)
            for item in skipped[:20]:
                print(f"  skipped {item['file']}: {item['reason']}")
            if len(skipped) > 20:
                print(f"  ... and {len(skipped) - 20} more")
    except (FileNotFoundError, ValueError) as error:
        print(f"ingest failed: {error}", file=sys.stderr)
        return 2
    print(f"ingested {sum(info.splits.values())} images ({info.skipped} skipped) into {args.out} "
          f"in {time.time() - started:.1f}s; report: {args.out}/ingest_report.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
