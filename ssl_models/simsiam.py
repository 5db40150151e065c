"""SimSiam (Chen & He, 2021): a predictor and a stop-gradient, no momentum encoder, no negatives."""
import torch
from torch import nn

from ssl_models.batchnorm import normalise_views_apart
from ssl_models.heads import EncoderWithPredictor, mlp_head
from ssl_models.losses import negative_cosine
from ssl_models.metrics import embedding_std
from ssl_models.method import SSLMethod


class SimSiam(SSLMethod):
    """`stop_gradient=False` or `predictor=False` are the paper's ablations: both collapse. `fix_predictor_lr`:
    the paper's fix-pred-lr (the predictor at the initial lr, no decay), which it found slightly better.
    `projector_output_affine`: an affine BatchNorm at the projector's output (the reference has none)."""

    def __init__(self, backbone: nn.Module, feature_dim: int, total_steps: int, projector_hidden_dim: int = 2048,
                 projection_dim: int = 2048, predictor_hidden_dim: int = 512, stop_gradient: bool = True,
                 predictor: bool = True, fix_predictor_lr: bool = False, projector_output_affine: bool = False):
        super().__init__()
        projector = mlp_head(feature_dim, projector_hidden_dim, projection_dim, num_layers=3, last_norm=True,
                             last_norm_affine=projector_output_affine)
        head = mlp_head(projection_dim, predictor_hidden_dim, projection_dim) if predictor else nn.Identity()
        self.network = normalise_views_apart(EncoderWithPredictor(nn.Sequential(backbone, projector), head), views=2)
        self.stop_gradient = stop_gradient
        self.fix_predictor_lr = fix_predictor_lr

    @property
    def trained(self) -> nn.Module:
        return self.network

    @property
    def backbone(self) -> nn.Module:
        return self.network.encoder[0]

    def fixed_lr_parameters(self) -> list[nn.Parameter]:
        return list(self.network.predictor.parameters()) if self.fix_predictor_lr else []

    def training_step(self, views: list[torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        predictions, projections = self.call_trained(torch.cat(views))
        p1, p2 = predictions.float().split(views[0].shape[0])
        z1, z2 = projections.float().split(views[0].shape[0])
        if self.stop_gradient:
            z1, z2 = z1.detach(), z2.detach()
        loss = negative_cosine(p1, z2) / 2 + negative_cosine(p2, z1) / 2
        return {"loss": loss, "projection_std": embedding_std(projections)}
