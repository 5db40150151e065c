"""Weighted k-nearest-neighbour classification on frozen features (the DINO protocol)."""
from typing import Iterable, Optional

import torch
import torch.nn.functional as F


@torch.no_grad()
def knn_predict(
    bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, num_classes: int,
    k: int = 20, temperature: float = 0.07, chunk: int = 1024, bank_chunk: Optional[int] = None,
) -> torch.Tensor:
    """Cosine similarity, the k most similar bank entries vote with weight exp(sim / T). With `bank_chunk`
    the bank is compared a chunk at a time (the similarity matrix never spans the whole bank)."""
    size = bank_chunk or bank.shape[0]
    chunks = ((bank[start : start + size], bank_labels[start : start + size]) for start in range(0, bank.shape[0], size))
    return knn_predict_streamed(chunks, queries, num_classes, k, temperature, chunk)


@torch.no_grad()
def top_similar(queries: torch.Tensor, bank: torch.Tensor, k: int, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest inner products of each query with the bank's rows (values, bank positions), most similar
    first, `chunk` queries at a time (the similarity matrix never spans every query)."""
    found = [(queries[start : start + chunk] @ bank.T).topk(min(k, bank.shape[0]), dim=1)
             for start in range(0, queries.shape[0], chunk)]
    return torch.cat([f.values for f in found]), torch.cat([f.indices for f in found])


@torch.no_grad()
def knn_predict_streamed(bank_chunks: Iterable[tuple[torch.Tensor, torch.Tensor]], queries: torch.Tensor,
                         num_classes: int, k: int = 20, temperature: float = 0.07, chunk: int = 1024) -> torch.Tensor:
    """As `knn_predict`, with the bank given as (features, labels) chunks, read once: the k best so far are
    kept per query and merged with each chunk's."""
    queries = F.normalize(queries.float(), dim=1)
    best_sim = torch.full((queries.shape[0], 0), -2.0, device=queries.device)
    best_labels = torch.zeros((queries.shape[0], 0), dtype=torch.int64, device=queries.device)
    for features, labels in bank_chunks:
        features, labels = F.normalize(features.float().to(queries.device), dim=1), labels.to(queries.device)
        top_sim, top_index = top_similar(queries, features, k, chunk)
        merged_sim = torch.cat([best_sim, top_sim], dim=1)
        merged_labels = torch.cat([best_labels, labels[top_index]], dim=1)
        best_sim, order = merged_sim.topk(min(k, merged_sim.shape[1]), dim=1)
        best_labels = merged_labels.gather(1, order)
    votes = torch.zeros(queries.shape[0], num_classes, device=queries.device)
    votes.scatter_add_(1, best_labels, (best_sim / temperature).exp())
    return votes.argmax(dim=1)


def knn_accuracy(bank, bank_labels, queries, query_labels, num_classes, k=20, temperature=0.07,
                 bank_chunk: Optional[int] = None) -> float:
    predicted = knn_predict(bank, bank_labels, queries, num_classes, k, temperature, bank_chunk=bank_chunk)
    return (predicted == query_labels).float().mean().item()
