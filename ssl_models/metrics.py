"""Signals computed on embeddings, for logging."""
import torch
import torch.nn.functional as F


@torch.no_grad()
def embedding_std(embeddings: torch.Tensor) -> torch.Tensor:
    """Mean per-dimension std of L2-normalised embeddings: about 1/sqrt(dim) when healthy, 0 when collapsed.
    A 0-d tensor on the embeddings' device (no host sync)."""
    return F.normalize(embeddings.float(), dim=-1).std(dim=0).mean()
