"""Embeddings of an ingested split by Ray Data batch inference, written to Parquet (`python -m pipelines.embed`).

A frozen backbone (backbone.safetensors + backbone.json, as pretraining exports it) is loaded once per
actor of a pool (GPU actors where the cluster has GPUs); the split streams through it and each row's
embedding is written with its label, its position in the split (`row`) and the file the ingest read it from
(`source`), so no process ever holds the whole split (a small one, on one machine, is embedded by the calling
process: `IN_PROCESS_BYTES`). Useful on its own for near-duplicate search and data curation.
"""
import json
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from pydantic import Field, model_validator
from torch import nn

from pipelines.config.project import LocalOrURI
from pipelines.data.store import DatasetInfo, read_info, read_rows, split_files
from pipelines.features.extract import Normalizer, decode_for_eval, extract_features
from pipelines.storage.export import META_FILE, WEIGHTS_FILE, load_backbone
from pipelines.storage.files import DatasetError, filesystem, read_bytes, remove_folder
from pipelines.storage.runs import RunOrWeights, resolve_source
from pipelines.training.driver import torch_threads

EMBED_BATCH = 256
READ_CPUS = 0.25


# Fewer pixels than this (about 5,000 images of 28 px, 80 of 224 px) embed in the calling process in less time than
# a Ray Data job takes to start its reader and a fresh actor (about 6 s a split on 2 CPUs, mostly importing torch
# and timm): the end of a small run, a study row, a sweep trial, a test.
IN_PROCESS_PIXELS = 1 << 22
# On one CPU-only machine with one actor asked for, a split whose stored images take less than this is also read
# whole by the calling process (its bytes, not its pixels: a batch is decoded at a time): Fashion-MNIST's 70,000
# images (40 MB) embed there in 26-29 s against 42-43 s through Ray Data on 2 cores (BENCHMARKS,
# "Embeddings"). Larger splits, more actors, GPUs or nodes: Ray Data, whose driver never holds the split.
IN_PROCESS_BYTES = 256 << 20
PIXELS = "pixels"  # as --weights: the raw pixels (normalised, flattened), the baseline any backbone must beat
# what an embedding keeps of its image's row: its label and its file (the path the ingest read it from; for
# Fashion-MNIST and digits, the source file and the image's index in it)
EMBEDDED_COLUMNS = ("image", "label", "source")


class Embedder:
    """Ray Data actor: decodes a batch as evaluation does (resize, centre crop), embeds it with the backbone."""

    def __init__(self, weights: str, channels: int, meta: dict, threads: int = 1):
        torch.set_num_threads(threads)
        self.meta = meta
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.backbone = (nn.Flatten() if weights == PIXELS else
                         load_backbone(read_bytes(f"{weights}/{WEIGHTS_FILE}"), meta).to(self.device))
        self.normalize = Normalizer(self.meta["mean"], self.meta["std"], self.device)
        self.channels = channels

    def __call__(self, batch: pa.Table) -> pa.Table:
        images, kept = decode_for_eval(batch["image"].to_pylist(), self.channels, self.meta["image_size"])
        if not images:
            return empty_embeddings(self.meta["feature_dim"])
        features = extract_features(self.backbone, torch.from_numpy(np.stack(images)), self.normalize, len(images))
        return pa.table({"row": batch["row"].take(kept), "label": batch["label"].take(kept),
                         "source": batch["source"].take(kept), "embedding": embedding_array(features.cpu().numpy())})


def embedding_array(features: np.ndarray) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(features.astype(np.float32).reshape(-1)), features.shape[1])


def empty_embeddings(width: int) -> pa.Table:
    return pa.table({"row": pa.array([], pa.int64()), "label": pa.array([], pa.int32()),
                     "source": pa.array([], pa.string()), "embedding": embedding_array(np.zeros((0, width), np.float32))})


