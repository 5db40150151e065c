"""Knowledge distillation: a smaller student learns from a frozen teacher (DINOv2's distillation, LightlyTrain's
default). Both see the same view by default (knowledge distillation); `views="different"` gives each its own view,
student and teacher swapped, as self-distillation does.

Losses: the student's features through a small projector against the teacher's features (cosine or smooth L1),
and, when the teacher has a DINO head, DINO's cross-entropy between the teacher's centred, sharpened head output
and a head of the student's. An EMA of the student backbone is what gets evaluated and exported (DINOv2's choice).
"""
from typing import NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ssl_models.dino import DINOHead, entropy
from ssl_models.dinov2 import sinkhorn_knopp
from ssl_models.ema import ema_step, frozen_copy
from ssl_models.metrics import embedding_std
from ssl_models.method import SSLMethod
from ssl_models.schedules import cosine_schedule


def per_channel(values: Sequence[float], channels: int) -> torch.Tensor:
    """One value per channel; a single value (grey statistics) repeated."""
    tensor = torch.tensor(list(values), dtype=torch.float32)
    return tensor.expand(channels).clone() if tensor.numel() == 1 else tensor


class TeacherInput(nn.Module):
    """Views standardised with the data's statistics, re-standardised with the teacher's, grey repeated to the
    teacher's channels, resized to the teacher's image size (None: as they come)."""

    def __init__(self, data_mean: Sequence[float], data_std: Sequence[float], teacher_mean: Sequence[float],
                 teacher_std: Sequence[float], channels: int, image_size: Optional[int] = None):
        super().__init__()
        data_mean, data_std = per_channel(data_mean, channels), per_channel(data_std, channels)
        teacher_mean, teacher_std = per_channel(teacher_mean, channels), per_channel(teacher_std, channels)
        shape = (1, channels, 1, 1)
        self.register_buffer("scale", (data_std / teacher_std).reshape(shape), persistent=False)
        self.register_buffer("shift", ((data_mean - teacher_mean) / teacher_std).reshape(shape), persistent=False)
        self.channels, self.image_size = channels, image_size

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        if views.shape[1] != self.channels:
            views = views.expand(-1, self.channels, -1, -1)
        views = views * self.scale + self.shift
        if self.image_size and views.shape[-2:] != (self.image_size, self.image_size):
            views = F.interpolate(views, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return views


class FrozenTeacher(nn.Module):
    """The teacher's backbone (and DINO head with its last centre, where it has one), always in eval mode,
    never trained."""

    def __init__(self, backbone: nn.Module, feature_dim: int, head: Optional[nn.Module] = None,
                 center: Optional[torch.Tensor] = None, temperature: float = 0.04,
                 adapt: nn.Module = nn.Identity(), sinkhorn_iterations: Optional[int] = None):
        """`sinkhorn_iterations`: the head's outputs centred as a DINOv2 teacher trained with Sinkhorn-Knopp centres
        them (over the batch), not by `center` (DINO's, which Sinkhorn-Knopp training leaves at zero)."""
        super().__init__()
        self.backbone, self.head, self.adapt = backbone, head, adapt
        self.feature_dim, self.temperature, self.sinkhorn_iterations = feature_dim, temperature, sinkhorn_iterations
        if head is not None:
            out_dim = head.last_layer.out_features
            self.register_buffer("center", torch.zeros(1, out_dim) if center is None else center.reshape(1, out_dim))
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "FrozenTeacher":
        return super().train(False)

    @torch.no_grad()
    def forward(self, views: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(features, head probabilities or None)."""
        features = self.backbone(self.adapt(views)).float()
        if self.head is None:
            return features, None
        scores = self.head(features).float()
        if self.sinkhorn_iterations:
            return features, sinkhorn_knopp(scores, self.temperature, self.sinkhorn_iterations)
        return features, F.softmax((scores - self.center) / self.temperature, dim=-1)


class StudentOutputs(NamedTuple):
    projected: torch.Tensor  # the features through the projector, in the teacher's feature width
    scores: Optional[torch.Tensor]  # the student's head output (teachers with a head)


class Student(nn.Module):
    def __init__(self, backbone: nn.Module, projector: nn.Module, head: Optional[nn.Module]):
        super().__init__()
        self.backbone, self.projector, self.head = backbone, projector, head

    def forward(self, views: torch.Tensor) -> StudentOutputs:
        features = self.backbone(views)
        return StudentOutputs(self.projector(features), self.head(features) if self.head is not None else None)


def feature_loss(projected: torch.Tensor, teacher: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "cosine":
        return 1 - F.cosine_similarity(projected, teacher, dim=-1).mean()
    return F.smooth_l1_loss(projected, teacher)


class Distill(SSLMethod):
    def __init__(self, backbone: nn.Module, feature_dim: int, total_steps: int, teacher: FrozenTeacher,
                 projector_hidden_dim: int = 2048, head_hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 loss: str = "cosine", views: str = "same", head_loss_weight: float = 1.0,
                 student_temperature: float = 0.1, momentum_start: float = 0.996, momentum_end: float = 1.0):
        super().__init__()
        projector = nn.Sequential(nn.Linear(feature_dim, projector_hidden_dim), nn.GELU(),
                                  nn.Linear(projector_hidden_dim, teacher.feature_dim))
        head = None
        if teacher.head is not None:
            head = DINOHead(feature_dim, teacher.head.last_layer.out_features, head_hidden_dim, bottleneck_dim)
        self.student = Student(backbone, projector, head)
        self.student_ema = frozen_copy(backbone)
        self.teacher = teacher
        self.num_views = 1 if views == "same" else 2
        self.loss_kind, self.head_loss_weight, self.student_temperature = loss, head_loss_weight, student_temperature
        self.momentum_schedule = cosine_schedule(momentum_start, momentum_end, total_steps)

    @property
    def trained(self) -> nn.Module:
        return self.student

    @property
    def backbone(self) -> nn.Module:
        return self.student_ema

    def state_dict(self, *args, **kwargs):
        """Without the frozen teacher: each worker loads it from its source, and it would double a checkpoint."""
        state = super().state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", args[1] if len(args) > 1 else "")
        for key in [key for key in state if key.startswith(f"{prefix}teacher.")]:
            del state[key]
        return state

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        whole = {**state_dict, **{f"teacher.{key}": value for key, value in self.teacher.state_dict().items()}}
        return super().load_state_dict(whole, strict, assign)

    def train(self, mode: bool = True) -> "Distill":
        super().train(mode)
        self.teacher.eval()
        return self

    def training_step(self, views: list[torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        batch = torch.cat(views)
        teacher_features, teacher_probs = self.teacher(batch)
        student = self.call_trained(batch)
        # (student view, teacher view): the same view, or each view against the other's
        pairs = [(0, 0)] if len(views) == 1 else [(0, 1), (1, 0)]
        projected, target = student.projected.float().chunk(len(views)), teacher_features.chunk(len(views))
        terms = {"feature_loss": sum(feature_loss(projected[s], target[t], self.loss_kind) for s, t in pairs) / len(pairs)}
        loss = terms["feature_loss"]
        if student.scores is not None:
            log_p = F.log_softmax(student.scores.float() / self.student_temperature, dim=-1).chunk(len(views))
            probs = teacher_probs.chunk(len(views))
            terms["head_loss"] = sum(-(probs[t] * log_p[s]).sum(-1).mean() for s, t in pairs) / len(pairs)
            terms["teacher_entropy"] = entropy(teacher_probs)
            loss = loss + self.head_loss_weight * terms["head_loss"]
        cosine = F.cosine_similarity(student.projected.float(), teacher_features, dim=-1).mean()
        return {"loss": loss, **{name: value.detach() for name, value in terms.items()},
                "teacher_cosine": cosine.detach(), "projection_std": embedding_std(student.projected.float())}

    def after_optimizer_step(self, step: int) -> dict[str, float]:
        return ema_step(self.student_ema, self.student.backbone, self.momentum_schedule, step)
