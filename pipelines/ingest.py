"""Turn Fashion-MNIST IDX files or a folder of images into Parquet shards.

    python -m pipelines.ingest fashion-mnist --out data/fashion_mnist
    python -m pipelines.ingest folder --source ~/pictures --out data/pictures

A folder may hold class sub-folders (labels are then taken from their names) and may hold
`train/` and `test/` (or `val/`) sub-folders as splits. Unreadable files are skipped,
counted and listed in `ingest_report.json`; one bad file never stops the ingest. Each split is
written in a random order drawn with `--seed`, so no shard or row group holds one class only.
"""
import argparse
import errno
import gzip
import os
import json
import random
import struct
import sys
import time
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from pipelines.dataset_store import DatasetInfo, ShardWriter, write_info
from pipelines.storage import write_text
from pipelines.images import IMAGE_SUFFIXES, decode_image, encode_png, is_grayscale, verified_pil_image

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
SPLIT_NAMES = {"train": "train", "test": "test", "val": "test", "valid": "test", "validation": "test"}
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


def channel_stats(images: list[np.ndarray]) -> tuple[list[float], list[float]]:
    pixels = np.concatenate([image.reshape(-1, image.shape[-1]) for image in images]).astype(np.float64) / 255
    return pixels.mean(0).round(4).tolist(), pixels.std(0).round(4).tolist()


def ingest_fashion_mnist(source: Path, out: str, limit: Optional[int] = None, rows_per_shard: int = 10_000,
                         seed: int = 0) -> DatasetInfo:
    files = {"train": "train", "test": "t10k"}
    splits, sample = {}, []
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
        count = len(images) if limit is None else min(limit, len(images))
        writer = ShardWriter(out, split, rows_per_shard)
        for index in np.random.default_rng(seed).permutation(count):
            writer.add(encode_png(images[index]), int(labels[index]), f"{images_path.name}#{index}")
        writer.flush()
        splits[split] = writer.count
        if split == "train":
            sample = [image[:, :, None] for image in images[:STATS_SAMPLE]]
        print(f"  {split}: {writer.count} images in {writer.shards} shards")
    mean, std = channel_stats(sample)
    info = DatasetInfo("fashion-mnist", 1, splits, FASHION_MNIST_CLASSES, mean, std, min_side=28)
    write_info(out, info)
    write_text(out, "ingest_report.json", json.dumps({"skipped": []}, indent=2))
    return info


def folder_layout(source: Path, default_split: str) -> dict[str, Path]:
    """{split: folder}: `train/` and `test/`|`val/` sub-folders when present, else the whole folder."""
    sub = {path.name.lower(): path for path in source.iterdir() if path.is_dir()}
    found = {SPLIT_NAMES[name]: path for name, path in sub.items() if name in SPLIT_NAMES}
    if "train" in found:
        return found
    return {default_split: source}


