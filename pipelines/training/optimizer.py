"""The optimizer and its schedules: parameter groups (weight decay, layer-wise lr decay), learning rate and weight decay per step."""
from typing import Sequence

import timm.optim
import torch

from pipelines.config.schema import Config
from ssl_models.backbones import layer_lr_scales
from ssl_models.schedules import cosine_schedule, warmup_cosine_schedule


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
