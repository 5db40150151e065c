"""Each method's settings with its paper's values, and the optimizer recipes that differ from the shared defaults."""
from typing import Annotated, Literal, Optional, Union

from pydantic import Field, model_validator

from pipelines.config.section import Section


class BYOLConfig(Section):
    name: Literal["byol"] = "byol"
    momentum_start: float = Field(0.99, ge=0, le=1, description="EMA momentum of the target at step 0")
    momentum_end: float = Field(1.0, ge=0, le=1, description="EMA momentum at the last step (cosine schedule)")

    @model_validator(mode="after")
    def _increasing(self) -> "BYOLConfig":
        if self.momentum_end < self.momentum_start:
            raise ValueError("method.momentum_end must be >= method.momentum_start")
        return self


class SimSiamConfig(Section):
    name: Literal["simsiam"] = "simsiam"
    stop_gradient: bool = Field(True, description="false: the paper's ablation, which collapses")
    predictor: bool = Field(True, description="false: the paper's ablation, which collapses")
    fix_predictor_lr: bool = Field(False, description="the paper's fix-pred-lr: the predictor keeps the initial "
                                   "lr (no warm-up, no decay)")
    projector_output_affine: bool = Field(False, description="an affine BatchNorm at the projector's output (the "
                                          "reference's has no affine parameters)")


class SimCLRConfig(Section):
    name: Literal["simclr"] = "simclr"
    temperature: float = Field(0.2, gt=0, le=2, description="NT-Xent temperature (paper: 0.1-0.5)")


class BarlowTwinsConfig(Section):
    name: Literal["barlow_twins"] = "barlow_twins"
    lambd: float = Field(0.0051, ge=0, description="weight of the off-diagonal (redundancy) term")


class VICRegConfig(Section):
    name: Literal["vicreg"] = "vicreg"
    sim_coeff: float = Field(25.0, ge=0, description="invariance weight (lambda)")
    std_coeff: float = Field(25.0, ge=0, description="variance weight (mu)")
    cov_coeff: float = Field(1.0, ge=0, description="covariance weight (nu)")


class MoCoConfig(Section):
    name: Literal["moco"] = "moco"
    queue_size: int = Field(65536, ge=1, description="keys kept as negatives (paper: 65536; small data: a few thousand)")
    temperature: float = Field(0.2, gt=0, le=2)
    momentum_start: float = Field(0.999, ge=0, le=1, description="key-encoder EMA momentum at step 0")
    momentum_end: float = Field(0.999, ge=0, le=1, description="at the last step (cosine); equal: constant")
    shuffle_bn_splits: int = Field(8, ge=1, description="sub-batches the shuffled keys are normalised in (paper: "
                                   "32 images per GPU, i.e. batch / 32)")


class SelfDistillationConfig(Section):
    """What DINO and DINOv2 share: multi-crop, the heads, the temperatures, the teacher's EMA."""
    out_dim: int = Field(4096, ge=2, description="prototypes (paper: 65536 on ImageNet; small data: a few thousand)")
    head_hidden_dim: int = Field(2048, ge=1)
    bottleneck_dim: int = Field(256, ge=1)
    num_local_crops: int = Field(8, ge=0, description="local crops besides the 2 global ones (the papers' 8)")
    local_crop_size: Optional[int] = Field(None, ge=4, description="null: 96/224 of data.image_size, a multiple of 4")
    global_crop_scale: tuple[float, float] = (0.4, 1.0)
    local_crop_scale: tuple[float, float] = (0.05, 0.4)
    student_temperature: float = Field(0.1, gt=0)
    teacher_temperature: float = Field(0.04, gt=0, le=1, description="after warm-up (above 0.07 is unstable)")
    warmup_teacher_temperature: float = Field(0.04, gt=0, le=1)
    teacher_temperature_warmup_epochs: float = Field(0, ge=0)
    center_momentum: float = Field(0.9, ge=0, lt=1)
    momentum_start: float = Field(0.996, ge=0, le=1)
    momentum_end: float = Field(1.0, ge=0, le=1)
    freeze_last_layer_epochs: float = Field(1, ge=0, description="the head's last layer gets no update this long")


