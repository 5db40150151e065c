"""DINO (Caron et al., 2021): a student matches an EMA teacher's centred, sharpened output across crops."""
import torch
import torch.distributed as dist
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from ssl_models.distributed import world
from ssl_models.ema import ema_step, frozen_copy
from ssl_models.metrics import embedding_std
from ssl_models.method import SSLMethod
from ssl_models.schedules import cosine_schedule, value_at


def init_linears(mlp: nn.Sequential) -> nn.Sequential:
    for layer in mlp:  # the reference's initialisation (the head's last layer keeps PyTorch's)
        if isinstance(layer, nn.Linear):
            trunc_normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)
    return mlp


class DINOHead(nn.Module):
    """3-layer MLP (GELU) to a bottleneck, L2-normalised, then a weight-normed linear layer of out_dim.
    `predictor` (the paper's ablation, student only): a 2-layer MLP on the bottleneck before the normalisation."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 trainable_scale: bool = False):
        """`trainable_scale`: the weight norm's scale (its `g`, starting at 1) trains, as in DINOv2; DINO freezes it."""
        super().__init__()
        self.mlp = init_linears(nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, hidden_dim),
                                              nn.GELU(), nn.Linear(hidden_dim, bottleneck_dim)))
        self.predictor: nn.Module = nn.Identity()
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        self.last_layer.parametrizations.weight.original0.data.fill_(1.0)
        self.last_layer.parametrizations.weight.original0.requires_grad_(trainable_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.predictor(self.mlp(x)), dim=-1))


