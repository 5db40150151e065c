"""Weighted k-nearest-neighbour classification on frozen features (the DINO protocol)."""
import torch
import torch.nn.functional as F


@torch.no_grad()
def knn_predict(
    bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, num_classes: int,
    k: int = 20, temperature: float = 0.07, chunk: int = 1024,
) -> torch.Tensor:
    """Cosine similarity, the k most similar bank entries vote with weight exp(sim / T)."""
    bank = F.normalize(bank.float(), dim=1)
    queries = F.normalize(queries.float(), dim=1)
    k = min(k, bank.shape[0])
    predictions = []
    for start in range(0, queries.shape[0], chunk):
        similarity = queries[start : start + chunk] @ bank.T
        top_sim, top_index = similarity.topk(k, dim=1)
        weights = (top_sim / temperature).exp()
        votes = torch.zeros(similarity.shape[0], num_classes, device=bank.device)
        votes.scatter_add_(1, bank_labels[top_index], weights)
        predictions.append(votes.argmax(dim=1))
    return torch.cat(predictions)


def knn_accuracy(bank, bank_labels, queries, query_labels, num_classes, k=20, temperature=0.07) -> float:
    predicted = knn_predict(bank, bank_labels, queries, num_classes, k, temperature)
    return (predicted == query_labels).float().mean().item()
