"""The Parquet layout written by ingest and read by training and evaluation.

<root>/dataset.json            name, channels, classes, split sizes, normalisation
<root>/ingest_report.json      skipped files and why
<root>/<split>/part-*.parquet  columns: image (encoded bytes), label (int32, null when unknown), split, source
                               (read in name order: part-00000.parquet...; a folder ingest's part-<place>-00000.parquet)
Rows are written in a seeded random order, in row groups of `ROWS_PER_GROUP` images: training reads whole
row groups in a new random order every epoch. Roots may be local paths or URIs pyarrow understands (s3://, gs://, ...).
"""
import json
from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipelines.storage.files import DatasetError, file_exists, filesystem, write_text

ROWS_PER_GROUP = 256
SCHEMA = pa.schema(
    [("image", pa.binary()), ("label", pa.int32()), ("split", pa.string()), ("source", pa.string())]
)
# Image files are compressed already: stored as they are, with neither Snappy nor a dictionary (which Parquet
# abandons after its first megabyte of distinct images), they read 3x faster at the same size (web-sized JPEGs, a
# row group of 256 memory-mapped: 0.026 against 0.091-0.106 ms an image with pyarrow's defaults; 2026-12-07).
COMPRESSION = {name: "none" if name == "image" else "snappy" for name in SCHEMA.names}
DICTIONARY = [name for name in SCHEMA.names if name != "image"]


@dataclass
class DatasetInfo:
    name: str
    channels: int
    splits: dict[str, int]
    classes: Optional[list[str]] = None
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    skipped: int = 0
    min_side: Optional[int] = None  # shorter side of the smallest image (px)
    shorter_side: Optional[int] = None  # images with a longer shorter side were stored shrunk to it (px)

    @property
    def labelled(self) -> bool:
        return bool(self.classes)


def write_info(root: str, info: DatasetInfo) -> None:
    write_text(root, "dataset.json", json.dumps(asdict(info), indent=2))


def read_info(root: str) -> DatasetInfo:
    fs, base = filesystem(root)
    path = f"{base}/dataset.json"
    if fs.get_file_info(path).type != pafs.FileType.File:
        raise DatasetError(
            f"no dataset at '{root}' (missing dataset.json). Create one with "
            f"`python -m pipelines.ingest fashion-mnist|folder ... --out {root}`"
        )
    with fs.open_input_stream(path) as stream:
        return DatasetInfo(**json.loads(stream.read()))


def split_path(root: str, split: str) -> str:
    return f"{root.rstrip('/')}/{split}"


def prepare_dataset_folder(out: str) -> None:
    """Before an ingest writes into `out`: refuses a finished dataset there (its dataset.json), and removes the shards
    an unfinished ingest left in its split folders (new shards would not replace them all: a folder ingest names
    them by their place in the order, and fewer shards leave the last ones)."""
    if file_exists(f"{out.rstrip('/')}/dataset.json"):
        raise DatasetError(f"{out} already holds a dataset (its dataset.json): remove it, or ingest into another --out")
    fs, base = filesystem(out)
    for folder in fs.get_file_info(pafs.FileSelector(base, allow_not_found=True)):
        if folder.type == pafs.FileType.Directory:
            for leftover in fs.get_file_info(pafs.FileSelector(folder.path)):
                if leftover.base_name.startswith("part-") and leftover.base_name.endswith(".parquet"):
                    fs.delete_file(leftover.path)


