"""Embeddings of an ingested split, or of a folder of images, by Ray Data batch inference, written to Parquet.

    python -m pipelines.embed --weights runs/NAME/checkpoint_.../ --data data/fashion_mnist --split train --out emb/
    python -m pipelines.embed --run NAME --split test --out s3://bucket/embeddings/NAME
    python -m pipelines.embed --run NAME --source ~/pictures --out emb/pictures

A frozen backbone (backbone.safetensors + backbone.json, as pretraining exports it) is loaded once per
actor of a pool (GPU actors where the cluster has GPUs); the split streams through it and each row's
embedding is written with its label, its position in the split (`row`) and its file (`source`), so no
process ever holds the whole split. Useful on its own for near-duplicate search and data curation.
"""
import argparse
import sys
from typing import Optional

from pipelines.config.flags import settings_from_flags
from pipelines.config.section import ConfigError
from pipelines.evaluation.embeddings import EmbedSettings, embed
from pipelines.storage.files import DatasetError


def parse_args(argv) -> EmbedSettings:
    parser = argparse.ArgumentParser(prog="python -m pipelines.embed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--weights", help="folder or URI holding backbone.safetensors and backbone.json "
                        "('pixels': the raw pixels)")
    source.add_argument("--run", help="a pretraining run's name: its last checkpoint")
    parser.add_argument("--storage", help="where the run's checkpoints are (default: train.storage_path)")
    images = parser.add_mutually_exclusive_group()
    images.add_argument("--data", help="ingested dataset (default with --run: the run's data.path)")
    images.add_argument("--source", help="a folder (or object-storage prefix) of images, embedded without a separate "
                        "ingest: each vector beside its file's path")
    parser.add_argument("--split", default="train", help="the split to embed (a --source folder without train/ and "
                        "test/ sub-folders is this one split)")
    parser.add_argument("--out", required=True, help="folder or URI; the embeddings go to OUT/SPLIT/")
    parser.add_argument("--actors", type=int, default=1, help="embedding actors (one GPU each where there are GPUs)")
    parser.add_argument("--verbose", action="store_true", help="show Ray's and its workers' output here")
    return settings_from_flags(EmbedSettings, vars(parser.parse_args(argv)), {})


def main(argv: Optional[list[str]] = None) -> int:
    try:
        result = embed(parse_args(argv))
    except (ConfigError, DatasetError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"embedded {result.images} images ({result.features} features each) into {result.folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