class DINOConfig(SelfDistillationConfig):
    name: Literal["dino"] = "dino"
    centering: bool = Field(True, description="false: the paper's ablation (no centring), which collapses")
    loss: Literal["ce", "mse"] = Field("ce", description="mse: the paper's ablation (squared distance of the "
                                       "probabilities instead of cross-entropy)")
    predictor: bool = Field(False, description="true: the paper's ablation, a 2-layer MLP on the student's "
                            "bottleneck (the teacher has none)")


class DINOv2Config(SelfDistillationConfig):
    """DINOv2's values where they differ from DINO's (its ssl_default_config); ViT backbones only."""
    name: Literal["dinov2"] = "dinov2"
    num_local_crops: int = Field(8, ge=0, description="local crops besides the 2 global ones")
    global_crop_scale: tuple[float, float] = (0.32, 1.0)
    local_crop_scale: tuple[float, float] = (0.05, 0.32)
    teacher_temperature: float = Field(0.07, gt=0, le=1, description="after warm-up")
    teacher_temperature_warmup_epochs: Optional[float] = Field(
        None, ge=0, description="from warmup_teacher_temperature (0.04); null: the first 30 % of the run's epochs "
        "(the reference: 30 of its 100), so a run of a few epochs warms up too")
    momentum_start: float = Field(0.992, ge=0, le=1)
    patch_out_dim: int = Field(4096, ge=2, description="prototypes of the patch (iBOT) head")
    separate_patch_head: bool = Field(True, description="the patch loss has a head of its own (the paper's "
                                      "choice); false: it shares the image head")
    centering: Literal["sinkhorn_knopp", "ema"] = Field(
        "sinkhorn_knopp", description="teacher centring: sinkhorn_knopp (SwAV's, the paper's) or ema (DINO's centre)")
    sinkhorn_iterations: int = Field(3, ge=1)
    dino_loss_weight: float = Field(1.0, ge=0, description="image-level (DINO) loss")
    ibot_loss_weight: float = Field(1.0, ge=0, description="masked patch-token (iBOT) loss")
    koleo_loss_weight: float = Field(0.1, ge=0, description="KoLeo regulariser on the student's class tokens")
    mask_probability: float = Field(0.5, ge=0, le=1, description="share of the global crops that are masked")
    mask_ratio_min: float = Field(0.1, ge=0, lt=1, description="a masked crop hides a ratio drawn between min and max")
    mask_ratio_max: float = Field(0.5, gt=0, lt=1)
    mask_shape: Literal["blocks", "random"] = Field("blocks", description="masked patches in blocks (iBOT's and "
                                                    "DINOv2's masking) or at random")

    @model_validator(mode="after")
    def _mask_ratios(self) -> "DINOv2Config":
        if self.mask_ratio_max < self.mask_ratio_min:
            raise ValueError("method.mask_ratio_max must be >= method.mask_ratio_min")
        return self


