"""Nearest neighbours among embeddings by cosine similarity (faiss): each query's most similar images, and the
near-duplicate pairs of a set. Exact (a flat inner-product index) up to `IVF_FROM` vectors; above, an inverted-file
index with a sixth of its lists probed per query: 95 % or more of the exact neighbours on overlapping synthetic
clusters (tests/features/test_neighbours.py), for about a sixth of the comparisons."""
from dataclasses import dataclass

import numpy as np

IVF_FROM = 200_000  # vectors; below, the exact search takes about as long as training the IVF index
IVF_PROBE_SHARE = 6  # one list in this many is probed


@dataclass
class Neighbours:
    similarities: np.ndarray  # (queries, k) cosine similarity, most similar first
    indices: np.ndarray  # (queries, k) positions in the indexed set; -1 where the set has fewer than k


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def build_index(vectors: np.ndarray, ivf_from: int = IVF_FROM):
    """A faiss index of `vectors` (rows, L2-normalised here: inner product is cosine similarity)."""
    import faiss

    vectors = unit_rows(vectors)
    count, width = vectors.shape
    if count < ivf_from:
        index = faiss.IndexFlatIP(width)
    else:
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
