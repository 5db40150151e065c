"""Losses shared by the methods."""
import torch
import torch.nn.functional as F


def normalized_regression_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BYOL's loss: mean over the batch of ||p/|p| - z/|z|||^2 = 2 - 2 cos(p, z)."""
    return (2.0 - 2.0 * F.cosine_similarity(prediction, target.detach(), dim=-1)).mean()
