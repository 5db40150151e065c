"""The one typed configuration: validated, loaded from YAML presets, overridden with `--set a.b=value`."""
import math
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# under `ray job submit` the project is Ray's unpacked copy of the working directory, deleted after the job
IN_RAY_JOB_COPY = "runtime_resources" in PROJECT_ROOT.parts


class ConfigError(ValueError):
    """A user mistake in the configuration: printed as a message, never as a traceback."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Section):
    path: str = Field(str(PROJECT_ROOT / "data" / "fashion_mnist"), description="folder of Parquet shards from pipelines.ingest (local path or URI)")
    image_size: int = Field(28, ge=8, le=1024)
    batch_size: int = Field(256, ge=2, description="per-worker batch")
    limit: Optional[int] = Field(None, ge=1, description="train on N training images drawn at random (seeded by "
                                 "train.seed, stratified by class where labels exist)")
    augment_actors: int = Field(1, ge=1, description="size of the augmentation actor pool (reserved up front)")
    augment_actors_max: Optional[int] = Field(None, ge=1, description="the pool grows onto idle CPUs up to this "
                                              "many actors; null: fixed at augment_actors")
    prefetch_batches: int = Field(2, ge=0, description="batches the training iterator prepares ahead of the step")
    ahead_mb: Optional[float] = Field(None, gt=0, description="object-store memory the augmented views waiting for "
                                      "training may fill; null: 8 global batches, at least 64 MiB. One stream holds "
                                      "every epoch: unbounded, augmentation runs epochs ahead on the cores training needs")
    augment_cpus: float = Field(0.5, gt=0, description="CPUs reserved per augmentation actor")
    read_cpus: float = Field(0.25, gt=0, description="CPUs reserved per Parquet read task")
    shuffle_buffer: int = Field(2048, ge=0, description="local shuffle buffer of the training iterator (0: off)")
    remove_augmentations: list[Literal["crop", "flip", "colour", "grayscale", "blur", "solarize"]] = Field(
        [], description="transformations left out of the method's recipe (the BYOL/SimCLR removal study); "
        "crop: the whole image resized instead of a random crop")
    crop_scale_min: Optional[float] = Field(None, gt=0, le=1, description="smallest area fraction of the random "
                                            "resized crop; null: the method's paper value (0.08: BYOL, SimCLR, Barlow "
                                            "Twins, VICReg; 0.2: MoCo v2, SimSiam, MAE; DINO: method.global_crop_scale)")


class ModelConfig(Section):
    backbone: str = "resnet18"
    small_stem: bool = Field(False, description="ResNets only: 3x3 stride-1 stem and no max-pool")
    patch_size: Optional[int] = Field(None, ge=1, description="ViTs and ConvNeXts: patch (stem) size")
    projector_hidden_dim: Optional[int] = Field(None, ge=1, description="null: the method's paper value")
    projection_dim: Optional[int] = Field(None, ge=1, description="null: the method's paper value")
    projector_layers: Optional[int] = Field(None, ge=1, le=4, description="null: the method's paper value")
    predictor_hidden_dim: Optional[int] = Field(None, ge=1, description="null: the method's paper value")
    norm: Literal["batch", "none", "group_ws"] = Field(
        "batch", description="normalisation of backbone and heads: batch (the papers'), none (BatchNorm removed), "
        "group_ws (GroupNorm + weight-standardised convolutions: BYOL without batch statistics)")
    drop_path_rate: Optional[float] = Field(None, ge=0, lt=1, description="stochastic depth of the trained backbone "
                                            "(momentum copies drop nothing); null: the method's paper value (DINO "
                                            "on ViTs 0.1, else 0)")
    layer_scale_init: Optional[float] = Field(None, ge=0, description="ViTs: LayerScale's initial value on each "
                                              "block's branches (timm's init_values); 0: no LayerScale; null: the "
                                              "method's paper value (DINOv2 1e-5, else none)")

    def heads(self) -> dict[str, int]:
        """The head sizes set explicitly."""
        names = ("projector_hidden_dim", "projection_dim", "projector_layers", "predictor_hidden_dim")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}


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


GLOBAL_BATCHNORM_METHODS = ("byol", "simsiam", "simclr", "barlow_twins", "vicreg", "dino", "dinov2", "distill")
METHOD_CONFIGS = {c.model_fields["name"].default: c for c in (
    BYOLConfig, SimSiamConfig, SimCLRConfig, BarlowTwinsConfig, VICRegConfig, MoCoConfig, DINOConfig, DINOv2Config,
    DistillConfig, MAEConfig)}
MethodConfig = Annotated[Union[tuple(METHOD_CONFIGS.values())], Field(discriminator="name")]


class OptimConfig(Section):
    name: Literal["adamw", "lars", "sgd"] = Field("adamw", description="sgd: with momentum, not Nesterov's (DINO's "
                                                  "ResNet recipe)")
    lr: float = Field(2e-3, gt=0, description="peak learning rate; with lr_scaling=linear, per 256 images of "
                      "global batch (the papers' base lr)")
    lr_scaling: Literal["linear", "sqrt", "none"] = Field(
        "linear", description="linear: effective lr = lr x global batch / 256, global batch = data.batch_size x "
        "train.num_workers (most papers' rule); sqrt: lr x sqrt(global batch / 1024) (DINOv2's, lr 4e-3 at 1024); "
        "none: lr as given")
    min_lr: float = Field(1e-6, ge=0)
    weight_decay: float = Field(1e-6, ge=0)
    weight_decay_end: Optional[float] = Field(None, ge=0, description="null: constant; else cosine to this (DINO: 0.04 -> 0.4)")
    clip_grad: Optional[float] = Field(None, gt=0, description="gradient-norm clipping (DINO: 3.0)")
    clip_mode: Literal["global", "per_parameter", "per_module"] = Field(
        "global", description="global: the norm of all gradients together; per_parameter: each parameter's "
        "gradient on its own (DINO's clipping); per_module: the backbone's and each head's on their own (DINOv2's)")
    warmup_epochs: float = Field(0.2, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    layer_decay: float = Field(1.0, gt=0, le=1, description="ViTs: block i of n learns at lr x layer_decay^(n - i), "
                               "the embeddings at layer_decay^(n + 1), the heads at lr (DINOv2: 0.9); other timm "
                               "backbones by timm's grouping into layers (stem, blocks or stages); 1: off")
    patch_embed_lr_mult: float = Field(1.0, gt=0, description="ViT backbones: the patch embedding's lr is also "
                                       "multiplied by this (DINOv2: 0.2)")
    momentum: float = Field(0.9, ge=0, lt=1, description="LARS and SGD momentum")


class TrainConfig(Section):
    epochs: int = Field(2, ge=1)
    num_workers: int = Field(1, ge=1, description="Ray Train workers (DDP processes)")
    use_gpu: Optional[bool] = Field(None, description="null: use GPUs when the cluster has them")
    cpus_per_worker: float = Field(0.5, gt=0, description="CPUs reserved per worker (scheduling only; torch_threads sets the threads)")
    torch_threads: Optional[int] = Field(None, ge=1, description="null: the node's cores / the workers on that node")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 on GPUs that have it, else fp16 with loss scaling; fp32 on CPU")
    sync_batchnorm: Optional[bool] = Field(
        None, description="BatchNorm over the global batch across workers; null: as the method's paper (on for "
        "BYOL, SimSiam, SimCLR, Barlow Twins, VICReg, DINO, DINOv2, and distillation's student, whose EMA export takes "
        "its statistics; off for MoCo, which uses shuffle-BN)")
    compile: bool = Field(False, description="torch.compile the trained network (minutes of compilation first)")
    seed: int = 0
    log_every: int = Field(10, ge=1, description="steps between logged training metrics")
    storage_path: str = Field(str(PROJECT_ROOT / "runs"), description="Ray Train storage (checkpoints): on "
                              "several nodes a URI (s3://, gs://) or a shared folder (see shared_storage)")
    shared_storage: bool = Field(False, description="local paths (data, storage, sqlite MLflow) are a mount every "
                                 "node sees, e.g. NFS; only then may a multi-node run use them")
    checkpoint_upload: Literal["async", "sync"] = Field(
        "async", description="async: workers train on while the checkpoint uploads (Ray Train's background "
        "upload); sync: every worker waits at each epoch's end until it is stored")
    max_failures: int = Field(0, ge=0, description="worker-group restarts from the last checkpoint")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_SPREAD"] = Field(
        "PACK", description="where Train workers go: PACK fills a node first, STRICT_SPREAD one worker per node")


class EvalConfig(Section):
    knn_k: list[int] = Field([20, 200], min_length=1)
    knn_temperature: float = Field(0.07, gt=0)
    every_epochs: int = Field(1, ge=0, description="online kNN every N epochs on a labelled subset (0: off)")
    online_bank_size: int = Field(5000, ge=1, description="memory-bank images of the per-epoch kNN")
    online_query_size: int = Field(1000, ge=1, description="query images of the per-epoch kNN")
    final_protocols: list[Literal["knn", "linear"]] = Field(
        ["knn"], description="after training, the transfer stage (pipelines.evaluate) on the run's data: embeddings "
        "by Ray Data, then these protocols, logged as eval/... into the run ([]: none)")
    final_bank_size: Optional[int] = Field(None, ge=1, description="labelled train images the final evaluation "
                                           "uses (stratified, seeded); null: all")
    final_query_size: Optional[int] = Field(None, ge=1, description="test images it scores; null: all")
    baseline: bool = Field(True, description="the final evaluation also scores the randomly initialised backbone "
                           "(eval/init_knn_top1_k*), on a new run")
    online_probe: bool = Field(True, description="train a linear classifier on the detached features of each labelled "
                               "training batch (solo-learn's online probe); logs train/online_probe_top1 and, per "
                               "epoch, online_linear_top1 (a sweep objective)")
    online_probe_lr: float = Field(0.1, gt=0)
    picture_every: int = Field(5, ge=0, description="DINO attention maps / MAE reconstructions every N epochs (0: off)")
    batch_size: int = Field(512, ge=1)


class TrackingConfig(Section):
    tracking_uri: Optional[str] = Field(None, description="null: $MLFLOW_TRACKING_URI, else sqlite:///<project>/mlflow.db")
    experiment: Optional[str] = Field(None, description="null: the method's name")
    artifact_location: Optional[str] = Field(None, description="where a new experiment keeps its artifacts (folder "
                                             "or URI, e.g. s3://bucket/mlflow); null: next to a sqlite store, or "
                                             "the MLflow server's own artifact root")
    run_name: Optional[str] = None
    log_model: bool = Field(True, description="log the final backbone as an MLflow model (Models tab, registry, "
                            "mlflow.pyfunc.load_model returns embeddings)")


class Config(Section):
    method: MethodConfig = BYOLConfig()
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    tracking: TrackingConfig = TrackingConfig()

    @model_validator(mode="after")
    def _vit_for_dinov2(self) -> "Config":
        if self.method.name != "dinov2":
            return self
        from ssl_models.backbones import is_vit  # here: importing torch and timm takes seconds, the CLI answers at once

        if not is_vit(self.model.backbone):
            raise ValueError(f"model.backbone: method dinov2 needs a ViT (its patch tokens), not "
                             f"'{self.model.backbone}'; e.g. vit_tiny_patch16_224 with model.patch_size=4 on 28 px images")
        return self

    @model_validator(mode="after")
    def _patch_embed_lr_mult_on_vits(self) -> "Config":
        if self.optim.patch_embed_lr_mult == 1.0:
            return self
        from ssl_models.backbones import is_vit

        if not is_vit(self.model.backbone):
            raise ValueError(f"optim.patch_embed_lr_mult applies to ViT backbones (their patch embedding), not "
                             f"'{self.model.backbone}': leave it at 1")
        return self

    def global_batch(self) -> int:
        return self.data.batch_size * self.train.num_workers

    def effective_lr(self) -> float:
        scaling, batch = self.optim.lr_scaling, self.global_batch()
        scale = batch / 256 if scaling == "linear" else math.sqrt(batch / 1024) if scaling == "sqrt" else 1.0
        return self.optim.lr * scale

    def crop_scale_min(self) -> float:
        if self.data.crop_scale_min is not None:
            return self.data.crop_scale_min
        return 0.2 if self.method.name in ("moco", "simsiam", "mae") else 0.08

    def sync_batchnorm(self) -> bool:
        setting = self.train.sync_batchnorm
        return self.method.name in GLOBAL_BATCHNORM_METHODS if setting is None else setting

    def flat(self) -> dict[str, Any]:
        """Dotted keys to values, for MLflow params, with the values derived from them (`resolved.*`)."""
        resolved = {"resolved.global_batch": self.global_batch(), "resolved.effective_lr": self.effective_lr(),
                    "resolved.sync_batchnorm": self.sync_batchnorm(), "resolved.crop_scale_min": self.crop_scale_min()}
        return {**dict(_flatten(self.model_dump(mode="json"))), **resolved}


def _flatten(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got '{text}'")
    key, raw = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else None


def apply_override(tree: dict, keys: list[str], value: Any) -> None:
    node = tree
    for i, key in enumerate(keys[:-1]):
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"'{'.'.join(keys[: i + 1])}' is a value, not a section")
    node[keys[-1]] = value


def section_fields(path: tuple) -> list[str]:
    if path and path[0] == "method":
        return list(METHOD_CONFIGS[path[1]].model_fields) if len(path) > 1 else []
    model = Config
    for part in path:
        annotation = model.model_fields[part].annotation if part in model.model_fields else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def format_validation_error(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        loc = item["loc"]
        shown = ("method", *loc[2:]) if loc[:1] == ("method",) and len(loc) > 1 and loc[1] in METHOD_CONFIGS else loc
        field = ".".join(str(part) for part in shown) or "config"
        if item["type"] == "extra_forbidden":
            where = f" for method {loc[1]}" if shown is not loc else ""
            lines.append(f"  {field}: unknown field{where}; allowed: {', '.join(section_fields(loc[:-1]))}")
            continue
        got = f" (got {item['input']!r})" if item["type"] != "missing" and not isinstance(item["input"], dict) else ""
        message = item["msg"].removeprefix("Value error, ")
        if message.split(".")[0] in Config.model_fields:  # a validator's message naming its field already
            lines.append(f"  {message}")
            continue
        lines.append(f"  {field}: {item['msg']}{got}")
    return "invalid configuration:\n" + "\n".join(lines)


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


def set_defaults(tree: dict, section: str, values: dict) -> None:
    """`values` into `tree[section]` where the tree sets none (a preset or an override wins)."""
    if isinstance(tree.setdefault(section, {}), dict):
        for key, value in values.items():
            tree[section].setdefault(key, value)


def build_config(tree: dict) -> Config:
    if isinstance(tree.get("method"), dict):
        tree["method"].setdefault("name", "byol")
    method = tree["method"].get("name") if isinstance(tree.get("method"), dict) else "byol"
    if method == "dino":
        from ssl_models.backbones import is_vit

        model, optim = tree.get("model"), tree.get("optim")
        if not is_vit(model.get("backbone", ModelConfig().backbone) if isinstance(model, dict) else ModelConfig().backbone):
            set_defaults(tree, "method", DINO_RESNET["method"])
            if not isinstance(optim, dict) or optim.get("name", "sgd") == "sgd":  # AdamW asked for: the ViT recipe's
                set_defaults(tree, "optim", DINO_RESNET["optim"])
    set_defaults(tree, "optim", PAPER_OPTIM.get(method, {}))
    try:
        return Config.model_validate(tree)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error)) from None


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {error}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections")
    return tree


def load_config(path: Optional[str | Path] = None, overrides: list[str] = ()) -> Config:
    """Defaults, then the YAML preset, then each `key=value` override, validated once at the end."""
    tree = read_yaml(path) if path else {}
    for text in overrides:
        apply_override(tree, *parse_override(text))
    return build_config(tree)


def config_yaml(config: Config) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
