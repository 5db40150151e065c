"""Ingest of an image folder (local or an object-storage prefix) as a streaming Ray Data job.

Ray tasks list the files (`pipelines.ingestion.listing`); Ray Data sorts them into a seeded random order (a hash
of the seed and each name: classes mixed in every shard), and its tasks read, verify and measure each file; the
driver streams the checked rows, in that order, into Parquet files one row group at a time. Memory stays flat
however large the folder: the driver holds no list of names and no process more than a few batches of images.
Every file that is not ingested is named with its reason in the report.
"""
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.cluster.start import start_ray
from pipelines.data.decode import ChannelStats, decode_reduced, is_grayscale, shrunk_copy, verified_size
from pipelines.data.store import DatasetInfo, ShardWriter, write_info
from pipelines.ingestion.listing import Listed, is_uri, list_source, printable
from pipelines.storage.files import filesystem, write_text

STATS_SAMPLE = 500
STATS_SIDE = 224  # the statistics' images decoded at a reduced scale down to this shorter side
CHECK_BATCH = 128
BLOCK_ROWS = 1024


def with_order(table: pa.Table, seed: int, labels: list[str]) -> pa.Table:
    """Ray Data task: each listed file's class as its label (-1: none) and its place in the seeded order, a hash of
    the seed and its name relative to the source (the same order wherever the folder is and however it is listed)."""
    key = str(seed).encode()
    order = [int.from_bytes(hashlib.blake2b(name.encode("utf-8", "surrogateescape"), digest_size=8, key=key).digest(),
                            "little", signed=True) for name in table["relative"].to_pylist()]
    index = {name: position for position, name in enumerate(labels)}
    label = [index.get(name, -1) for name in table["class"].to_pylist()]
    return table.drop_columns(["class"]).append_column("label", pa.array(label, pa.int32())).append_column(
        "order", pa.array(order, pa.int64()))


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


def classes_without_images(listed: Listed, labels: list[str], counts: np.ndarray) -> list[dict]:
    """Class folders that end with no image, and what becomes of each."""
    empty = []
    for name, entries in sorted(listed.class_entries.items()):
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
    if not is_uri(source) and not Path(source).is_dir():
        raise FileNotFoundError(f"image folder not found: {source}")
    start_ray(verbose)
    tables, listed = list_source(str(source), split)
    labels = sorted(name for name, count in listed.class_files.items() if name and count)
    skipped, total = list(listed.skipped), listed.files + len(listed.skipped)
    print(f"  {total} entries listed in {time.time() - started:.1f}s; checking {listed.files} files", flush=True)
    writers, sampled, stats, all_gray, smallest = {}, 0, ChannelStats(), True, None
    counts = np.zeros(len(labels), np.int64)
    if listed.files:
        ray.data.DataContext.get_current().execution_options.preserve_order = True  # the seeded order
        checked = ray.data.from_arrow_refs(tables).map_batches(
            with_order, fn_kwargs={"seed": seed, "labels": labels}, batch_format="pyarrow", batch_size=None,
        ).sort("order").repartition(target_num_rows_per_block=BLOCK_ROWS).map_batches(
            check_files, fn_kwargs={"min_size": min_size, "shorter_side": shorter_side}, batch_size=CHECK_BATCH,
            batch_format="numpy")
        seen, last_print = len(listed.skipped), time.time()
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
    empty = classes_without_images(listed, labels, counts)
    for item in empty:
        print(f"  warning: class folder '{item['class']}' ({item['entries']} entries) has no image: {item['outcome']}")
    write_text(out, "ingest_report.json", json.dumps({"skipped": skipped, "classes_without_images": empty}, indent=2))
    return info, skipped
