"""SimCLR (Chen et al., 2020): NT-Xent over the whole global batch, negatives from every worker."""
import torch
from torch import nn

from ssl_models.distributed import gather_with_grad, world
from ssl_models.losses import nt_xent
from ssl_models.two_view import TwoViewMethod


class SimCLR(TwoViewMethod):
    views_apart_in_batchnorm = False  # its reference normalises both views as one batch

    def __init__(self, backbone: nn.Module, feature_dim: int, total_steps: int, projector_hidden_dim: int = 2048,
                 projection_dim: int = 128, projector_layers: int = 2, temperature: float = 0.2):
        super().__init__(backbone, feature_dim, projector_hidden_dim, projection_dim, projector_layers)
        self.temperature = temperature

    def pair_loss(self, z1: torch.Tensor, z2: torch.Tensor) -> dict[str, torch.Tensor]:
        rank, _ = world()
        loss = nt_xent(z1, z2, self.temperature, gather_with_grad(z1), gather_with_grad(z2), rank)
        return {"loss": loss}
