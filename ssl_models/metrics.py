"""Signals computed on embeddings, for logging: collapse, and label-free measures of their quality."""
import torch
import torch.nn.functional as F


@torch.no_grad()
def embedding_std(embeddings: torch.Tensor) -> torch.Tensor:
    """Mean per-dimension std of L2-normalised embeddings: about 1/sqrt(dim) when healthy, 0 when collapsed.
    A 0-d tensor on the embeddings' device (no host sync)."""
    return F.normalize(embeddings.float(), dim=-1).std(dim=0).mean()


@torch.no_grad()
def effective_rank(embeddings: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """RankMe (Garrido et al., ICML 2023): exp of the entropy of the normalised singular values of the (N, D)
    embeddings; from 1 (collapsed to a line) to min(N, D) (every direction used alike). Needs no labels."""
    singular = torch.linalg.svdvals(embeddings.float())
    p = singular / singular.sum() + eps
    return torch.exp(-(p * p.log()).sum())


@torch.no_grad()
def uniformity(embeddings: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    """Wang and Isola (ICML 2020): log of the mean Gaussian potential exp(-t |u - v|^2) over pairs of the
    L2-normalised embeddings; 0 when collapsed to a point, lower (about -4 at t = 2 on a sphere of many
    dimensions) as they spread."""
    normalised = F.normalize(embeddings.float(), dim=-1)
    return torch.pdist(normalised).pow(2).mul(-t).exp().mean().log()


@torch.no_grad()
def alignment(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Wang and Isola: the mean squared distance between the L2-normalised embeddings of two views of the same
    images (row i of each); 0 when the views agree, up to 4."""
    return (F.normalize(first.float(), dim=-1) - F.normalize(second.float(), dim=-1)).pow(2).sum(dim=-1).mean()
