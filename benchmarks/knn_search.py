"""Exact nearest-neighbour search for the kNN evaluation: the project's torch search (chunked matrix product and
top-k, pipelines/features/knn.py) against faiss's flat inner-product index, on random 512-wide embeddings.

    .venv/bin/python -m benchmarks.knn_search

Prints seconds per search at a Fashion-MNIST-sized bank (60,000 x 10,000 queries) and at a million, for k = 20
and 200 (the protocol's two), both on the same threads, index building included for faiss.
"""
import time

import faiss
import numpy as np
import torch

from pipelines.features.knn import knn_predict
from pipelines.features.neighbours import unit_rows


def main() -> None:
    torch.set_num_threads(2)
    faiss.omp_set_num_threads(2)
    rng = np.random.default_rng(0)
    for bank_size, query_size in ((60_000, 10_000), (1_000_000, 1_000)):
        bank = rng.standard_normal((bank_size, 512), dtype=np.float32)
        labels, queries = rng.integers(0, 10, bank_size), rng.standard_normal((query_size, 512), dtype=np.float32)
        for k in (20, 200):
            started = time.perf_counter()
            knn_predict(torch.from_numpy(bank), torch.from_numpy(labels), torch.from_numpy(queries), 10, k=k,
                        bank_chunk=100_000)
            torch_seconds = time.perf_counter() - started
            started = time.perf_counter()
            index = faiss.IndexFlatIP(512)
            index.add(unit_rows(bank))
            index.search(unit_rows(queries), k)
            faiss_seconds = time.perf_counter() - started
            print(f"bank {bank_size:,}, {query_size:,} queries, k={k}: torch {torch_seconds:.1f} s, faiss flat "
                  f"{faiss_seconds:.1f} s ({faiss_seconds / torch_seconds:.1f}x)", flush=True)


if __name__ == "__main__":
    main()
