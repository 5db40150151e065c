"""Similar images among embedded ones: each query's nearest files, and near-duplicate pairs.

    python -m pipelines.embed --run NAME --source ~/pictures --out emb/pictures
    python -m pipelines.neighbours --embeddings emb/pictures/train --k 5 --duplicates 0.95
    python -m pipelines.neighbours --embeddings emb/catalogue/train --queries emb/new/train --k 3

Cosine similarity by faiss: exact up to 200,000 images, an inverted-file index above.
"""
import argparse
import sys
from typing import Optional

from pipelines.config.flags import settings_from_flags
from pipelines.config.section import ConfigError
from pipelines.evaluation.similar import SimilarSettings, similar
from pipelines.storage.files import DatasetError


def parse_args(argv) -> SimilarSettings:
    parser = argparse.ArgumentParser(prog="python -m pipelines.neighbours", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--embeddings", required=True, help="a folder pipelines.embed wrote (<out>/<split>)")
    parser.add_argument("--queries", help="another such folder to look up (default: each image of --embeddings)")
    parser.add_argument("--k", type=int, default=5, help="neighbours per query")
    parser.add_argument("--duplicates", type=float, help="also list the pairs at least this similar, e.g. 0.95")
    return settings_from_flags(SimilarSettings, vars(parser.parse_args(argv)), {})


def main(argv: Optional[list[str]] = None) -> int:
    try:
        result = similar(parse_args(argv))
    except (ConfigError, DatasetError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for query, hits in result.nearest.items():
        print(f"{query}: " + ", ".join(f"{name} {similarity:.3f}" for name, similarity in hits))
    if result.duplicates:
        print(f"\n{len(result.duplicates)} near-duplicate pair(s):")
        for first, second, similarity in result.duplicates:
            print(f"  {similarity:.3f}  {first}  {second}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
