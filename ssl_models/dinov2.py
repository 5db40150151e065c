"""DINOv2 (Oquab et al., 2023): DINO's image-level loss, iBOT's masked patch-token loss, the KoLeo regulariser,
and Sinkhorn-Knopp centring of the teacher (DINO's EMA centring as the other option). ViT backbones (timm).

Masks (ssl_models/block_masks.py): `mask_probability` of the global crops masked, their ratios stratified over
[mask_ratio_min, mask_ratio_max], the patches in blocks as iBOT and DINOv2 draw them (`mask_shape="random"`: at random).
"""
from typing import NamedTuple, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ssl_models.block_masks import CropMasks, crop_masks, with_positions
from ssl_models.distributed import world
from ssl_models.dino import DINOHead, TeacherStudent, dino_loss, entropy, teacher_temperature_schedule, update_center
from ssl_models.ema import frozen_copy
from ssl_models.metrics import embedding_std
from ssl_models.schedules import cosine_schedule, value_at


def koleo_loss(features: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Kozachenko-Leonenko entropy estimator (Sablayrolles et al.): -mean log of each L2-normalised feature's
    distance to its nearest neighbour in the batch; minimising it spreads the features out."""
    x = F.normalize(features.float(), dim=-1, eps=eps)
    with torch.no_grad():
        similarity = x @ x.T
        similarity.fill_diagonal_(-2.0)  # below any cosine: a point is not its own neighbour
        nearest = similarity.argmax(dim=1)
    return -torch.log(F.pairwise_distance(x, x[nearest], eps=eps) + eps).mean()


@torch.no_grad()
def sinkhorn_knopp(teacher_output: torch.Tensor, temperature: float, iterations: int = 3) -> torch.Tensor:
    """SwAV's Sinkhorn-Knopp centring: soft assignments of the global batch (all workers) to the prototypes whose
    prototype marginals are equal; each row (sample) sums to 1. The outputs are bounded (weight-normed last layer
    on a unit bottleneck), so the exponential needs no max subtraction, which would differ between workers."""
    q = torch.exp(teacher_output.float() / temperature).T  # (prototypes, samples)
    samples = torch.tensor(float(q.shape[1]), device=q.device)
    total = q.sum()
    if world()[1] > 1:
        dist.all_reduce(samples)
        dist.all_reduce(total)
    q /= total
    prototypes = q.shape[0]
    for _ in range(iterations):
        rows = q.sum(dim=1, keepdim=True)
        if world()[1] > 1:
            dist.all_reduce(rows)
        q /= rows * prototypes
        q /= q.sum(dim=0, keepdim=True) * samples
    return (q * samples).T


def masked_patch_loss(student_scores: torch.Tensor, teacher_probs: torch.Tensor, masks: CropMasks) -> torch.Tensor:
    """iBOT's loss: cross-entropy of the teacher's probabilities and the student's log-probabilities at the masked
    tokens (rows in `masks.positions`' order), averaged per image over its masked tokens, then over all images."""
    per_token = -(teacher_probs * F.log_softmax(student_scores, dim=-1)).sum(-1)
    images, patches = masks.grid.shape
    weights = (1.0 / masks.grid.sum(-1).clamp_min(1))[masks.positions // patches]
    return (per_token * weights).sum() / images


def masked_tokens(patches: torch.Tensor, masks: CropMasks) -> torch.Tensor:
    """(masked tokens, D) of patch tokens (N, P, D), in `masks.positions`' order."""
    return patches.flatten(0, 1).index_select(0, masks.positions)


class StudentOutputs(NamedTuple):  # a tuple: DDP walks the outputs
    global_cls: torch.Tensor  # (2N, D): the backbone's class tokens of the global crops (KoLeo's input)
    scores: torch.Tensor  # (views x N, K): image head, global crops then local crops
    patch_scores: torch.Tensor  # (masked tokens, K'): patch head at the masked tokens of the global crops


class TokenNetwork(nn.Module):
    """A timm ViT with DINOv2's heads: the image head on the class token, the patch head on patch tokens (a head
    of its own, or the image head's when tied), and a learned mask token put in place of masked patch embeddings."""

    def __init__(self, backbone: VisionTransformer, head: nn.Module, patch_head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.patch_head = patch_head
        self.mask_token = nn.Parameter(torch.zeros(backbone.embed_dim))

    def tokens(self, images: torch.Tensor, masks: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(class tokens (N, D), patch tokens (N, P, D)) after the final norm."""
        vit = self.backbone
        x = vit.patch_embed(images)
        if masks is not None:  # torch.where keeps the mask token in the graph when nothing is masked (DDP)
            x = torch.where(masks.view(*x.shape[:-1], 1), self.mask_token.to(x.dtype), x)
        x = vit.norm(vit.blocks(vit.norm_pre(vit.patch_drop(vit._pos_embed(x)))))
        return vit.forward_head(x, pre_logits=True), x[:, vit.num_prefix_tokens:]

    def forward(self, global_crops: torch.Tensor, local_crops: Optional[torch.Tensor], masks: CropMasks
                ) -> StudentOutputs:
        cls, patches = self.tokens(global_crops, masks.grid)
        scores = [self.head(cls)]
        if local_crops is not None:
            scores.append(self.head(self.tokens(local_crops)[0]))
        return StudentOutputs(cls, torch.cat(scores), self.patch_head(masked_tokens(patches, masks)))


def patch_grid(vit: VisionTransformer, images: torch.Tensor) -> tuple[int, int]:
    height, width = vit.patch_embed.patch_size
    return images.shape[-2] // height, images.shape[-1] // width


class DINOv2(TeacherStudent):
    def __init__(self, backbone: nn.Module, feature_dim: int, total_steps: int, out_dim: int = 4096,
                 patch_out_dim: int = 4096, head_hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 separate_patch_head: bool = True, num_local_crops: int = 8, student_temperature: float = 0.1,
                 teacher_temperature: float = 0.07, warmup_teacher_temperature: float = 0.04,
                 teacher_temperature_warmup_steps: int = 0, centering: str = "sinkhorn_knopp",
                 center_momentum: float = 0.9, sinkhorn_iterations: int = 3, momentum_start: float = 0.992,
                 momentum_end: float = 1.0, freeze_last_layer_steps: int = 0, dino_loss_weight: float = 1.0,
                 ibot_loss_weight: float = 1.0, koleo_loss_weight: float = 0.1, mask_probability: float = 0.5,
                 mask_ratio_min: float = 0.1, mask_ratio_max: float = 0.5, mask_shape: str = "blocks"):
        super().__init__()
        if not isinstance(backbone, VisionTransformer):
            raise ValueError(f"DINOv2 needs a timm VisionTransformer backbone, not {type(backbone).__name__}")
        head = DINOHead(feature_dim, out_dim, head_hidden_dim, bottleneck_dim, trainable_scale=True)
        patch_head = (DINOHead(feature_dim, patch_out_dim, head_hidden_dim, bottleneck_dim, trainable_scale=True)
                      if separate_patch_head else head)
        self.student = TokenNetwork(backbone, head, patch_head)
        self.teacher = frozen_copy(self.student)
        self.num_views = 2 + num_local_crops
        self.student_temperature = student_temperature
        self.centering, self.center_momentum, self.sinkhorn_iterations = centering, center_momentum, sinkhorn_iterations
        self.freeze_last_layer_steps = freeze_last_layer_steps
        self.weights = {"dino": dino_loss_weight, "ibot": ibot_loss_weight, "koleo": koleo_loss_weight}
        self.masking = (mask_probability, mask_ratio_min, mask_ratio_max, mask_shape)
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.register_buffer("patch_center", torch.zeros(1, patch_head.last_layer.out_features))
        self.teacher_temperatures = teacher_temperature_schedule(
            warmup_teacher_temperature, teacher_temperature, teacher_temperature_warmup_steps, total_steps)
        self.momentum_schedule = cosine_schedule(momentum_start, momentum_end, total_steps)

    def frozen_last_layers(self) -> list[nn.Module]:
        return list({id(head): head.last_layer for head in (self.student.head, self.student.patch_head)}.values())

    def crop_masks(self, global_crops: torch.Tensor, masks: Optional[torch.Tensor] = None) -> CropMasks:
        """The global crops' masks: `masks` as the batch brought them ((N, 2, patches) on the host, true or 1 where
        masked, each image's two crops', drawn by the data path), else drawn here."""
        grid = patch_grid(self.student.backbone, global_crops)
        if masks is None:
            return with_positions(crop_masks(len(global_crops), *grid, *self.masking), global_crops.device)
        if masks.shape[1:] != (2, grid[0] * grid[1]):
            raise ValueError(f"the batch's masks are {tuple(masks.shape)}, the crops have {grid[0]} x {grid[1]} "
                             "patches")
        return with_positions(masks.bool().transpose(0, 1).reshape(len(global_crops), -1), global_crops.device)

    @torch.no_grad()
    def teacher_probabilities(self, output: torch.Tensor, center: torch.Tensor, temperature: float) -> torch.Tensor:
        output = output.float()
        if self.centering == "sinkhorn_knopp":
            return sinkhorn_knopp(output, temperature, self.sinkhorn_iterations)
        probabilities = F.softmax((output - center) / temperature, dim=-1)
        update_center(center, output, self.center_momentum)
        return probabilities

    def training_step(self, views: list[torch.Tensor], step: int, masks: Optional[torch.Tensor] = None
                      ) -> dict[str, torch.Tensor]:
        global_crops = torch.cat(views[:2])
        local_crops = torch.cat(views[2:]) if len(views) > 2 else None
        masks = self.crop_masks(global_crops, masks)
        temperature = value_at(self.teacher_temperatures, step)
        with torch.no_grad():
            cls, patches = self.teacher.tokens(global_crops)
            teacher = self.teacher_probabilities(self.teacher.head(cls), self.center, temperature)
            teacher_patches = self.teacher_probabilities(self.teacher.patch_head(masked_tokens(patches, masks)),
                                                         self.patch_center, temperature)
        student = self.call_trained(global_crops, local_crops, masks)
        scores = student.scores.float()
        terms = {"dino": dino_loss(scores, teacher, len(views), self.student_temperature),
                 "ibot": masked_patch_loss(student.patch_scores.float() / self.student_temperature, teacher_patches,
                                           masks),
                 "koleo": sum(koleo_loss(part) for part in student.global_cls.chunk(2))}
        loss = sum(self.weights[name] * value for name, value in terms.items())
        return {"loss": loss, **{f"{name}_loss": value.detach() for name, value in terms.items()},
                "teacher_temperature": temperature, "teacher_entropy": entropy(teacher),
                "masked_share": masks.grid.float().mean(), "projection_std": embedding_std(scores)}
