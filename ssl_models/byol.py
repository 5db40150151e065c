"""BYOL (Grill et al., 2020): an online network predicts an EMA target network's projection of another view."""
import torch
from torch import nn

from ssl_models.batchnorm import normalise_views_apart
from ssl_models.ema import ema_step, frozen_copy
from ssl_models.heads import EncoderWithPredictor, mlp_head
from ssl_models.losses import normalized_regression_loss
from ssl_models.metrics import embedding_std
from ssl_models.method import SSLMethod
from ssl_models.schedules import cosine_schedule


class BYOL(SSLMethod):
    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        total_steps: int,
        projector_hidden_dim: int = 4096,
        projection_dim: int = 256,
        predictor_hidden_dim: int = 4096,
        momentum_start: float = 0.99,
        momentum_end: float = 1.0,
    ):
        super().__init__()
        encoder = nn.Sequential(backbone, mlp_head(feature_dim, projector_hidden_dim, projection_dim))
        self.online = normalise_views_apart(
            EncoderWithPredictor(encoder, mlp_head(projection_dim, predictor_hidden_dim, projection_dim)), views=2)
        self.target = frozen_copy(self.online.encoder)
        self.momentum_schedule = cosine_schedule(momentum_start, momentum_end, total_steps)

    @property
    def trained(self) -> nn.Module:
        return self.online

    @property
    def backbone(self) -> nn.Module:
        return self.online.encoder[0]

    def training_step(self, views: list[torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        batch = views[0].shape[0]
        predictions, projections = self.call_trained(torch.cat(views))
        with torch.no_grad():
            targets = self.target(torch.cat(views))
        p1, p2 = predictions.float().split(batch)
        t1, t2 = targets.float().split(batch)
        loss = normalized_regression_loss(p1, t2) + normalized_regression_loss(p2, t1)
        return {"loss": loss, "projection_std": embedding_std(projections)}

    def after_optimizer_step(self, step: int) -> dict[str, float]:
        return ema_step(self.target, self.online.encoder, self.momentum_schedule, step)