def weights_meta(weights: str, info: DatasetInfo) -> dict:
    if weights == PIXELS:
        size = info.min_side or 32
        return {"timm_kwargs": {"in_chans": info.channels}, "mean": info.mean, "std": info.std, "image_size": size,
                "feature_dim": info.channels * size * size}
    try:
        return json.loads(read_bytes(f"{weights}/{META_FILE}"))
    except (FileNotFoundError, OSError):
        raise DatasetError(f"no backbone at '{weights}' (expected {WEIGHTS_FILE} and {META_FILE} there, as a "
                           "pretraining's checkpoint or its MLflow artifact 'backbone' holds them)") from None


def check_compatible(meta: dict, info: DatasetInfo, data: str) -> None:
    """Weights trained on grey images cannot embed colour ones (and the other way round)."""
    expected = meta.get("timm_kwargs", {}).get("in_chans", 3)
    if expected != info.channels:
        raise DatasetError(f"the weights take {expected}-channel images but '{data}' holds {info.channels}-channel "
                           "ones: embed a dataset ingested like the one they were trained on")


def embed_split(weights: str, data: str, split: str, out: str, actors: int = 1, batch_size: int = EMBED_BATCH,
                use_gpu: Optional[bool] = None, rows: Optional[np.ndarray] = None,
                in_process: Optional[bool] = None) -> str:
    """Writes `<out>/<split>/*.parquet` (row, label, source, embedding) and returns that folder; with `rows` (sorted
    positions in the split) only those rows are read and embedded. `in_process`: by the calling process instead
    of a Ray Data job (default: when the images hold under IN_PROCESS_PIXELS pixels, or on one CPU-only machine
    with one actor asked for, when the split's files hold under IN_PROCESS_BYTES)."""
    import ray

    info = read_info(data)
    if split not in info.splits:
        raise DatasetError(f"'{data}' has no split '{split}' (it has {', '.join(info.splits)})")
    meta = weights_meta(weights, info)
    check_compatible(meta, info, data)
    folder = f"{out.rstrip('/')}/{split}"
    fs, path = filesystem(folder)
    fs.create_dir(path, recursive=True)
    count = info.splits[split] if rows is None else len(rows)
    if in_process is None:
        in_process = (count * meta["image_size"] ** 2 < IN_PROCESS_PIXELS
                      or actors == 1 and one_cpu_machine() and stored_bytes(data, split) < IN_PROCESS_BYTES)
    if in_process:
        embed_here(Embedder(weights, info.channels, meta, threads=torch.get_num_threads()), data, split,
                   np.arange(info.splits[split]) if rows is None else rows, batch_size, folder)
        return folder
    if use_gpu is None:
        use_gpu = ray.cluster_resources().get("GPU", 0) > 0
    from pipelines.data.row_groups import ShuffledRowGroups

    threads = torch_threads(actors)
    # the actors must leave room for the read tasks, or a small machine deadlocks
    actor_cpus = 0 if use_gpu else min(1.0, (ray.cluster_resources().get("CPU", 1) - READ_CPUS) / actors)
    dataset = ray.data.read_datasource(ShuffledRowGroups(split_files(data, split), list(EMBEDDED_COLUMNS), seed=0,
                                                         rows=rows, row_ids=True), num_cpus=READ_CPUS)
    embedded = dataset.map_batches(
        Embedder, fn_constructor_kwargs={"weights": weights, "channels": info.channels, "meta": meta, "threads": threads},
        batch_size=batch_size, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=actors),
        num_gpus=1 if use_gpu else 0, num_cpus=actor_cpus)
    embedded.write_parquet(folder)
    return folder


def one_cpu_machine() -> bool:
    """The Ray cluster is one node with no GPU (the calling process's cores are all there is); without a Ray yet,
    this machine without a GPU (Ray Data would start a local Ray here)."""
    import ray

    if not ray.is_initialized():
        return not torch.cuda.is_available()
    return len([node for node in ray.nodes() if node["Alive"]]) == 1 and not ray.cluster_resources().get("GPU", 0)


def stored_bytes(data: str, split: str) -> int:
    """The size of the split's Parquet files."""
    files = split_files(data, split)
    fs, _ = filesystem(files[0])
    return sum(info.size for info in fs.get_file_info([filesystem(uri)[1] for uri in files]))


