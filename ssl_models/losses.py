"""Losses of the methods, each a plain function of embeddings (distributed gathering is the caller's)."""
import torch
import torch.nn.functional as F


def normalized_regression_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BYOL's loss: mean over the batch of ||p/|p| - z/|z|||^2 = 2 - 2 cos(p, z)."""
    return (2.0 - 2.0 * F.cosine_similarity(prediction, target.detach(), dim=-1)).mean()


def negative_cosine(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SimSiam's D(p, z) = -cos(p, z), batch mean. Stop-gradient, where wanted, is the caller's."""
    return -F.cosine_similarity(prediction, target, dim=-1).mean()


def info_nce(queries: torch.Tensor, keys: torch.Tensor, positives: torch.Tensor, temperature: float,
             exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of each query against all keys, the key at `positives[i]` being the right one.

    `exclude[i]`, when given, is a key index that query i must not be compared with (itself).
    """
    logits = F.normalize(queries, dim=1) @ F.normalize(keys, dim=1).T / temperature
    if exclude is not None:
        logits[torch.arange(len(queries), device=logits.device), exclude] = float("-inf")
    return F.cross_entropy(logits, positives)


def queue_info_nce(queries: torch.Tensor, keys: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo's InfoNCE: query i against its own key (the positive) and every queued key (negatives)."""
    queries = F.normalize(queries, dim=1)
    positive = (queries * F.normalize(keys, dim=1)).sum(1, keepdim=True)
    logits = torch.cat([positive, queries @ F.normalize(queue, dim=1).T], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(queries), dtype=torch.long, device=queries.device))


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float, all_z1: torch.Tensor = None,
            all_z2: torch.Tensor = None, rank: int = 0) -> torch.Tensor:
    """SimCLR's NT-Xent: each of the 2B local embeddings against the 2N of the global batch minus itself.

    `all_z1`/`all_z2` are the views of every worker concatenated in rank order (default: the local ones).
    """
    all_z1 = z1 if all_z1 is None else all_z1
    all_z2 = z2 if all_z2 is None else all_z2
    batch, total = z1.shape[0], all_z1.shape[0]
    local = torch.arange(batch, device=z1.device) + rank * batch
    keys = torch.cat([all_z1, all_z2])
    queries = torch.cat([z1, z2])
    positives = torch.cat([local + total, local])
    itself = torch.cat([local, local + total])
    return info_nce(queries, keys, positives, temperature, exclude=itself)


def off_diagonal(matrix: torch.Tensor) -> torch.Tensor:
    n = matrix.shape[0]
    return matrix.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float) -> torch.Tensor:
    """Cross-correlation of the batch-standardised embeddings pushed to the identity matrix."""
    n = z1.shape[0]
    z1 = (z1 - z1.mean(0)) / z1.std(0, unbiased=False).clamp_min(1e-6)
    z2 = (z2 - z2.mean(0)) / z2.std(0, unbiased=False).clamp_min(1e-6)
    correlation = z1.T @ z2 / n
    on_diag = (torch.diagonal(correlation) - 1).pow(2).sum()
    return on_diag + lambd * off_diagonal(correlation).pow(2).sum()


def vicreg_loss(z1: torch.Tensor, z2: torch.Tensor, sim_coeff: float, std_coeff: float, cov_coeff: float,
                eps: float = 1e-4) -> dict[str, torch.Tensor]:
    """Invariance (MSE), variance (hinge on each dimension's std at 1) and covariance (off-diagonal) terms."""
    n, dim = z1.shape
    invariance = F.mse_loss(z1, z2)
    z1, z2 = z1 - z1.mean(0), z2 - z2.mean(0)
    std1, std2 = (z1.var(0) + eps).sqrt(), (z2.var(0) + eps).sqrt()
    variance = (F.relu(1 - std1).mean() + F.relu(1 - std2).mean()) / 2
    cov1, cov2 = z1.T @ z1 / (n - 1), z2.T @ z2 / (n - 1)
    covariance = off_diagonal(cov1).pow(2).sum() / dim + off_diagonal(cov2).pow(2).sum() / dim
    loss = sim_coeff * invariance + std_coeff * variance + cov_coeff * covariance
    return {"loss": loss, "invariance": invariance.detach(), "variance": variance.detach(),
            "covariance": covariance.detach()}
