"""Nearest neighbours among embeddings by cosine similarity: each query's most similar images, and the near-duplicate
pairs of a set. Exact up to `IVF_FROM` vectors, by matrix products in torch (3-4x faster than faiss's flat index on
this CPU: benchmarks/knn_search.py); above, faiss's inverted-file index with a sixth of its lists probed per query:
95 % or more of the exact neighbours on overlapping synthetic clusters (tests/features/test_neighbours.py), for
about a sixth of the comparisons."""
from dataclasses import dataclass

import numpy as np

IVF_FROM = 200_000  # vectors; below, the exact search takes about as long as training the IVF index
IVF_PROBE_SHARE = 6  # one list in this many is probed
SIMILARITIES_AT_ONCE = 2**25  # floats of one query chunk's similarity matrix (128 MiB)


@dataclass
class Neighbours:
    similarities: np.ndarray  # (queries, k) cosine similarity, most similar first
    indices: np.ndarray  # (queries, k) positions in the indexed set; -1 where the set has fewer than k


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


class ExactIndex:
    """Every vector compared with each query, a chunk of queries at a time (the kNN evaluation's search); searched
    as faiss's indexes are."""

    def __init__(self, vectors: np.ndarray):
        import torch

        self.vectors = torch.from_numpy(vectors)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        import torch

        from pipelines.features.knn import top_similar

        count = len(self.vectors)
        chunk = max(1, SIMILARITIES_AT_ONCE // max(count, 1))
        values, positions = top_similar(torch.from_numpy(queries), self.vectors, k, chunk)
        similarities = np.full((len(queries), k), -np.inf, dtype=np.float32)
        indices = np.full((len(queries), k), -1, dtype=np.int64)
        similarities[:, :values.shape[1]], indices[:, :positions.shape[1]] = values.numpy(), positions.numpy()
        return similarities, indices


def build_index(vectors: np.ndarray, ivf_from: int = IVF_FROM):
    """An index of `vectors` (rows, L2-normalised here: inner product is cosine similarity): exact below
    `ivf_from` vectors, faiss's inverted file above."""
    vectors = unit_rows(vectors)
    count, width = vectors.shape
    if count < ivf_from:
        return ExactIndex(vectors)
    import faiss

    lists = int(4 * np.sqrt(count))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(width), width, lists, faiss.METRIC_INNER_PRODUCT)
    sample = vectors[np.random.default_rng(0).choice(count, min(count, 64 * lists), replace=False)]
    index.train(sample)
    index.nprobe = max(16, -(-lists // IVF_PROBE_SHARE))
    index.add(vectors)
    return index


def nearest(index, queries: np.ndarray, k: int) -> Neighbours:
    similarities, indices = index.search(unit_rows(queries), k)
    return Neighbours(similarities, indices)


def near_duplicates(vectors: np.ndarray, threshold: float) -> list[tuple[int, int, float]]:
    """Every pair (i, j, similarity), i < j, with cosine similarity at least `threshold`, most similar first (exact)."""
    import faiss

    vectors = unit_rows(vectors)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    limits, similarities, found = index.range_search(vectors, threshold)
    pairs = []
    for query in range(len(vectors)):
        for position in range(limits[query], limits[query + 1]):
            if found[position] > query:
                pairs.append((query, int(found[position]), float(similarities[position])))
    return sorted(pairs, key=lambda pair: -pair[2])
