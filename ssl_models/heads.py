"""Projection and prediction heads."""
from torch import nn


def mlp_head(in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2, last_norm: bool = False,
             norm: bool = True, last_norm_affine: bool = False) -> nn.Sequential:
    """Linear-BN-ReLU blocks then a plain Linear (BYOL, SimCLR, Barlow Twins, VICReg heads); `norm=False`:
    Linear-ReLU blocks (MoCo v2's head).

    `last_norm` adds a BatchNorm without affine parameters after the last Linear (SimSiam's projector output;
    with them if `last_norm_affine`).
    """
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(num_layers - 1):
        layers += [nn.Linear(dim, hidden_dim), *([nn.BatchNorm1d(hidden_dim)] if norm else []), nn.ReLU(inplace=True)]
        dim = hidden_dim
    layers.append(nn.Linear(dim, out_dim))
    if last_norm:
        layers.append(nn.BatchNorm1d(out_dim, affine=last_norm_affine))
    return nn.Sequential(*layers)


class EncoderWithPredictor(nn.Module):
    """Backbone + projector (`encoder`) followed by a predictor; returns (prediction, projection)."""

    def __init__(self, encoder: nn.Sequential, predictor: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.predictor = predictor

    def forward(self, images):
        projection = self.encoder(images)
        return self.predictor(projection), projection
