"""Ingest of an image folder (local or an object-storage prefix) as a streaming Ray Data job.

Ray tasks list the files (`pipelines.ingestion.listing`); Ray Data sorts them into a seeded random order (a hash
of the seed and each name: classes mixed in every shard) and cuts that order into shards; one task per shard
reads, verifies and measures its files and writes the kept ones to Parquet, one row group at a time, in a file
named by its place in the order. The driver holds no list of names and no image: it adds up each shard's counts
and skipped files. Every file that is not ingested is named with its reason in the report.
"""
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.cluster.start import start_ray
from pipelines.data.decode import ChannelStats, decode_reduced, is_grayscale, shrunk_copy, verified_size
from pipelines.data.store import ROWS_PER_GROUP, DatasetInfo, ShardWriter, prepare_dataset_folder, write_info
from pipelines.ingestion.listing import Listed, is_uri, list_source, printable
from pipelines.storage.files import filesystem, write_text

STATS_SAMPLE = 500
STATS_SIDE = 224  # the statistics' images decoded at a reduced scale down to this shorter side
CHECK_BATCH = 128


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
    """Reads, verifies and measures each file (in a shard's task); `reason` is empty for images kept. With
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


@dataclass
class Tally:
    """What the driver adds up of the shards' tasks: files checked, those skipped (with their reasons), images per
    label, images stored and shard files written per split, whether every image was grey, the smallest shorter
    side, and the channel statistics' sums."""
    classes: int
    rows: int = 0
    skipped: list = field(default_factory=list)
    counts: np.ndarray = None
    stored: dict = field(default_factory=dict)
    files: dict = field(default_factory=dict)
    gray: bool = True
    smallest: Optional[int] = None
    stats: ChannelStats = field(default_factory=ChannelStats)

    def __post_init__(self):
        self.counts = np.zeros(self.classes, np.int64) if self.counts is None else np.asarray(self.counts, np.int64)

    def add(self, other: "Tally") -> None:
        self.rows += other.rows
        self.skipped += other.skipped
        self.counts += other.counts
        for mine, theirs in ((self.stored, other.stored), (self.files, other.files)):
            for split, count in theirs.items():
                mine[split] = mine.get(split, 0) + count
        self.gray &= other.gray
        self.smallest = min(filter(None, (self.smallest, other.smallest)), default=None)
        self.stats.merge(other.stats)

    def as_row(self) -> pa.Table:
        stats = [self.stats.count, np.asarray(self.stats.sum).tolist(), np.asarray(self.stats.squares).tolist()]
        return pa.table({"tally": [json.dumps({
            "rows": self.rows, "skipped": self.skipped, "counts": self.counts.tolist(), "stored": self.stored,
            "files": self.files, "gray": self.gray, "smallest": self.smallest, "stats": stats})]})

    @classmethod
    def from_row(cls, text: str, classes: int) -> "Tally":
        fields = json.loads(text)
        count, sums, squares = fields.pop("stats")
        tally = cls(classes, **fields)
        tally.stats.count, tally.stats.sum, tally.stats.squares = count, np.asarray(sums), np.asarray(squares)
        return tally


