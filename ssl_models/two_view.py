"""The shape shared by SimCLR, Barlow Twins and VICReg: one encoder embeds both views (one call on the views
concatenated), a loss compares them."""
import torch
from torch import nn

from ssl_models.batchnorm import normalise_views_apart
from ssl_models.heads import mlp_head
from ssl_models.metrics import embedding_std
from ssl_models.method import SSLMethod


class TwoViewMethod(SSLMethod):
    views_apart_in_batchnorm = True  # each view its own BatchNorm batch (Barlow Twins', VICReg's references)

    def __init__(self, backbone: nn.Module, feature_dim: int, projector_hidden_dim: int, projection_dim: int,
                 projector_layers: int):
        super().__init__()
        projector = mlp_head(feature_dim, projector_hidden_dim, projection_dim, projector_layers)
        self.encoder = nn.Sequential(backbone, projector)
        if self.views_apart_in_batchnorm:
            normalise_views_apart(self.encoder, views=2)

    @property
    def trained(self) -> nn.Module:
        return self.encoder

    @property
    def backbone(self) -> nn.Module:
        return self.encoder[0]

    def pair_loss(self, z1: torch.Tensor, z2: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def training_step(self, views: list[torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        projections = self.call_trained(torch.cat(views))
        z1, z2 = projections.float().split(views[0].shape[0])
        return {**self.pair_loss(z1, z2), "projection_std": embedding_std(projections)}
