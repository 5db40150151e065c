"""From the configuration to the method, optimizer and schedules (the only place config meets ssl_models)."""
import inspect
from typing import Optional, Sequence

import timm.optim
import torch

from pipelines.config import Config, ConfigError, DistillConfig
from ssl_models import METHODS, BackboneSpec, SSLMethod, backbone_spec, create_backbone
from ssl_models.backbones import is_vit, layer_lr_scales
from ssl_models.norms import replace_batchnorm
from ssl_models.schedules import cosine_schedule, warmup_cosine_schedule


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
    backbone, feature_dim = create_backbone(build_spec(config, channels))
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


def param_groups(module: torch.nn.Module, weight_decay: float, layer_decay: float = 1.0,
                 patch_embed_lr_mult: float = 1.0, fixed_lr: Sequence[torch.nn.Parameter] = (),
                 no_decay_names: Sequence[str] = ()) -> list[dict]:
    """The optimizer's groups over `module`'s trainable parameters, one per (weight decay or not, `fixed_lr` or
    not, lr scale), in that order. No weight decay on biases and normalisation parameters (timm's rule: one
    dimension or less) nor on those named in `no_decay_names` (names in `module`). `lr_scale` multiplies the
    scheduled lr: layer-wise decay over the timm backbone inside `module` (`layer_lr_scales`; a mask token beside it
    counts as an embedding), its patch embedding also x `patch_embed_lr_mult`, what is not the backbone (the heads)
    at 1. Parameters in `fixed_lr` keep the initial lr (their groups flagged `fixed_lr`, skipped by the schedule)."""
    prefix, scales = "", {}
    if layer_decay != 1.0 or patch_embed_lr_mult != 1.0:
        trained = [(name, sub) for name, sub in module.named_modules() if hasattr(sub, "group_matcher")
                   and any(parameter.requires_grad for parameter in sub.parameters())]  # a frozen one: nothing to do
        if trained:
            prefix, scales = trained[0][0] + "." if trained[0][0] else "", layer_lr_scales(trained[0][1], layer_decay)
    fixed, skip, buckets = {id(parameter) for parameter in fixed_lr}, set(no_decay_names), {}
    for name, parameter in module.named_parameters():
        if not parameter.requires_grad:
            continue
        inner = name.removeprefix(prefix) if name.startswith(prefix) else None
        scale = 1.0
        if inner in scales:
            scale = scales[inner] * (patch_embed_lr_mult if inner.startswith("patch_embed") else 1.0)
        elif scales and name.endswith("mask_token"):
            scale = min(scales.values())  # the embeddings' layer
        decay = parameter.ndim > 1 and not name.endswith(".bias") and name not in skip
        buckets.setdefault((decay, id(parameter) in fixed, -scale), []).append(parameter)
    return [{"params": buckets[key], "weight_decay": weight_decay if key[0] else 0.0, "fixed_lr": key[1],
             "lr_scale": -key[2]} for key in sorted(buckets)]


def build_optimizer(config: Config, module: torch.nn.Module, fixed_lr: Sequence[torch.nn.Parameter] = ()
                    ) -> torch.optim.Optimizer:
    """AdamW, LARS or SGD over `module`'s `param_groups` (the optim section's weight decay, layer decay and patch
    embedding multiplier), each group at the effective lr x its `lr_scale`."""
    optim = config.optim
    extra = {"betas": optim.betas} if optim.name == "adamw" else {"momentum": optim.momentum}
    groups = [{**group, "lr": config.effective_lr() * group["lr_scale"]} for group in param_groups(
        module, optim.weight_decay, optim.layer_decay, optim.patch_embed_lr_mult, fixed_lr)]
    name = "momentum" if optim.name == "sgd" else optim.name  # timm's "sgd" is Nesterov's
    return timm.optim.create_optimizer_v2(groups, opt=name, lr=config.effective_lr(),
                                          weight_decay=optim.weight_decay, **extra)


def lr_schedule(config: Config, steps_per_epoch: int) -> torch.Tensor:
    optim = config.optim
    total = steps_per_epoch * config.train.epochs
    return warmup_cosine_schedule(config.effective_lr(), optim.min_lr, total, int(optim.warmup_epochs * steps_per_epoch))


def weight_decay_schedule(config: Config, steps_per_epoch: int) -> torch.Tensor:
    optim = config.optim
    end = optim.weight_decay if optim.weight_decay_end is None else optim.weight_decay_end
    return cosine_schedule(optim.weight_decay, end, steps_per_epoch * config.train.epochs)
