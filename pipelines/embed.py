"""Embeddings of an ingested split by Ray Data batch inference, written to Parquet.

    python -m pipelines.embed --weights runs/NAME/checkpoint_.../ --data data/fashion_mnist --split train --out emb/
    python -m pipelines.embed --run NAME --split test --out s3://bucket/embeddings/NAME

A frozen backbone (backbone.safetensors + backbone.json, as pretraining exports it) is loaded once per
actor of a pool (GPU actors where the cluster has GPUs); the split streams through it and each row's
embedding is written with its label and its position in the split (`row`), so no process ever holds
the whole split. Useful on its own for near-duplicate search and data curation.
"""
import argparse
import sys
from typing import Optional

from pipelines.evaluation.embeddings import embed_split, read_embeddings
from pipelines.storage.files import DatasetError


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.embed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--weights", help="folder or URI holding backbone.safetensors and backbone.json "
                        "('pixels': the raw pixels)")
    source.add_argument("--run", help="a pretraining run's name: its last checkpoint")
    parser.add_argument("--storage", help="where the run's checkpoints are (default: train.storage_path)")
    parser.add_argument("--data", help="ingested dataset (default with --run: the run's data.path)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--out", required=True, help="folder or URI; the embeddings go to OUT/SPLIT/")
    parser.add_argument("--actors", type=int, default=1, help="embedding actors (one GPU each where there are GPUs)")
    parser.add_argument("--verbose", action="store_true", help="show Ray's and its workers' output here")
    args = parser.parse_args(argv)
    from pipelines.cluster.start import start_ray
    from pipelines.storage.runs import resolve_source

    try:
        weights, data = resolve_source(args.weights, args.run, args.storage, args.data)
        start_ray(args.verbose)
        folder = embed_split(weights, data, args.split, args.out, args.actors)
    except (DatasetError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    rows, _, embeddings = read_embeddings(folder)
    print(f"embedded {len(rows)} images of '{args.split}' ({embeddings.shape[1]} features each) into {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
