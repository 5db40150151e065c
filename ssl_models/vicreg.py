"""VICReg (Bardes et al., 2022): invariance, variance and covariance terms on the two views' embeddings."""
import torch
from torch import nn

from ssl_models.distributed import gather_with_grad
from ssl_models.losses import vicreg_loss
from ssl_models.two_view import TwoViewMethod


class VICReg(TwoViewMethod):
    def __init__(self, backbone: nn.Module, feature_dim: int, total_steps: int, projector_hidden_dim: int = 8192,
                 projection_dim: int = 8192, projector_layers: int = 3, sim_coeff: float = 25.0,
                 std_coeff: float = 25.0, cov_coeff: float = 1.0):
        super().__init__(backbone, feature_dim, projector_hidden_dim, projection_dim, projector_layers)
        self.coefficients = (sim_coeff, std_coeff, cov_coeff)

    def pair_loss(self, z1: torch.Tensor, z2: torch.Tensor) -> dict[str, torch.Tensor]:
        # Variance and covariance are statistics of the global batch (the official code gathers too).
        return vicreg_loss(gather_with_grad(z1), gather_with_grad(z2), *self.coefficients)
