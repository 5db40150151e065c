"""Barlow Twins (Zbontar et al., 2021): the cross-correlation of the two views' embeddings made the identity."""
import torch
from torch import nn

from ssl_models.distributed import gather_with_grad
from ssl_models.losses import barlow_twins_loss
from ssl_models.two_view import TwoViewMethod


class BarlowTwins(TwoViewMethod):
    def __init__(self, backbone: nn.Module, feature_dim: int, total_steps: int, projector_hidden_dim: int = 8192,
                 projection_dim: int = 8192, projector_layers: int = 3, lambd: float = 0.0051):
        super().__init__(backbone, feature_dim, projector_hidden_dim, projection_dim, projector_layers)
        self.lambd = lambd

    def pair_loss(self, z1: torch.Tensor, z2: torch.Tensor) -> dict[str, torch.Tensor]:
        # The correlation matrix is computed over the global batch, as in the paper's all-reduced version.
        return {"loss": barlow_twins_loss(gather_with_grad(z1), gather_with_grad(z2), self.lambd)}
