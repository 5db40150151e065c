"""An ingest as a notebook runs it (`python -m pipelines.ingest` parses its flags into these): typed settings in, the
dataset written and what was skipped out."""
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from pipelines.config.project import LocalOrURI
from pipelines.data.store import DatasetInfo
from pipelines.ingestion.datasets import FASHION_MNIST_DIR, ingest_digits, ingest_fashion_mnist
from pipelines.ingestion.folder import ingest_folder


class IngestSettings(BaseModel):
    """`kind`: fashion-mnist (its IDX files under `source`), digits (scikit-learn's, bundled) or folder (a folder or
    an object-storage prefix of images, class sub-folders as labels, train/ and test/ as splits)."""
    model_config = ConfigDict(extra="forbid")

    kind: Literal["fashion-mnist", "digits", "folder"]
    out: LocalOrURI = Field(description="output folder or URI")
    source: Optional[LocalOrURI] = Field(None, description="fashion-mnist: default the Debian package's folder; folder: required")
    limit: Optional[int] = Field(None, ge=1, description="fashion-mnist: the first N images of each split")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="digits: the share held out as the test split")
    split: str = Field("train", description="folder: the split's name when it has no train/test sub-folders")
    min_size: int = Field(8, ge=1, description="folder: skip images whose shorter side is below this (px)")
    shorter_side: Optional[int] = Field(None, ge=8, description="folder: store each image whose shorter side is "
                                        "longer as a copy shrunk to this many px (photos decode faster each epoch)")
    rows_per_shard: int = Field(10_000, ge=1)
    seed: int = Field(0, description="seed of the random order rows are written in")
    verbose: bool = Field(False, description="folder: show Ray's and its workers' output here")


@dataclass
class IngestResult:
    info: DatasetInfo
    seconds: float
    skipped: list[dict] = field(default_factory=list)  # folder: each file left out, with the reason


def ingest(settings: IngestSettings) -> IngestResult:
    started = time.time()
    skipped = []
    if settings.kind == "fashion-mnist":
        info = ingest_fashion_mnist(Path(settings.source) if settings.source else FASHION_MNIST_DIR, settings.out, settings.limit,
                                    settings.rows_per_shard, settings.seed)
    elif settings.kind == "digits":
        info = ingest_digits(settings.out, settings.test_fraction, settings.rows_per_shard, settings.seed)
    else:
        if not settings.source:
            raise ValueError("a folder ingest needs its source (a folder, or an object-storage prefix)")
        info, skipped = ingest_folder(settings.source, settings.out, settings.split, settings.rows_per_shard,
                                      min_size=settings.min_size, seed=settings.seed, verbose=settings.verbose,
                                      shorter_side=settings.shorter_side)
    return IngestResult(info, time.time() - started, skipped)