def store_shard(block: pa.Table, out: str, classes: int, min_size: int, shorter_side: Optional[int],
                sample_share: float) -> Iterator[pa.Table]:
    """Ray Data task, one per shard: checks the block's files (`check_files`, `CHECK_BATCH` at a time) and writes the
    kept images, in the block's order, to one Parquet file per split named by its first row's place in the seeded
    order (file names sort as the rows do), one row group at a time. Decodes `sample_share` of its rows for the
    channel statistics (the order is random: a random sample). Yields a `Tally` row per `CHECK_BATCH` files (the
    driver's progress), then one of the files written."""
    writers, to_sample = {}, math.ceil(sample_share * len(block))
    for start in range(0, len(block), CHECK_BATCH):
        chunk = block.slice(start, CHECK_BATCH)
        checked = check_files({name: chunk[name].to_numpy(zero_copy_only=False) for name in chunk.column_names},
                              min_size, shorter_side)
        tally = Tally(classes, len(chunk), [{"file": printable(os.fsdecode(bytes(path))), "reason": reason}
                                            for path, reason in zip(checked["path"], checked["reason"]) if reason])
        keep = np.flatnonzero(checked["reason"] == "")
        if len(keep):
            labels = checked["label"][keep]
            tally.counts += np.bincount(labels[labels >= 0], minlength=classes)
            tally.gray, tally.smallest = bool(checked["gray"][keep].all()), int(checked["side"][keep].min())
            kept = pa.table({"image": pa.array(checked["image"][keep], pa.binary()),
                             "label": pa.array(np.where(labels >= 0, labels, 0), pa.int32(), mask=labels < 0),
                             "source": pa.array(checked["relative"][keep], pa.string()),
                             "split": pa.array(checked["split"][keep], pa.string()),
                             "order": pa.array(checked["order"][keep], pa.int64())})
            for split in pc.unique(kept["split"]).to_pylist():
                rows = kept.filter(pc.equal(kept["split"], split))
                if split not in writers:
                    place = rows["order"][0].as_py() + 2**63  # the order's hash as an unsigned number: names sort
                    writers[split] = ShardWriter(out, split, len(block) + 1, prefix=f"part-{place:016x}-")
                writers[split].add_table(rows)
                tally.stored[split] = len(rows)
            # decoded as training decodes them (16-bit images scaled to 8 bits, not clipped), as colour, one at a time
            for data in kept["image"].slice(0, to_sample).to_pylist():
                tally.stats.add(decode_reduced(data, 3, STATS_SIDE))
                to_sample -= 1
        yield tally.as_row()
    for writer in writers.values():
        writer.flush()
    yield Tally(classes, files={split: writer.shards for split, writer in writers.items()}).as_row()


def shard_rows(rows_per_shard: int, files: int, cpus: float) -> int:
    """Rows of a shard (one task checks and writes each): `rows_per_shard`, fewer where the folder is small, so that
    every CPU of the cluster has a shard to work on (at least a row group's worth)."""
    return min(rows_per_shard, max(ROWS_PER_GROUP, math.ceil(files / max(1.0, cpus))))


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
    prepare_dataset_folder(out)
    start_ray(verbose)
    tables, listed = list_source(str(source), split)
    labels = sorted(name for name, count in listed.class_files.items() if name and count)
    total = listed.files + len(listed.skipped)
    print(f"  {total} entries listed in {time.time() - started:.1f}s; checking {listed.files} files", flush=True)
    tally = Tally(len(labels), len(listed.skipped), list(listed.skipped))
    if listed.files:
        cpus = ray.cluster_resources().get("CPU", 1)
        shards = math.ceil(listed.files / shard_rows(rows_per_shard, listed.files, cpus))
        stored = ray.data.from_arrow_refs(tables).map_batches(
            with_order, fn_kwargs={"seed": seed, "labels": labels}, batch_format="pyarrow", batch_size=None,
        ).sort(["split", "order"]).repartition(shards, shuffle=False).map_batches(  # equal parts, in order
            store_shard, fn_kwargs={"out": out, "classes": len(labels), "min_size": min_size,
                                    "shorter_side": shorter_side, "sample_share": STATS_SAMPLE / listed.files},
            batch_size=None, batch_format="pyarrow")
        last_print = time.time()
        for row in stored.iter_rows():
            tally.add(Tally.from_row(row["tally"], len(labels)))
            if time.time() - last_print >= progress_every:
                last_print = time.time()
                print(f"  checked and stored {tally.rows}/{total} files ({len(tally.skipped)} skipped), "
                      f"{tally.rows / (last_print - started):.0f} files/s", flush=True)
    if not tally.stored:
        raise ValueError(f"no readable image in {source} ({len(tally.skipped)} files skipped)")
    skipped, stats = sorted(tally.skipped, key=lambda entry: entry["file"]), tally.stats
    channels = 1 if tally.gray else 3
    for name in sorted(tally.stored):
        print(f"  {name}: {tally.stored[name]} images in {tally.files[name]} shards")
    mean, std = stats.result(channels)
    info = DatasetInfo(str(source).rstrip("/").rsplit("/", 1)[-1], channels, tally.stored, labels or None, mean, std,
                       skipped=len(skipped), min_side=tally.smallest, shorter_side=shorter_side)
    write_info(out, info)
    empty = classes_without_images(listed, labels, tally.counts)
    for item in empty:
        print(f"  warning: class folder '{item['class']}' ({item['entries']} entries) has no image: {item['outcome']}")
    write_text(out, "ingest_report.json", json.dumps({"skipped": skipped, "classes_without_images": empty}, indent=2))
    return info, skipped
