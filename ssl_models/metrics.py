"""Signals computed on embeddings, for logging."""
import torch
import torch.nn.functional as F


@torch.no_grad()
def embedding_std(embeddings: torch.Tensor) -> float:
    """Mean per-dimension std of L2-normalised embeddings: about 1/sqrt(dim) when healthy, 0 when collapsed."""
    return F.normalize(embeddings.float(), dim=-1).std(dim=0).mean().item()