def embed_here(embedder: Embedder, data: str, split: str, rows: np.ndarray, batch_size: int, folder: str) -> None:
    """What the Ray Data job does, in this process: the rows read, embedded a batch at a time, one Parquet file."""
    table = read_rows(data, split, rows, EMBEDDED_COLUMNS)  # small by IN_PROCESS_*: read once
    table = table.append_column("row", pa.array(rows[:len(table)], pa.int64()))
    parts = [embedder(table.slice(start, batch_size)) for start in range(0, len(table), batch_size)]
    fs, path = filesystem(folder)
    pq.write_table(pa.concat_tables(parts) if parts else empty_embeddings(embedder.meta["feature_dim"]),
                   f"{path}/embeddings.parquet", filesystem=fs)


def read_sources(folder: str) -> dict[int, str]:
    """{row: the file its image came from} of a folder `embed_split` wrote."""
    fs, path = filesystem(folder)
    table = pq.read_table(path, filesystem=fs, columns=["row", "source"])
    return dict(zip(table["row"].to_pylist(), table["source"].to_pylist()))


def read_embeddings(folder: str) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """(rows, labels, embeddings) of a folder `embed_split` wrote, in row order."""
    fs, path = filesystem(folder)
    table = pq.read_table(path, filesystem=fs).sort_by("row")
    width = table.schema.field("embedding").type.list_size
    flat = table["embedding"].combine_chunks().flatten().to_numpy()
    labels = table["label"].fill_null(-1).to_numpy()
    return table["row"].to_numpy(), labels, torch.from_numpy(flat.reshape(-1, width).copy())


class BackboneSource(RunOrWeights):
    """Which backbone and data a job reads: `run` (a pretraining run's name: its last checkpoint under `storage`, its
    data) or `weights` (a folder or URI with backbone.safetensors and backbone.json, or 'pixels'), and `data` (an
    ingested dataset; default with `run`: the run's)."""
    weights: Optional[str] = None  # 'pixels' is no path
    data: Optional[LocalOrURI] = None


class EmbedSettings(BackboneSource):
    """What `python -m pipelines.embed` takes, each field its flag: the backbone and data (or `source`, a folder of
    images embedded without a separate ingest), the split, and where the embeddings go (`out`/<split>/)."""
    source: Optional[LocalOrURI] = Field(None, description="a folder or bucket of images: ingested into "
                                         "<out>/.ingested for this embedding, then removed")
    split: str = "train"
    out: LocalOrURI
    actors: int = Field(1, ge=1, description="embedding actors (one GPU each where there are GPUs)")
    verbose: bool = Field(False, description="show Ray's and its workers' output here")

    @model_validator(mode="after")
    def _data_or_source(self) -> "EmbedSettings":
        if self.source and self.data:
            raise ValueError("give the images as data (an ingested dataset) or as source (a folder), not both")
        return self


@dataclass
class EmbedResult:
    folder: str  # <out>/<split>: Parquet files of (row, label, source, embedding)
    images: int
    features: int  # the width of each embedding


def embed(settings: EmbedSettings) -> EmbedResult:
    """Embeds one split with a Ray Data job (joining RAY_ADDRESS's cluster, else starting Ray here); a `source`
    folder is ingested first into <out>/.ingested, removed after (its files' paths kept in the `source` column)."""
    from pipelines.cluster.start import start_ray

    start_ray(settings.verbose)
    # beside the output, not in a local temporary folder: on a cluster the embedding actors read it from other nodes
    ingested = f"{settings.out.rstrip('/')}/.ingested" if settings.source else None
    try:
        if ingested:
            from pipelines.ingestion.folder import ingest_folder

            remove_folder(ingested)  # the command's own: a process killed before its end left it
            ingest_folder(settings.source, ingested, settings.split, verbose=settings.verbose)
        weights, data = resolve_source(settings.weights, settings.run, settings.storage, ingested or settings.data)
        folder = embed_split(weights, data, settings.split, settings.out, settings.actors)
    finally:
        if ingested:
            remove_folder(ingested)
    rows, _, embeddings = read_embeddings(folder)
    return EmbedResult(folder, len(rows), embeddings.shape[1])
