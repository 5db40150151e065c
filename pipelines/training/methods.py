"""From the configuration to the method (the only place config meets ssl_models' constructors)."""
import inspect
from typing import Optional, Sequence

import torch

from pipelines.config.methods import DistillConfig
from pipelines.config.schema import Config
from pipelines.config.section import ConfigError
from pipelines.training.init_weights import initial_backbone
from ssl_models import METHODS, BackboneSpec, SSLMethod, backbone_spec
from ssl_models.backbones import is_vit
from ssl_models.norms import replace_batchnorm


def drop_path_rate(config: Config) -> float:
    if config.model.drop_path_rate is not None:
        return config.model.drop_path_rate
    return 0.1 if config.method.name in ("dino", "dinov2") and is_vit(config.model.backbone) else 0.0


def layer_scale_init(config: Config) -> Optional[float]:
    if config.model.layer_scale_init is not None:
        return config.model.layer_scale_init
    return 1e-5 if config.method.name == "dinov2" else None


def build_spec(config: Config, channels: int) -> BackboneSpec:
    model = config.model
    return backbone_spec(model.backbone, channels, config.data.image_size, model.small_stem, model.patch_size,
                         drop_path_rate(config), model.norm, layer_scale_init(config))


def head_arguments(config: Config) -> dict[str, int]:
    """The head sizes set in `model`; a size the method has no use for is a configuration error."""
    accepted = inspect.signature(METHODS[config.method.name]).parameters
    heads = config.model.heads()
    unused = [name for name in heads if name not in accepted]
    if unused:
        raise ConfigError(f"model.{unused[0]} does not apply to method {config.method.name}; set it to null")
    return heads


TEACHER_WARMUP_SHARE = 0.3  # DINOv2's teacher temperature warm-up: 30 of its 100 epochs


def method_arguments(config: Config, steps_per_epoch: int) -> dict:
    """The method's fields its class takes; durations in epochs (`*_epochs`) become steps (`*_steps`)."""
    accepted = inspect.signature(METHODS[config.method.name]).parameters
    arguments = {}
    for name, value in config.method.model_dump(exclude={"name"}).items():
        if name == "teacher_temperature_warmup_epochs" and value is None:  # DINOv2's default: a share of the run
            value = TEACHER_WARMUP_SHARE * config.train.epochs
        if name.endswith("_epochs"):
            name, value = name.removesuffix("_epochs") + "_steps", round(value * steps_per_epoch)
        if name in accepted:
            arguments[name] = value
    return arguments


def build_method(config: Config, channels: int, steps_per_epoch: int,
                 stats: Optional[tuple[Sequence[float], Sequence[float]]] = None,
                 teacher: Optional[torch.nn.Module] = None) -> SSLMethod:
    """`stats`: the data's (mean, std), which distillation's teacher re-standardises from (None: the teacher's own);
    `teacher`: distillation's teacher, loaded (`pipelines.teacher.build_with_teacher` loads it and builds)."""
    backbone, feature_dim = initial_backbone(build_spec(config, channels), config.model.init, config.train.storage_path)
    total_steps = steps_per_epoch * config.train.epochs
    extra = {}
    if isinstance(config.method, DistillConfig):
        if teacher is None:
            raise ValueError("distillation is built with its teacher loaded: pipelines.teacher.build_with_teacher")
        extra["teacher"] = teacher
    method = METHODS[config.method.name](backbone, feature_dim, total_steps, **head_arguments(config),
                                         **method_arguments(config, steps_per_epoch), **extra)
    if "teacher" in extra:  # the student's backbone has its norm already and its heads have none; the teacher stays
        return method
    return replace_batchnorm(method, config.model.norm)  # the heads' too