class MultiCropNetwork(nn.Module):
    """Backbone + head over a list of crops: one backbone pass per run of crops sharing a resolution."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, crops: list[torch.Tensor]) -> torch.Tensor:
        features, start = [], 0
        while start < len(crops):
            end = start
            while end < len(crops) and crops[end].shape[-1] == crops[start].shape[-1]:
                end += 1
            features.append(self.backbone(torch.cat(crops[start:end])))
            start = end
        return self.head(torch.cat(features))


def teacher_temperature_schedule(warmup: float, final: float, warmup_steps: int, total_steps: int) -> torch.Tensor:
    ramp = torch.linspace(warmup, final, max(warmup_steps, 1), dtype=torch.float64)[:warmup_steps]
    return torch.cat([ramp, torch.full((max(total_steps - warmup_steps, 1),), final, dtype=torch.float64)])


def view_pairs(num_teacher_views: int, num_student_views: int) -> list[tuple[int, int]]:
    """(teacher view, student view) pairs of the loss: every pair but a view with itself."""
    return [(t, s) for t in range(num_teacher_views) for s in range(num_student_views) if s != t]


def dino_loss(student_output: torch.Tensor, teacher_probs: torch.Tensor, num_student_views: int,
              student_temperature: float, kind: str = "ce") -> torch.Tensor:
    """Mean over pairs of the cross-entropy between teacher probabilities and student log-probabilities;
    `kind="mse"`: the squared distance between the two probability vectors instead (the paper's ablation)."""
    scores = student_output / student_temperature
    student = (F.log_softmax(scores, dim=-1) if kind == "ce" else F.softmax(scores, dim=-1)).chunk(num_student_views)
    teacher = teacher_probs.chunk(len(teacher_probs) // student[0].shape[0])
    pairs = view_pairs(len(teacher), num_student_views)
    if kind == "mse":
        return sum(((teacher[t] - student[s]) ** 2).sum(-1).mean() for t, s in pairs) / len(pairs)
    return sum(-(teacher[t] * student[s]).sum(-1).mean() for t, s in pairs) / len(pairs)


@torch.no_grad()
def update_center(center: torch.Tensor, teacher_output: torch.Tensor, momentum: float) -> None:
    """`center` <- EMA of the teacher's mean output over the global batch (all-reduced across workers)."""
    batch_sum = teacher_output.sum(dim=0, keepdim=True)
    count = torch.tensor([float(len(teacher_output))], device=batch_sum.device)
    if world()[1] > 1:
        dist.all_reduce(batch_sum)
        dist.all_reduce(count)
    moved = center * momentum + batch_sum / count.clamp_min(1) * (1 - momentum)
    center.copy_(torch.where(count > 0, moved, center))  # no output (no masked patch anywhere): unchanged


def entropy(probabilities: torch.Tensor) -> torch.Tensor:
    return -(probabilities * probabilities.clamp_min(1e-12).log()).sum(-1).mean()


class TeacherStudent(SSLMethod):
    """DINO's and DINOv2's shared frame: a `student` trained, a `teacher` that follows it by EMA of parameters
    (its BatchNorm statistics its own), evaluated and exported (the paper's `checkpoint_key teacher`), and
    heads whose last layer stays frozen for the first steps."""
    student: nn.Module
    teacher: nn.Module
    momentum_schedule: torch.Tensor
    freeze_last_layer_steps: int

    @property
    def trained(self) -> nn.Module:
        return self.student

    @property
    def backbone(self) -> nn.Module:
        return self.teacher.backbone

    def frozen_last_layers(self) -> list[nn.Module]:
        return [self.student.head.last_layer]

    def after_backward(self, step: int) -> None:
        if step < self.freeze_last_layer_steps:
            for layer in self.frozen_last_layers():
                for parameter in layer.parameters():
                    parameter.grad = None

    def after_optimizer_step(self, step: int) -> dict[str, float]:
        return ema_step(self.teacher, self.student, self.momentum_schedule, step, copy_buffers=False)


class DINO(TeacherStudent):
    def __init__(self, backbone: nn.Module, feature_dim: int, total_steps: int, out_dim: int = 4096,
                 head_hidden_dim: int = 2048, bottleneck_dim: int = 256, num_local_crops: int = 8,
                 student_temperature: float = 0.1, teacher_temperature: float = 0.04,
                 warmup_teacher_temperature: float = 0.04, teacher_temperature_warmup_steps: int = 0,
                 center_momentum: float = 0.9, momentum_start: float = 0.996, momentum_end: float = 1.0,
                 freeze_last_layer_steps: int = 0, centering: bool = True, loss: str = "ce", predictor: bool = False):
        super().__init__()
        self.student = MultiCropNetwork(backbone, DINOHead(feature_dim, out_dim, head_hidden_dim, bottleneck_dim))
        self.teacher = frozen_copy(self.student)
        if predictor:
            self.student.head.predictor = init_linears(nn.Sequential(
                nn.Linear(bottleneck_dim, head_hidden_dim), nn.GELU(), nn.Linear(head_hidden_dim, bottleneck_dim)))
        self.num_views = 2 + num_local_crops
        self.student_temperature = student_temperature
        self.center_momentum = center_momentum
        self.freeze_last_layer_steps = freeze_last_layer_steps
        self.centering, self.loss_kind = centering, loss
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.teacher_temperatures = teacher_temperature_schedule(
            warmup_teacher_temperature, teacher_temperature, teacher_temperature_warmup_steps, total_steps)
        self.momentum_schedule = cosine_schedule(momentum_start, momentum_end, total_steps)

    @torch.no_grad()
    def teacher_probabilities(self, global_crops: list[torch.Tensor], step: int) -> torch.Tensor:
        output = self.teacher(global_crops).float()
        probabilities = F.softmax((output - self.center) / value_at(self.teacher_temperatures, step), dim=-1)
        if self.centering:  # off: the paper's ablation (the centre stays 0), which collapses to one dimension
            self.update_center(output)
        return probabilities

    def update_center(self, teacher_output: torch.Tensor) -> None:
        update_center(self.center, teacher_output, self.center_momentum)

    def training_step(self, views: list[torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        teacher = self.teacher_probabilities(views[:2], step)
        student = self.call_trained(views).float()
        loss = dino_loss(student, teacher, len(views), self.student_temperature, self.loss_kind)
        return {"loss": loss, "teacher_temperature": value_at(self.teacher_temperatures, step),
                "teacher_entropy": entropy(teacher),
                "projection_std": embedding_std(student)}
