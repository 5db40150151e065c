"""Turn Fashion-MNIST IDX files, scikit-learn's digits or a folder of images into Parquet shards.

    python -m pipelines.ingest fashion-mnist --out data/fashion_mnist
    python -m pipelines.ingest digits --out data/digits
    python -m pipelines.ingest folder --source ~/pictures --out data/pictures

    python -m pipelines.ingest folder --source s3://bucket/pictures --out s3://bucket/data/pictures

A folder may hold class sub-folders (labels are then taken from their names) and may hold
`train/` and `test/` (or `val/`) sub-folders as splits. Unreadable files are skipped,
counted and listed in `ingest_report.json`; one bad file never stops the ingest. Each split is
written in a random order drawn with `--seed`, so no shard or row group holds one class only.
The folder ingest is a streaming Ray Data job (pipelines/ingestion/folder.py): it joins RAY_ADDRESS's
cluster (or `ray job submit`'s) when there is one, else starts Ray on this machine.
"""
import argparse
import sys
from typing import Optional

from pipelines.config.flags import settings_from_flags
from pipelines.ingestion.datasets import FASHION_MNIST_DIR
from pipelines.ingestion.jobs import IngestSettings, ingest


def parse_args(argv) -> IngestSettings:
    parser = argparse.ArgumentParser(prog="python -m pipelines.ingest", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="kind", required=True)
    fmnist = sub.add_parser("fashion-mnist", help="Fashion-MNIST IDX files")
    fmnist.add_argument("--source", default=str(FASHION_MNIST_DIR), help="the folder of its IDX files")
    fmnist.add_argument("--limit", type=int, default=None, help="first N images of each split")
    digits = sub.add_parser("digits", help="scikit-learn's 8x8 handwritten digits (bundled, offline), for transfer")
    digits.add_argument("--test-fraction", type=float, default=0.2)
    folder = sub.add_parser("folder", help="a folder of images")
    folder.add_argument("--source", required=True, help="a folder, or an object-storage prefix (s3://bucket/pictures)")
    folder.add_argument("--split", default="train", help="split name when the folder has no train/test sub-folders")
    folder.add_argument("--min-size", type=int, default=8, help="skip images whose shorter side is below this (px)")
    folder.add_argument("--shorter-side", type=int, default=None,
                        help="store each image whose shorter side is longer as a copy shrunk to this (px), e.g. 320 "
                             "for 224-px training on phone photos: decoding a 12-megapixel JPEG costs more than its views")
    for each in (fmnist, digits, folder):
        each.add_argument("--out", required=True, help="output folder or URI")
        each.add_argument("--rows-per-shard", type=int, default=10_000)
        each.add_argument("--seed", type=int, default=0, help="seed of the random order rows are written in")
    folder.add_argument("--verbose", action="store_true", help="show Ray's and its workers' output here")
    return settings_from_flags(IngestSettings, vars(parser.parse_args(argv)), {})


def main(argv: Optional[list[str]] = None) -> int:
    try:
        settings = parse_args(argv)
        result = ingest(settings)
    except (FileNotFoundError, ValueError) as error:
        print(f"ingest failed: {error}", file=sys.stderr)
        return 2
    for item in result.skipped[:20]:
        print(f"  skipped {item['file']}: {item['reason']}")
    if len(result.skipped) > 20:
        print(f"  ... and {len(result.skipped) - 20} more")
    print(f"ingested {sum(result.info.splits.values())} images ({result.info.skipped} skipped) into {settings.out} "
          f"in {result.seconds:.1f}s; report: {settings.out}/ingest_report.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