def printable(path) -> str:
    """A path as text, also when its name is not valid UTF-8 (those bytes shown as \\xNN)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def link_problem(path: Path) -> Optional[str]:
    try:
        path.stat()
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "symbolic link loop"
        return "dangling symbolic link" if path.is_symlink() else f"cannot be read ({error.strerror})"
    return None


def walk_files(folder: Path) -> Iterator[tuple[Path, Optional[str]]]:
    """Every entry below `folder`, in name order, with the reason it is skipped (None: a file to read).
    Folder links are not followed (no loops); hidden files and folders are named, not read."""
    for root, folders, files in os.walk(folder):
        folders.sort()
        for name in [name for name in folders if name.startswith(".") or (Path(root) / name).is_symlink()]:
            folders.remove(name)
            hidden = name.startswith(".")
            yield Path(root) / name, "hidden folder (not read)" if hidden else "link to a folder (not followed)"
        for name in sorted(files):
            path = Path(root) / name
            reason = "hidden file" if name.startswith(".") else link_problem(path)
            if reason is None and not path.is_file():
                reason = "not a regular file"
            yield path, reason


def ingest_folder(
    source: Path, out: str, split: str = "train", rows_per_shard: int = 10_000, progress_every: int = 1000,
    min_size: int = 8, seed: int = 0,
) -> tuple[DatasetInfo, list[dict]]:
    if not source.is_dir():
        raise FileNotFoundError(f"image folder not found: {source}")
    started = time.time()
    layout = folder_layout(source, split)
    candidates = {name: list(walk_files(folder)) for name, folder in layout.items()}
    class_names = sorted(
        {printable(path.relative_to(layout[name]).parts[0]) for name, entries in candidates.items()
         for path, reason in entries if reason is None and len(path.relative_to(layout[name]).parts) > 1}
    )
    class_index = {name: index for index, name in enumerate(class_names)}
    skipped: list[dict] = []
    readable: dict[str, list[tuple[Path, bytes, Optional[int]]]] = {}
    gray_flags, seen, smallest = [], 0, None
    for name, entries in candidates.items():
        readable[name] = []
        for path, reason in entries:
            seen += 1
            if seen % progress_every == 0:
                rate = seen / max(time.time() - started, 1e-9)
                print(f"  checked {seen} files ({len(skipped)} skipped), {rate:.0f} files/s", flush=True)
            if reason is None and path.suffix.lower() not in IMAGE_SUFFIXES:
                reason = "not an image file (suffix)"
            data = b""
            if reason is None:
                try:
                    data = path.read_bytes()
                except OSError as error:
                    reason = f"cannot be read ({type(error).__name__}: {error.strerror})"
            if reason is None:
                try:
                    height, width = verified_pil_image(data, 3).shape[:2]
                    if min(height, width) < min_size:
                        reason = f"too small ({width}x{height} px, below --min-size {min_size})"
                except ValueError as error:
                    reason = str(error)
            if reason is not None:
                skipped.append({"file": printable(path), "reason": reason})
                continue
            smallest = min(height, width) if smallest is None else min(smallest, height, width)
            parts = path.relative_to(layout[name]).parts
            label = class_index[printable(parts[0])] if len(parts) > 1 else None
            readable[name].append((path, data, label))
            gray_flags.append(is_grayscale(data))
    if not any(readable.values()):
        raise ValueError(f"no readable image in {source} ({len(skipped)} files skipped)")
    channels = 1 if all(gray_flags) else 3
    splits = {}
    for name, rows in readable.items():
        writer = ShardWriter(out, name, rows_per_shard)
        random.Random(seed).shuffle(rows)  # folders are walked class by class
        for path, data, label in rows:
            writer.add(data, label, printable(path.relative_to(source)))
        writer.flush()
        splits[name] = writer.count
        print(f"  {name}: {writer.count} images in {writer.shards} shards")
    rows = [row for rows in readable.values() for row in rows]
    sample = random.Random(0).sample(rows, min(len(rows), 500))
    # decoded as training decodes them (16-bit images scaled to 8 bits, not clipped)
    mean, std = channel_stats([decode_image(data, channels) for _, data, _ in sample])
    info = DatasetInfo(source.name, channels, splits, class_names or None, mean, std, skipped=len(skipped),
                       min_side=smallest)
    write_info(out, info)
    write_text(out, "ingest_report.json", json.dumps({"skipped": skipped}, indent=2))
    return info, skipped


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.ingest", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="kind", required=True)
    fmnist = sub.add_parser("fashion-mnist", help="Fashion-MNIST IDX files")
    fmnist.add_argument("--source", type=Path, default=FASHION_MNIST_DIR)
    fmnist.add_argument("--limit", type=int, default=None, help="first N images of each split")
    folder = sub.add_parser("folder", help="a folder of images")
    folder.add_argument("--source", type=Path, required=True)
    folder.add_argument("--split", default="train", help="split name when the folder has no train/test sub-folders")
    folder.add_argument("--min-size", type=int, default=8, help="skip images whose shorter side is below this (px)")
    for each in (fmnist, folder):
        each.add_argument("--out", required=True, help="output folder or URI")
        each.add_argument("--rows-per-shard", type=int, default=10_000)
        each.add_argument("--seed", type=int, default=0, help="seed of the random order rows are written in")
    args = parser.parse_args(argv)
    started = time.time()
    try:
        if args.kind == "fashion-mnist":
            info = ingest_fashion_mnist(args.source, args.out, args.limit, args.rows_per_shard, args.seed)
        else:
            info, skipped = ingest_folder(args.source, args.out, args.split, args.rows_per_shard,
                                          min_size=args.min_size, seed=args.seed)
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