class ShardWriter:
    """Writes rows into Parquet files of `rows_per_shard` rows, one row group at a time: it never holds
    more than `rows_per_group` images (plus the last table given to `add_table`)."""

    def __init__(self, root: str, split: str, rows_per_shard: int = 10_000, rows_per_group: int = ROWS_PER_GROUP,
                 prefix: str = "part-"):
        self.fs, base = filesystem(split_path(root, split))
        self.base, self.split, self.rows_per_shard, self.rows_per_group = base, split, rows_per_shard, rows_per_group
        self.prefix = prefix  # files are named prefix + their number (5 digits) + .parquet
        self.fs.create_dir(base, recursive=True)
        self.rows: list[dict] = []
        self.pending: Optional[pa.Table] = None
        self.writer: Optional[pq.ParquetWriter] = None
        self.in_shard = 0
        self.shards = 0
        self.count = 0

    def add(self, image: bytes, label: Optional[int], source: str) -> None:
        self.rows.append({"image": image, "label": label, "split": self.split, "source": source})
        self.count += 1
        if len(self.rows) >= self.rows_per_group:
            self.add_rows_as_table()

    def add_table(self, table: pa.Table) -> None:
        """Rows with the columns image, label and source."""
        self.add_rows_as_table()
        table = table.select(["image", "label", "source"]).append_column(
            "split", pa.array([self.split] * len(table), pa.string())).select(SCHEMA.names).cast(SCHEMA)
        self.count += len(table)
        self.pending = table if self.pending is None else pa.concat_tables([self.pending, table])
        self.write_groups(final=False)

    def add_rows_as_table(self) -> None:
        if self.rows:
            rows, self.rows = pa.Table.from_pylist(self.rows, schema=SCHEMA), []
            self.count -= len(rows)  # add_table counts them
            self.add_table(rows)

    def write_groups(self, final: bool) -> None:
        while self.pending is not None and len(self.pending) and (
                final or len(self.pending) >= min(self.rows_per_group, self.rows_per_shard - self.in_shard)):
            size = min(self.rows_per_group, self.rows_per_shard - self.in_shard, len(self.pending))
            if self.writer is None:
                self.writer = pq.ParquetWriter(f"{self.base}/{self.prefix}{self.shards:05d}.parquet", SCHEMA,
                                               filesystem=self.fs, compression=COMPRESSION, use_dictionary=DICTIONARY)
                self.shards += 1
            self.writer.write_table(self.pending.slice(0, size), row_group_size=self.rows_per_group)
            self.pending, self.in_shard = self.pending.slice(size), self.in_shard + size
            if self.in_shard >= self.rows_per_shard:
                self.close_shard()

    def close_shard(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.writer, self.in_shard = None, 0

    def flush(self) -> None:
        """Writes what is buffered and closes the current file (call once at the end)."""
        self.add_rows_as_table()
        self.write_groups(final=True)
        self.close_shard()


def split_files(root: str, split: str) -> list[str]:
    """The split's Parquet files as URIs (or local paths), in name order."""
    fs, base = filesystem(split_path(root, split))
    files = sorted(
        info.path for info in fs.get_file_info(pafs.FileSelector(base, allow_not_found=True)) if info.path.endswith(".parquet")
    )
    if not files:
        raise DatasetError(f"split '{split}' of '{root}' has no Parquet shards")
    prefix = root.split("://", 1)[0] + "://" if "://" in root else ""
    return [prefix + path for path in files]


def read_split(root: str, split: str, columns=("image", "label")) -> pa.Table:
    """A whole split as one Arrow table (small columns such as labels; images only for small splits)."""
    tables = []
    for uri in split_files(root, split):
        fs, path = filesystem(uri)
        tables.append(pq.read_table(path, columns=list(columns), filesystem=fs))
    return pa.concat_tables(tables)


def split_labels(root: str, split: str) -> np.ndarray:
    """The split's labels in row order, -1 where unknown."""
    return read_split(root, split, ("label",)).column("label").fill_null(-1).to_numpy()


def read_rows(root: str, split: str, rows, columns=("image", "label")) -> pa.Table:
    """The rows at positions `rows` of a split (counted over its files in name order), in that order;
    only the row groups that hold them are read. Positions past the end of the split are left out."""
    rows = np.asarray(rows, dtype=np.int64)
    parts, positions, offset = [], [], 0
    for uri in split_files(root, split):
        fs, path = filesystem(uri)
        parquet = pq.ParquetFile(path, filesystem=fs)
        for group in range(parquet.metadata.num_row_groups):
            count = parquet.metadata.row_group(group).num_rows
            inside = np.sort(rows[(rows >= offset) & (rows < offset + count)])
            if len(inside):
                parts.append(parquet.read_row_group(group, columns=list(columns)).take(inside - offset))
                positions.append(inside)
            offset += count
    if not parts:
        return pa.table({name: pa.array([], SCHEMA.field(name).type) for name in columns})
    index_of = {int(position): index for index, position in enumerate(np.concatenate(positions))}
    return pa.concat_tables(parts).take([index_of[int(p)] for p in rows if int(p) in index_of])
