"""Ingest of an image folder (local or an object-storage prefix) as a streaming Ray Data job.

The driver lists the files (names only) and shuffles them with the seed; Ray Data tasks read, verify and
measure each file; the driver streams the checked rows, in that shuffled order, into Parquet files one
row group at a time. Memory stays flat however large the folder: no process holds more than a few
batches of images. Every file that is not ingested is named with its reason in the report.
"""
import errno
import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from pipelines.cluster.start import start_ray
from pipelines.data.decode import (
    IMAGE_SUFFIXES,
    ChannelStats,
    decode_reduced,
    is_grayscale,
    shrunk_copy,
    suffix_reason,
    verified_size,
)
from pipelines.data.store import DatasetInfo, ShardWriter, write_info
from pipelines.storage.files import filesystem, write_text

SPLIT_NAMES = {"train": "train", "test": "test", "val": "test", "valid": "test", "validation": "test"}
STATS_SAMPLE = 500
STATS_SIDE = 224  # the statistics' images decoded at a reduced scale down to this shorter side
CHECK_BATCH = 128
BLOCK_ROWS = 1024


def printable(path) -> str:
    """A path as text, also when its name is not valid UTF-8 (those bytes shown as \\xNN)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def is_uri(source) -> bool:
    return "://" in str(source)


@dataclass
class Listing:
    """Files to check per split (as bytes paths, with their relative name and class), and entries skipped
    without reading them."""
    files: dict[str, list[tuple[bytes, str, Optional[str]]]] = field(default_factory=dict)
    skipped: list[dict] = field(default_factory=list)
    class_entries: dict[str, int] = field(default_factory=dict)  # entries below each class folder, skipped ones too

    def add(self, split: str, path, relative: tuple, reason: Optional[str], shown: str, source: str) -> None:
        """`relative`: the path's parts below the split's folder (the first is the class when there are two
        or more); `shown`: the path as the report names it; `source`: as the `source` column keeps it."""
        if len(relative) > 1:
            self.class_entries[printable(relative[0])] = self.class_entries.get(printable(relative[0]), 0) + 1
        if reason is None and Path(relative[-1]).suffix.lower() not in IMAGE_SUFFIXES:
            reason = suffix_reason(relative[-1])
        if reason is not None:
            self.skipped.append({"file": shown, "reason": reason})
            return
        label = printable(relative[0]) if len(relative) > 1 else None
        self.files.setdefault(split, []).append((os.fsencode(path), source, label))


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


def split_folders(names: list[str], default_split: str) -> dict[str, Optional[str]]:
    """{split: sub-folder name}: `train/` and `test/`|`val/` when present, else the whole folder (None)."""
    found = {SPLIT_NAMES[name.lower()]: name for name in names if name.lower() in SPLIT_NAMES}
    return found if "train" in found else {default_split: None}


def list_local(source: Path, default_split: str) -> Listing:
    if not source.is_dir():
        raise FileNotFoundError(f"image folder not found: {source}")
    listing = Listing()
    layout = split_folders([path.name for path in source.iterdir() if path.is_dir()], default_split)
    for split, sub in layout.items():
        folder = source / sub if sub else source
        for path, reason in walk_files(folder):
            listing.add(split, path, path.relative_to(folder).parts, reason, printable(path),
                        printable(path.relative_to(source)))
    return listing


def list_object_storage(source: str, default_split: str) -> Listing:
    fs, base = filesystem(source)
    try:
        entries = fs.get_file_info(pafs.FileSelector(base, recursive=True))
    except (FileNotFoundError, OSError) as error:
        raise FileNotFoundError(f"image prefix not found or not readable: {source} ({error})") from None
    files = [info.path.removeprefix(base.rstrip("/") + "/") for info in entries if info.type == pafs.FileType.File]
    listing = Listing()
    layout = split_folders(sorted({name.split("/")[0] for name in files if "/" in name}), default_split)
    prefix = source.split("://", 1)[0] + "://"
    for split, sub in layout.items():
        for name in sorted(files):
            parts = tuple(name.split("/"))
            if sub and parts[0] != sub:
                continue
            relative = parts[1:] if sub else parts
            hidden = any(part.startswith(".") for part in relative)
            listing.add(split, f"{prefix}{base.rstrip('/')}/{name}", relative, "hidden file" if hidden else None,
                        f"{source.rstrip('/')}/{name}", name)
    return listing


def check_files(batch: dict[str, np.ndarray], min_size: int,
                shorter_side: Optional[int] = None) -> dict[str, np.ndarray]:
    """Ray Data task: reads, verifies and measures each file; `reason` is empty for images kept. With
    `shorter_side`, an image whose shorter side is longer is kept as a copy shrunk to it."""
    images, reasons, gray, sides = [], [], [], []
    for raw in batch["path"]:
        path, data, reason, side, grey = os.fsdecode(bytes(raw)), b"", "", 0, False
        try:
            if is_uri(path):
                fs, inside = filesystem(path)
                with fs.open_input_stream(inside) as stream:
                    data = stream.read()
            else:
                data = Path(path).read_bytes()
        except OSError as error:
            reason = f"cannot be read ({type(error).__name__}: {getattr(error, 'strerror', None) or error})"
        if not reason:
            try:
                width, height = verified_size(data)
                side, grey = min(height, width), is_grayscale(data)
                if side < min_size:
                    reason = f"too small ({width}x{height} px, below --min-size {min_size})"
                elif shorter_side and side > shorter_side:
                    data, side = shrunk_copy(data, shorter_side), shorter_side
            except ValueError as error:
                reason = str(error)
        images.append(b"" if reason else data)
        reasons.append(reason)
        gray.append(grey)
        sides.append(side)
    return {**batch, "image": np.array(images, dtype=object), "reason": np.array(reasons, dtype=object),
            "gray": np.array(gray), "side": np.array(sides, dtype=np.int64)}


def classes_without_images(listing: Listing, labels: list[str], counts: np.ndarray) -> list[dict]:
    """Class folders that end with no image, and what becomes of each."""
    empty = []
    for name, entries in sorted(listing.class_entries.items()):
        if name not in labels:
            empty.append({"class": name, "entries": entries, "outcome": "not a class: it holds no image file"})
        elif counts[labels.index(name)] == 0:
            empty.append({"class": name, "entries": entries, "outcome": f"kept in the classes with 0 images (label "
                          f"{labels.index(name)}, so the others keep theirs): every file of it was skipped"})
    return empty


def ingest_folder(
    source, out: str, split: str = "train", rows_per_shard: int = 10_000, progress_every: float = 5.0,
    min_size: int = 8, seed: int = 0, verbose: bool = False, shorter_side: Optional[int] = None,
) -> tuple[DatasetInfo, list[dict]]:
    """`source`: a local folder or an object-storage prefix (s3://bucket/pictures). Returns the dataset's
    description and the skipped files with their reasons. `shorter_side`: store each image whose shorter side
    is longer as a copy shrunk to it (decoding a 12-megapixel photo each epoch costs more than its views)."""
    import ray

    started = time.time()
    listing = list_object_storage(str(source), split) if is_uri(source) else list_local(Path(source), split)
    labels = sorted({label for files in listing.files.values() for _, _, label in files if label is not None})
    class_index = {name: index for index, name in enumerate(labels)}
    rows = []
    for name, files in listing.files.items():
        random.Random(seed).shuffle(files)  # folders are listed class by class
        rows += [(path, name, relative, class_index.get(label, -1)) for path, relative, label in files]
    skipped, total = list(listing.skipped), len(rows) + len(listing.skipped)
    print(f"  {total} entries listed in {time.time() - started:.1f}s; checking {len(rows)} files", flush=True)
    writers, sampled, stats, all_gray, smallest = {}, 0, ChannelStats(), True, None
    counts = np.zeros(len(labels), np.int64)
    if rows:
        start_ray(verbose)
        ray.data.DataContext.get_current().execution_options.preserve_order = True  # the seeded order
        table = pa.table({"path": pa.array([row[0] for row in rows], pa.binary()),
                          "split": [row[1] for row in rows], "relative": [row[2] for row in rows],
                          "label": pa.array([row[3] for row in rows], pa.int32())})
        blocks = [table.slice(start, BLOCK_ROWS) for start in range(0, len(table), BLOCK_ROWS)]  # one task each
        checked = ray.data.from_arrow(blocks).map_batches(
            check_files, fn_kwargs={"min_size": min_size, "shorter_side": shorter_side}, batch_size=CHECK_BATCH,
            batch_format="numpy")
        seen, last_print = len(listing.skipped), time.time()
        for batch in checked.iter_batches(batch_size=CHECK_BATCH * 4, batch_format="pyarrow", prefetch_batches=4):
            bad = pc.not_equal(batch["reason"], "")
            skipped += [{"file": printable(os.fsdecode(row["path"])), "reason": row["reason"]}
                        for row in batch.filter(bad).select(["path", "reason"]).to_pylist()]
            kept = batch.filter(pc.invert(bad))
            if len(kept):
                found = kept["label"].to_numpy()
                counts += np.bincount(found[found >= 0], minlength=len(labels))
                kept = kept.set_column(kept.schema.get_field_index("label"), "label", pc.if_else(
                    pc.less(kept["label"], 0), pa.scalar(None, pa.int32()), kept["label"]))
                for name in pc.unique(kept["split"]).to_pylist():
                    if name not in writers:
                        writers[name] = ShardWriter(out, name, rows_per_shard)
                    writers[name].add_table(kept.filter(pc.equal(kept["split"], name)).rename_columns(
                        ["source" if column == "relative" else column for column in kept.column_names]))
                all_gray &= pc.all(kept["gray"]).as_py()
                smallest = min(filter(None, (smallest, pc.min(kept["side"]).as_py())))
                # the order is random: the first images are a random sample, decoded as training decodes them
                # (16-bit images scaled to 8 bits, not clipped), as colour, one at a time
                for data in kept["image"].slice(0, STATS_SAMPLE - sampled).to_pylist():
                    stats.add(decode_reduced(data, 3, STATS_SIDE))
                    sampled += 1
            seen += len(batch)
            if time.time() - last_print >= progress_every:
                last_print = time.time()
                print(f"  checked {seen}/{total} files ({len(skipped)} skipped), "
                      f"{seen / (last_print - started):.0f} files/s", flush=True)
    if not writers:
        raise ValueError(f"no readable image in {source} ({len(skipped)} files skipped)")
    channels = 1 if all_gray else 3
    splits = {}
    for name, writer in writers.items():
        writer.flush()
        splits[name] = writer.count
        print(f"  {name}: {writer.count} images in {writer.shards} shards")
    mean, std = stats.result(channels)
    info = DatasetInfo(str(source).rstrip("/").rsplit("/", 1)[-1], channels, splits, labels or None, mean, std,
                       skipped=len(skipped), min_side=smallest, shorter_side=shorter_side)
    write_info(out, info)
    empty = classes_without_images(listing, labels, counts)
    for item in empty:
        print(f"  warning: class folder '{item['class']}' ({item['entries']} entries) has no image: {item['outcome']}")
    write_text(out, "ingest_report.json", json.dumps({"skipped": skipped, "classes_without_images": empty}, indent=2))
    return info, skipped
