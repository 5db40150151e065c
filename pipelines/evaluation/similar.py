"""Similar images among embedded ones (`python -m pipelines.neighbours` parses its flags into these): each query's
nearest files, and the near-duplicate pairs of a set, from the Parquet folders `embed` writes."""
from dataclasses import dataclass, field
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field

from pipelines.config.project import LocalOrURI
from pipelines.evaluation.embeddings import read_embeddings, read_sources
from pipelines.features.neighbours import build_index, near_duplicates, nearest


class SimilarSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    embeddings: LocalOrURI = Field(description="a folder `embed` wrote (<out>/<split>): the set searched")
    queries: Optional[LocalOrURI] = Field(None, description="another such folder whose images are looked up; "
                                          "default: every image of the set, itself left out")
    k: int = Field(5, ge=1, description="neighbours per query")
    duplicates: Optional[float] = Field(None, gt=0, le=1, description="also list every pair of the set at least this "
                                        "similar (cosine), e.g. 0.95")


@dataclass
class SimilarResult:
    nearest: dict[str, list[tuple[str, float]]]  # each query's file: its k nearest files, most similar first
    duplicates: list[tuple[str, str, float]] = field(default_factory=list)  # pairs at or above the threshold


def files_and_vectors(folder: str):
    """(each row's file, or `row <n>` where the dataset kept none; the vectors as float32) in row order."""
    rows, _, vectors = read_embeddings(folder)
    sources = read_sources(folder)
    return [sources.get(int(row)) or f"row {int(row)}" for row in rows], vectors.numpy()


def similar(settings: SimilarSettings) -> SimilarResult:
    files, vectors = files_and_vectors(settings.embeddings)
    index = build_index(vectors)
    if settings.queries:
        query_files, queries = files_and_vectors(settings.queries)
        found = nearest(index, queries, settings.k)
    else:  # the set against itself: one more neighbour, the image itself dropped
        query_files, found = files, nearest(index, vectors, settings.k + 1)
    result = {}
    for position, query in enumerate(query_files):
        hits = [(files[i], float(similarity)) for i, similarity in zip(found.indices[position], found.similarities[position])
                if i >= 0 and not (settings.queries is None and i == position)]
        result[query] = hits[:settings.k]
    pairs = []
    if settings.duplicates:
        pairs = [(files[i], files[j], similarity) for i, j, similarity in near_duplicates(vectors, settings.duplicates)]
    return SimilarResult(result, pairs)
