"""The Parquet layout written by ingest and read by training and evaluation.

<root>/dataset.json            name, channels, classes, split sizes, normalisation
<root>/ingest_report.json      skipped files and why
<root>/<split>/part-00000.parquet  columns: image (encoded bytes), label (int32, null when unknown), split, source
Roots may be local paths or URIs pyarrow understands (s3://, gs://, ...).
"""
import json
from dataclasses import asdict, dataclass, field
from typing import Optional

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

SCHEMA = pa.schema(
    [("image", pa.binary()), ("label", pa.int32()), ("split", pa.string()), ("source", pa.string())]
)


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

    @property
    def labelled(self) -> bool:
        return bool(self.classes)


class DatasetError(ValueError):
    """The dataset is missing, empty or unusable: a user mistake, printed as a message."""


def filesystem(root: str) -> tuple[pafs.FileSystem, str]:
    try:
        return pafs.FileSystem.from_uri(root)
    except (pa.ArrowInvalid, ValueError):
        return pafs.LocalFileSystem(), root


def write_text(root: str, name: str, text: str) -> None:
    fs, base = filesystem(root)
    fs.create_dir(base, recursive=True)
    with fs.open_output_stream(f"{base}/{name}") as stream:
        stream.write(text.encode())


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


class ShardWriter:
    """Buffers rows and writes one Parquet file each `rows_per_shard` rows."""

    def __init__(self, root: str, split: str, rows_per_shard: int = 10_000):
        self.fs, base = filesystem(split_path(root, split))
        self.base, self.split, self.rows_per_shard = base, split, rows_per_shard
        self.fs.create_dir(base, recursive=True)
        self.rows: list[dict] = []
        self.shards = 0
        self.count = 0

    def add(self, image: bytes, label: Optional[int], source: str) -> None:
        self.rows.append({"image": image, "label": label, "split": self.split, "source": source})
        self.count += 1
        if len(self.rows) >= self.rows_per_shard:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        table = pa.Table.from_pylist(self.rows, schema=SCHEMA)
        pq.write_table(table, f"{self.base}/part-{self.shards:05d}.parquet", filesystem=self.fs)
        self.rows, self.shards = [], self.shards + 1


def read_split(root: str, split: str, columns=("image", "label"), limit: Optional[int] = None) -> pa.Table:
    """A whole split (or its first `limit` rows) as one Arrow table, for evaluation."""
    fs, base = filesystem(split_path(root, split))
    files = sorted(
        info.path for info in fs.get_file_info(pafs.FileSelector(base)) if info.path.endswith(".parquet")
    )
    tables, rows = [], 0
    for path in files:
        table = pq.read_table(path, columns=list(columns), filesystem=fs)
        tables.append(table)
        rows += table.num_rows
        if limit is not None and rows >= limit:
            break
    if not tables:
        raise DatasetError(f"split '{split}' of '{root}' has no Parquet shards")
    table = pa.concat_tables(tables)
    return table.slice(0, limit) if limit is not None else table


def split_files(root: str, split: str) -> list[str]:
    fs, base = filesystem(split_path(root, split))
    files = sorted(
        info.path for info in fs.get_file_info(pafs.FileSelector(base, allow_not_found=True)) if info.path.endswith(".parquet")
    )
    if not files:
        raise DatasetError(f"split '{split}' of '{root}' has no Parquet shards")
    prefix = root.split("://", 1)[0] + "://" if "://" in root else ""
    return [prefix + path for path in files]
