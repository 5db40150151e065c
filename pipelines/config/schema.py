"""The one typed configuration: its sections and their fields, each with its default and its bounds."""
import math
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import Field, model_validator

from pipelines.config.methods import GLOBAL_BATCHNORM_METHODS, BYOLConfig, MethodConfig
from pipelines.config.project import PROJECT_ROOT, LocalOrURI
from pipelines.config.recipe import Recipe
from pipelines.config.section import Section


class DataConfig(Section):
    path: LocalOrURI = Field(str(PROJECT_ROOT / "data" / "fashion_mnist"), description="folder of Parquet shards from pipelines.ingest (local path or URI)")
    image_size: int = Field(28, ge=8, le=1024)
    batch_size: int = Field(256, ge=2, description="per-worker batch")
    limit: Optional[int] = Field(None, ge=1, description="train on N training images drawn at random (seeded by "
                                 "train.seed, stratified by class where labels exist)")
    augment_actors: int = Field(1, ge=1, description="size of the augmentation actor pool (reserved up front)")
    augment_actors_max: Optional[Union[Annotated[int, Field(ge=1)], Literal["auto"]]] = Field(
        None, description="the pool grows onto idle CPUs up to this many actors; auto: up to every CPU of the cluster "
        "the run does not reserve otherwise (the photo presets' rule, docs/photos.md); null: fixed at augment_actors")
    prefetch_batches: int = Field(2, ge=0, description="batches the training iterator prepares ahead of the step")
    ahead_mb: Optional[float] = Field(None, gt=0, description="object-store memory the augmented views waiting for "
                                      "training may fill; null: 8 global batches, at least 64 MiB. One stream holds "
                                      "every epoch: unbounded, augmentation runs epochs ahead on the cores training needs")
    augment_cpus: float = Field(0.5, gt=0, description="CPUs reserved per augmentation actor")
    shuffle_buffer: int = Field(2048, ge=0, description="local shuffle buffer of the training iterator (0: off)")
    remove_augmentations: list[Literal["crop", "flip", "colour", "grayscale", "blur", "solarize"]] = Field(
        [], description="transformations left out of the method's recipe (the BYOL/SimCLR removal study); "
        "crop: the whole image resized instead of a random crop")
    crop_scale_min: Optional[float] = Field(None, gt=0, le=1, description="smallest area fraction of the random "
                                            "resized crop; null: the method's paper value (0.08: BYOL, SimCLR, Barlow "
                                            "Twins, VICReg; 0.2: MoCo v2, SimSiam, MAE; DINO: method.global_crop_scale)")


class ModelConfig(Section):
    backbone: str = "resnet18"
    init: Optional[str] = Field(None, description="start the backbone from weights: a timm weights file for "
                                "model.backbone (.safetensors, .pth, .bin; on disk, nothing is downloaded), an earlier "
                                "run (run:NAME), a folder with backbone.safetensors + backbone.json, or an MLflow "
                                "model (models:/<id>, runs:/<run id>/backbone_model); the heads start random; null: "
                                "timm's random initialisation")
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
    storage_path: LocalOrURI = Field(str(PROJECT_ROOT / "runs"), description="Ray Train storage (checkpoints): on "
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
    baseline: bool = Field(True, description="the final evaluation also scores the backbone as it started (randomly "
                           "initialised, or model.init's weights: eval/init_knn_top1_k*), on a new run")
    pixel_baseline: bool = Field(False, description="the final evaluation also scores the raw pixels with kNN "
                                 "(eval/pixels_knn_top1_k*: the figure any backbone must beat), computed once per "
                                 "dataset and evaluation rows and kept under train.storage_path/baselines/")
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
    registered_model: Optional[str] = Field(None, description="also register that model under this name in MLflow's "
                                            "Model Registry, a new version each run; null: not registered")


class Config(Section):
    method: MethodConfig = BYOLConfig()
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    tracking: TrackingConfig = TrackingConfig()
    recipe: Optional[Recipe] = Field(None, description="the paper's recipe the preset follows (the photo presets); "
                                     "a run names each setting that departs from it")

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
