"""The frozen teacher of `--method distill`, built where `method.teacher_*` points: on the driver once to check
it (pretrain), then on each Train worker from storage (its weights never pass through the object store).

Sources: a run's name (its last checkpoint: backbone, and the DINO/DINOv2 head with its last centre), a folder
with backbone.safetensors + backbone.json (a checkpoint, an export, an MLflow model's files), an MLflow model URI
(downloaded on the driver into train.storage_path/teachers/), or a timm architecture with a weights file on disk.
"""
import io
import re
from typing import Optional, Sequence

import torch

from pipelines.config.load import build_config
from pipelines.config.methods import DistillConfig
from pipelines.config.schema import Config
from pipelines.config.section import ConfigError
from pipelines.storage.checkpoint import STATE_FILE
from pipelines.storage.export import load_backbone, read_export
from pipelines.storage.files import DatasetError, read_bytes
from pipelines.training.init_weights import MLFLOW_SCHEMES, timm_weights
from ssl_models.backbones import is_vit
from ssl_models.distill import FrozenTeacher, TeacherInput

HEADED_METHODS = ("dino", "dinov2")


def run_head(folder: str, storage_path: str, run_name: str, channels: int):
    """(head, centre, final teacher temperature, Sinkhorn-Knopp iterations or None where the run centred by its
    centre) of a DINO or DINOv2 run's teacher; Nones for other methods."""
    from pipelines.storage.runs import read_run_file
    from pipelines.training.methods import build_method

    config = build_config(read_run_file(storage_path, run_name)["config"])
    if config.method.name not in HEADED_METHODS:
        return None, None, None, None
    method = build_method(config, channels, 1)
    state = torch.load(io.BytesIO(read_bytes(f"{folder}/{STATE_FILE}")), map_location="cpu", weights_only=True)
    method.load_state_dict(state["method"])
    sinkhorn = getattr(config.method, "centering", None) == "sinkhorn_knopp"
    return (method.teacher.head, method.center, config.method.teacher_temperature,
            config.method.sinkhorn_iterations if sinkhorn else None)


def timm_teacher(name: str, weights: str, image_size: Optional[int]):
    """(backbone, feature dim, mean, std, channels) of a timm architecture with its weights from a local file."""
    import timm

    if name not in timm.list_models():
        raise ConfigError(f"method.teacher_backbone: '{name}' is not a timm architecture")
    kwargs = {"img_size": image_size, "dynamic_img_size": True} if is_vit(name) and image_size else {}
    backbone = timm_weights(lambda: timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": weights},
                                                      num_classes=0, **kwargs), weights, "method.teacher_weights", name)
    cfg = backbone.pretrained_cfg
    return backbone, backbone.num_features, cfg.get("mean", (0.5,)), cfg.get("std", (0.5,)), cfg.get("input_size", (3,))[0]


def exported_teacher(folder: str):
    """(backbone, meta) of a folder with backbone.safetensors + backbone.json."""
    meta, weights = read_export(folder, "method.teacher_weights", "for a timm weights file set method.teacher_backbone too")
    return load_backbone(weights, meta), meta


def load_teacher(method: DistillConfig, storage_path: str, channels: int, data_mean: Optional[Sequence[float]] = None,
                 data_std: Optional[Sequence[float]] = None) -> FrozenTeacher:
    """`data_mean`, `data_std`: the statistics the views are standardised with (None: the teacher's own)."""
    head = center = run_temperature = sinkhorn_iterations = None
    if method.teacher_backbone:
        backbone, feature_dim, mean, std, teacher_channels = timm_teacher(
            method.teacher_backbone, method.teacher_weights, method.teacher_image_size)
        image_size = method.teacher_image_size
    else:
        runs = method.teacher_run_storage or storage_path
        if method.teacher_run:
            from pipelines.storage.runs import run_weights

            try:
                folder = run_weights(runs, method.teacher_run)
            except DatasetError:
                raise ConfigError(f"method.teacher_run: no run named '{method.teacher_run}' with a checkpoint under "
                                  f"{runs}") from None
        else:
            folder = method.teacher_weights
        backbone, meta = exported_teacher(folder)
        if method.teacher_run:
            head, center, run_temperature, sinkhorn_iterations = run_head(folder, runs, method.teacher_run, channels)
        feature_dim, mean, std = meta["feature_dim"], meta["mean"], meta["std"]
        teacher_channels = meta.get("timm_kwargs", {}).get("in_chans", 3)
        image_size = method.teacher_image_size or meta.get("image_size")
    if teacher_channels < channels:
        raise ConfigError(f"the teacher takes {teacher_channels}-channel images and the data has {channels}-channel "
                          "ones: distil on data ingested like the teacher's")
    temperature = method.teacher_temperature or run_temperature or 0.04
    adapt = TeacherInput(data_mean or mean, data_std or std, mean, std, teacher_channels, image_size)
    return FrozenTeacher(backbone.eval(), feature_dim, head, center, temperature, adapt, sinkhorn_iterations)


def build_with_teacher(config: Config, channels: int, steps_per_epoch: int,
                       stats: Optional[tuple[Sequence[float], Sequence[float]]] = None):
    """`build.build_method`, with distillation's teacher loaded from `config.method` first (`stats`: the data's
    (mean, std), which the teacher re-standardises from; None: the teacher's own)."""
    from pipelines.training.methods import build_method

    teacher = None
    if isinstance(config.method, DistillConfig):
        teacher = load_teacher(config.method, config.train.storage_path, channels, *(stats or (None, None)))
    return build_method(config, channels, steps_per_epoch, stats, teacher)


def resolve_teacher(config: Config, tracking_uri: str) -> None:
    """On the driver, before Ray: an MLflow model URI downloaded into train.storage_path/teachers/ (where the
    workers read it), `method.teacher_weights` pointed there."""
    method = config.method
    if not (isinstance(method, DistillConfig) and method.teacher_weights
            and method.teacher_weights.startswith(MLFLOW_SCHEMES)):
        return
    from pipelines.tracking.logged_model import download_backbone

    target = f"{config.train.storage_path.rstrip('/')}/teachers/{re.sub(r'[^A-Za-z0-9_.-]+', '_', method.teacher_weights)}"
    download_backbone(method.teacher_weights, tracking_uri, target, "method.teacher_weights")
    method.teacher_weights = target
