"""From the configuration to the method, optimizer and schedules (the only place config meets ssl_models)."""
import inspect
from typing import Optional, Sequence

import timm.optim
import torch

from pipelines.config import Config, ConfigError, DistillConfig
from ssl_models import METHODS, BackboneSpec, SSLMethod, backbone_spec, create_backbone
from ssl_models.backbones import is_vit, vit_lr_scale
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


def lr_scales(config: Config, module: torch.nn.Module) -> dict[int, float]:
    """Layer-wise lr decay over the ViT inside `module` (by parameter id; heads and the rest at 1): layer l of
    the ViT's depth n at optim.layer_decay^(n + 1 - l), the patch embedding also x optim.patch_embed_lr_mult.
    A mask token beside the ViT (DINOv2's) counts as an embedding, as in DINOv2's reference code."""
    optim = config.optim
    vits = [(name, sub) for name, sub in module.named_modules()
            if hasattr(sub, "blocks") and hasattr(sub, "patch_embed")]
    if (optim.layer_decay == 1.0 and optim.patch_embed_lr_mult == 1.0) or not vits:
        return {}
    prefix, vit = vits[0][0] + "." if vits[0][0] else "", vits[0][1]
    depth, scales = len(vit.blocks), {}
    for name, parameter in module.named_parameters():
        inner = name.removeprefix(prefix) if name.startswith(prefix) else None
        if inner is None and name.endswith("mask_token"):
            inner = "mask_token"
        mult = optim.patch_embed_lr_mult if inner is not None and inner.startswith("patch_embed") else 1.0
        scales[id(parameter)] = vit_lr_scale(inner, depth, optim.layer_decay) * mult
    return scales


def build_optimizer(config: Config, module: torch.nn.Module, fixed_lr: Sequence[torch.nn.Parameter] = ()
                    ) -> torch.optim.Optimizer:
    """AdamW or LARS over `module`; biases and normalisation parameters get no weight decay (timm's grouping),
    the parameters in `fixed_lr` keep the initial lr (groups flagged `fixed_lr`, skipped by the schedule), each
    group's `lr_scale` multiplies the scheduled lr (layer-wise decay on ViTs, `lr_scales`)."""
    optim = config.optim
    extra = {"betas": optim.betas} if optim.name == "adamw" else {"momentum": optim.momentum}
    fixed, scales = {id(parameter) for parameter in fixed_lr}, lr_scales(config, module)
    groups = []
    for group in timm.optim.param_groups_weight_decay(module, optim.weight_decay):
        buckets: dict[tuple[bool, float], list] = {}
        for parameter in group["params"]:
            buckets.setdefault((id(parameter) in fixed, scales.get(id(parameter), 1.0)), []).append(parameter)
        for is_fixed, scale in sorted(buckets, key=lambda key: (key[0], -key[1])):
            groups.append({**group, "params": buckets[is_fixed, scale], "fixed_lr": is_fixed, "lr_scale": scale,
                           "lr": config.effective_lr() * scale})
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
