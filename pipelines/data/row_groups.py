"""A Ray Data source over Parquet row groups that reads them in a new seeded random order every epoch.

One execution streams every epoch of a run, one after the other: the augmentation actors then start once
per run instead of once per epoch (about 5 s each time here, which on a GPU is a large part of an epoch).

Why row groups: ingest writes rows in a random order in groups of a few hundred images, so a row group is
the smallest unit Parquet reads efficiently (one request on object storage) and already a random mix of
classes; shuffling the order of row groups across all files every epoch, then the training iterator's
local buffer, gives each epoch a new order without a full shuffle of the image bytes. Files alone would
be too coarse (10,000 images each).
"""
import functools
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from ray.data.block import Block, BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from pipelines.cluster.ray_compat import execution_index
from pipelines.data.store import SCHEMA
from pipelines.storage.files import filesystem


@dataclass(frozen=True)
class RowGroup:
    uri: str
    group: int
    rows: int  # rows read from it
    size_bytes: int
    keep: Optional[np.ndarray] = None  # positions within the group to keep; None: all
    offset: int = 0  # position of the group's first row in the split


def list_row_groups(files: list[str], rows: Optional[np.ndarray] = None) -> list[RowGroup]:
    """Every row group of `files`; with `rows` (sorted positions over the files in order) only those rows."""
    units, offset = [], 0
    for uri in files:
        metadata = open_parquet(uri).metadata
        for group in range(metadata.num_row_groups):
            count, size = metadata.row_group(group).num_rows, metadata.row_group(group).total_byte_size
            keep = None
            if rows is not None:
                keep = rows[np.searchsorted(rows, offset):np.searchsorted(rows, offset + count)] - offset
            if keep is None:
                units.append(RowGroup(uri, group, count, size, offset=offset))
            elif len(keep):
                units.append(RowGroup(uri, group, len(keep), size * len(keep) // count, keep, offset))
            offset += count
    return units


def open_parquet(uri: str) -> pq.ParquetFile:
    """A stored file to read row groups from; a local one memory-mapped (no copy through a read buffer): a row group
    of 256 phone photos (590 MB) reads in 0.5 ms of CPU an image against 0.9-5.4 through a buffer, web JPEGs in 0.026
    against 0.06 (`pq.ParquetFile(path, memory_map=...).read_row_group` on benchmarks/photos.py's stores,
    2026-12-07)."""
    fs, path = filesystem(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        return pq.ParquetFile(path, memory_map=True)
    return pq.ParquetFile(path, filesystem=fs)


def read_row_groups(units: list[RowGroup], columns: list[str], row_ids: bool = False):
    """The units' rows; with `row_ids` a column `row`: each row's position in the split."""
    for unit in units:
        table = open_parquet(unit.uri).read_row_group(unit.group, columns=columns)
        positions = np.arange(len(table)) if unit.keep is None else unit.keep
        table = table if unit.keep is None else table.take(unit.keep)
        yield table.append_column("row", pa.array(unit.offset + positions, pa.int64())) if row_ids else table


def read_blocks(units: list[RowGroup], columns: list[str], row_ids: bool,
                transform: Optional[Callable[[pa.Table], Block]]) -> Iterator[Block]:
    tables = read_row_groups(units, columns, row_ids)
    return map(transform, tables) if transform else tables


def consecutive_parts(units: list[RowGroup], parts: int) -> list[list[RowGroup]]:
    """`units` cut into `parts` consecutive runs, none empty, of about as many rows each (a run of small groups,
    as `data.limit` leaves, shares a task)."""
    if not units:
        return [[]]  # a split with no rows: one task that reads nothing
    ends = np.cumsum([unit.rows for unit in units])
    cuts = np.searchsorted(ends, ends[-1] * np.arange(1, parts) / parts, side="right")
    for index in range(parts - 1):  # each run at least one unit, leaving one for each run after it
        low = cuts[index - 1] + 1 if index else 1
        cuts[index] = min(max(cuts[index], low), len(units) - (parts - 1 - index))
    return [units[start:end] for start, end in zip([0, *cuts], [*cuts, len(units)])]


class ShuffledRowGroups(Datasource):
    """With `transform`, each table read becomes what it returns (a block) in the read task: the training stream's
    augmentation (pipelines/data/stream.py), whose read tasks run in its actor pool."""

    def __init__(self, files: list[str], columns: list[str], seed: int, rows: Optional[np.ndarray] = None,
                 epochs: int = 1, row_ids: bool = False, transform: Optional[Callable[[pa.Table], Block]] = None):
        super().__init__()
        self.units, self.columns, self.seed, self.epochs = list_row_groups(files, rows), list(columns), seed, epochs
        self.row_ids, self.transform = row_ids, transform
        self.schema = None if transform else pa.schema(
            [SCHEMA.field(name) for name in self.columns] + ([("row", pa.int64())] if row_ids else []))

    def estimate_inmemory_data_size(self) -> int:
        return self.epochs * sum(unit.size_bytes for unit in self.units)

    def epoch_order(self, epoch: int) -> list[RowGroup]:
        order = np.random.default_rng((self.seed, epoch)).permutation(len(self.units))
        return [self.units[index] for index in order]

    def get_read_tasks(self, parallelism: int, per_task_row_limit: Optional[int] = None,
                       data_context=None) -> list[ReadTask]:
        # Ray Data counts the executions of a dataset; a second one (a restarted run) gets new orders.
        execution = execution_index(data_context)
        order = [unit for epoch in range(self.epochs) for unit in self.epoch_order(execution * self.epochs + epoch)]
        tasks = []
        for units in consecutive_parts(order, max(1, min(parallelism, len(order)))):
            metadata = BlockMetadata(num_rows=sum(u.rows for u in units), size_bytes=sum(u.size_bytes for u in units),
                                     input_files=sorted({u.uri for u in units}), exec_stats=None)
            read = functools.partial(read_blocks, units, self.columns, self.row_ids, self.transform)  # not all units
            tasks.append(ReadTask(read, metadata, schema=self.schema, per_task_row_limit=per_task_row_limit))
        return tasks

    def get_name(self) -> str:
        return "AugmentedRowGroups" if self.transform else "ShuffledRowGroups"
