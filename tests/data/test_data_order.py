"""Data order on a class-sorted image folder: ingest writes a random order, every epoch reads row groups in a
new one, and evaluation subsets, the hold-out and `data.limit` are seeded, stratified random draws."""
import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.config.load import load_config
from pipelines.data.row_groups import RowGroup, ShuffledRowGroups, consecutive_parts
from pipelines.data.store import read_info, split_files, split_labels
from pipelines.data.stream import limited_rows, train_rows
from pipelines.features.extract import eval_rows
from pipelines.training.worker import started_stream

BATCH = 64


def epoch_batches(dataset, buffer: int) -> list[np.ndarray]:
    return [batch["label"] for batch in dataset.iter_batches(batch_size=BATCH, drop_last=True,
                                                                local_shuffle_buffer_size=buffer)]


@pytest.mark.slow
def test_ingest_writes_a_class_sorted_folder_in_random_order(sorted_shards):
    labels = split_labels(sorted_shards, "train")
    assert sorted(np.bincount(labels)) == [48] * 10
    # every row group (of 256 rows, the last of a shard fewer) holds every class
    groups = [(parquet, group) for parquet in map(pq.ParquetFile, split_files(sorted_shards, "train"))
              for group in range(parquet.metadata.num_row_groups)]
    assert len(groups) == 2
    for parquet, group in groups:
        assert len(set(parquet.read_row_group(group, columns=["label"]).column("label").to_pylist())) == 10


@pytest.mark.slow
def test_training_batches_of_a_class_sorted_folder_mix_all_classes(ray_session, sorted_shards):
    """Bound: each batch of 64 (10 classes, 6.4 images each on average) holds at least 8 classes and no class
    above 30 % of it; a uniform random draw breaks it with probability below 1e-4 per batch. Reading the
    folder in file order, as before, gives batches of one or two classes."""
    config = load_config(None, [f"data.path={sorted_shards}", f"data.batch_size={BATCH}", "data.shuffle_buffer=256"])
    dataset = train_rows(config, read_info(sorted_shards), ("label",))
    epochs = [epoch_batches(dataset, config.data.shuffle_buffer) for _ in range(2)]
    for batches in epochs:
        assert len(batches) == 480 // BATCH
        for labels in batches:
            counts = np.bincount(labels, minlength=10)
            assert (counts > 0).sum() >= 8 and counts.max() <= 0.3 * BATCH, counts
    assert not np.array_equal(np.concatenate(epochs[0]), np.concatenate(epochs[1]))  # a new order each epoch


def test_row_groups_are_read_in_a_new_seeded_order_each_epoch(tmp_path):
    """Shards written in class order (as an older ingest did): the row groups themselves are shuffled."""
    labels = np.repeat(np.arange(10), 64)
    table = pa.table({"image": [b""] * len(labels), "label": pa.array(labels, pa.int32())})
    pq.write_table(table, tmp_path / "part-00000.parquet", row_group_size=32)
    source = ShuffledRowGroups([str(tmp_path / "part-00000.parquet")], ["label"], seed=0)
    orders = [[unit.group for unit in source.epoch_order(epoch)] for epoch in range(3)]
    assert sorted(orders[0]) == list(range(20)) and orders[0] != orders[1] != orders[2]
    assert orders[1] == [unit.group for unit in ShuffledRowGroups(
        [str(tmp_path / "part-00000.parquet")], ["label"], seed=0).epoch_order(1)]
    first_ten = [source.units[group].group // 2 for group in orders[0][:10]]  # classes of the first 320 rows
    assert len(set(first_ten)) >= 5


@pytest.mark.parametrize("rows, parts, expected", [
    ([256] * 5, 5, [256] * 5),  # whole row groups: a task each
    ([3] * 470, 6, [234, 234, 237, 234, 234, 237]),  # data.limit's few rows a group: groups share a task
    ([1000, 1, 1, 1], 3, [1000, 1, 2]),  # never an empty task, whatever the sizes
    ([1, 1, 1, 1000], 3, [2, 1, 1000]),
    ([], 1, [0]),
])
def test_read_tasks_take_consecutive_row_groups_of_about_equal_rows(rows, parts, expected):
    units = [RowGroup("part-00000.parquet", group, count, 0) for group, count in enumerate(rows)]
    split = consecutive_parts(units, parts)
    assert [sum(unit.rows for unit in part) for part in split] == expected
    assert [unit for part in split for unit in part] == units  # in order, each once


@pytest.mark.slow
def test_limit_is_a_stratified_random_subset(sorted_shards):
    config = load_config(None, [f"data.path={sorted_shards}", "data.limit=100"])
    rows = limited_rows(config, read_info(sorted_shards))
    labels = split_labels(sorted_shards, "train")[rows]
    assert len(rows) == 100 and list(np.bincount(labels)) == [10] * 10
    assert np.array_equal(rows, limited_rows(config, read_info(sorted_shards)))  # seeded


@pytest.mark.slow
def test_limit_reads_only_the_chosen_rows(ray_session, sorted_shards):
    config = load_config(None, [f"data.path={sorted_shards}", "data.limit=100"])
    dataset = train_rows(config, read_info(sorted_shards), ("label",))
    labels = np.concatenate([batch["label"] for batch in dataset.iter_batches(batch_size=50)])
    assert sorted(labels) == sorted(split_labels(sorted_shards, "train")[limited_rows(config, read_info(sorted_shards))])


@pytest.mark.slow
@pytest.mark.parametrize("bank, queries", [(100, 40), (None, None)])
def test_holdout_bank_and_queries_are_stratified_and_disjoint(sorted_shards, bank, queries):
    info = read_info(sorted_shards)
    (bank_split, bank_rows), (query_split, query_rows) = eval_rows(info, sorted_shards, bank, queries)
    assert bank_split == query_split == "train" and not set(bank_rows) & set(query_rows)
    labels = split_labels(sorted_shards, "train")
    bank_counts, query_counts = np.bincount(labels[bank_rows], minlength=10), np.bincount(labels[query_rows], minlength=10)
    assert (query_counts > 0).all() and (bank_counts > 0).all()  # every query class is in the bank
    if bank is None:
        # 10 % held out: 4.8 per class, largest remainders round 8 classes up
        assert sorted(query_counts) == [4] * 2 + [5] * 8 and len(bank_rows) + len(query_rows) == 480
    else:
        assert list(bank_counts) == [10] * 10 and list(query_counts) == [4] * 10


class Shard:
    """What `started_stream` reads: an object with `iter_torch_batches` (a Ray Data shard in a Train worker)."""

    def __init__(self, items):
        self.items, self.asked, self.options = items, threading.Event(), None

    def iter_torch_batches(self, **options):
        self.options = options
        for item in self.items:
            self.asked.set()
            if isinstance(item, Exception):
                raise item
            yield item


def test_the_first_batch_is_asked_for_before_the_loop_wants_it_and_its_error_raised_where_it_is_wanted():
    shard = Shard([1, 2, 3])
    stream = started_stream(shard, batch_size=4)
    assert shard.asked.wait(5) and shard.options == {"batch_size": 4}  # before anything read the stream
    assert list(stream) == [1, 2, 3]
    assert list(started_stream(Shard([]))) == []
    failing = started_stream(Shard([ValueError("a corrupt row group")]))
    with pytest.raises(ValueError, match="a corrupt row group"):
        next(failing)