class DistillConfig(Section):
    """Knowledge distillation from a frozen teacher into the model.backbone student (see the README)."""
    name: Literal["distill"] = "distill"
    teacher_run: Optional[str] = Field(None, description="a pretraining run's name (its last checkpoint under "
                                       "train.storage_path): its backbone, and its head when it is DINO or DINOv2")
    teacher_run_storage: Optional[str] = Field(None, description="where teacher_run lives; null: train.storage_path "
                                               "(sweeps and studies set it, as their trials store runs elsewhere)")
    teacher_weights: Optional[str] = Field(None, description="a folder with backbone.safetensors + backbone.json (a "
                                           "checkpoint, an export), an MLflow model (models:/<id>, runs:/<id>/"
                                           "backbone_model), or with teacher_backbone a timm weights file")
    teacher_backbone: Optional[str] = Field(None, description="the timm architecture of a teacher_weights file, e.g. "
                                            "vit_small_patch14_dinov2 (nothing is downloaded)")
    teacher_image_size: Optional[int] = Field(None, ge=8, description="the teacher sees the views resized to this; "
                                              "null: its training size (runs and exports), else as the student")
    views: Literal["same", "different"] = Field("same", description="same: both see one view (knowledge "
                                                "distillation); different: each its own, swapped (self-distillation)")
    loss: Literal["cosine", "smooth_l1"] = Field("cosine", description="feature loss between the student's "
                                                 "projected features and the teacher's")
    head_loss_weight: float = Field(1.0, ge=0, description="DINO's cross-entropy on the teacher's head outputs "
                                    "(teachers with a DINO head)")
    student_temperature: float = Field(0.1, gt=0)
    teacher_temperature: Optional[float] = Field(None, gt=0, le=1, description="null: the teacher run's final one")
    head_hidden_dim: int = Field(2048, ge=1, description="the student's DINO head")
    bottleneck_dim: int = Field(256, ge=1)
    momentum_start: float = Field(0.996, ge=0, le=1, description="EMA of the student (the exported backbone)")
    momentum_end: float = Field(1.0, ge=0, le=1)

    @model_validator(mode="after")
    def _one_teacher(self) -> "DistillConfig":
        if (self.teacher_run is None) == (self.teacher_weights is None):
            raise ValueError("method.teacher_run or method.teacher_weights: exactly one names the teacher")
        if self.teacher_backbone and not self.teacher_weights:
            raise ValueError("method.teacher_backbone needs method.teacher_weights (the file of its weights)")
        return self


class MAEConfig(Section):
    name: Literal["mae"] = "mae"
    mask_ratio: float = Field(0.75, gt=0, lt=1, description="fraction of patches hidden from the encoder")
    decoder_dim: int = Field(128, ge=4, description="paper: 512 on ImageNet; small data wants less")
    decoder_depth: int = Field(2, ge=1, description="paper: 8")
    decoder_heads: int = Field(4, ge=1)
    normalize_target: bool = Field(True, description="per-patch normalised pixel targets")
    augmentation: Literal["none", "fixed_crop", "random_crop", "random_crop_jitter"] = Field(
        "random_crop", description="the paper's ablation rows: none (centre crop), fixed-size crop, random-size "
        "crop (the paper's choice), random-size crop with colour jitter")


def local_crop_size(image_size: int, method: dict) -> int:
    """Multi-crop's local crop side: `local_crop_size`, else 96/224 of the image side (DINO's ratio), a multiple of 4
    so that ViT patches of 4 tile it."""
    return method.get("local_crop_size") or max(4, round(image_size * 96 / 224 / 4) * 4)


GLOBAL_BATCHNORM_METHODS = ("byol", "simsiam", "simclr", "barlow_twins", "vicreg", "dino", "dinov2", "distill")
METHOD_CONFIGS = {c.model_fields["name"].default: c for c in (
    BYOLConfig, SimSiamConfig, SimCLRConfig, BarlowTwinsConfig, VICRegConfig, MoCoConfig, DINOConfig, DINOv2Config,
    DistillConfig, MAEConfig)}


MethodConfig = Annotated[Union[tuple(METHOD_CONFIGS.values())], Field(discriminator="name")]


# The papers' optimizer settings where they differ from the shared defaults; a preset or override wins.
PAPER_OPTIM = {
    "dino": {"lr": 5e-4, "weight_decay": 0.04, "weight_decay_end": 0.4, "clip_grad": 3.0, "clip_mode": "per_parameter"},
    "mae": {"lr": 1.5e-4, "betas": [0.9, 0.95], "weight_decay": 0.05},
    "dinov2": {"lr": 4e-3, "lr_scaling": "sqrt", "weight_decay": 0.04, "weight_decay_end": 0.2, "clip_grad": 3.0, "clip_mode": "per_module",
               "layer_decay": 0.9, "patch_embed_lr_mult": 0.2},
}


# DINO on a ResNet (the paper's ResNet-50 recipe, its repository's README): SGD, weight decay 1e-4, tighter crops
DINO_RESNET = {"optim": {"name": "sgd", "lr": 0.03, "weight_decay": 1e-4, "weight_decay_end": 1e-4},
               "method": {"global_crop_scale": [0.14, 1.0], "local_crop_scale": [0.05, 0.14]}}
