"""Exponential moving average of one network into another of the same architecture."""
import copy

import torch
from timm.layers import DropPath
from torch import nn

from ssl_models.schedules import value_at


@torch.no_grad()
def update_momentum(target: nn.Module, online: nn.Module, momentum: float, copy_buffers: bool = True) -> None:
    """target = momentum * target + (1 - momentum) * online, for every parameter of the target, from the online
    parameter of the same name (the online network may have more, e.g. DINO's predictor ablation); buffers
    (BatchNorm statistics) copied, or with `copy_buffers=False` left to the target's own forward passes."""
    online_params = dict(online.named_parameters())
    names = [name for name, _ in target.named_parameters()]
    missing = [name for name in names if name not in online_params]
    if missing:
        raise ValueError(f"the online network has no parameter {missing[0]} of the target")
    torch._foreach_lerp_(list(target.parameters()), [online_params[name] for name in names], 1.0 - momentum)
    if not copy_buffers:
        return
    for target_buffer, online_buffer in zip(target.buffers(), online.buffers()):
        target_buffer.copy_(online_buffer)


def ema_step(target: nn.Module, online: nn.Module, schedule: torch.Tensor, step: int,
             copy_buffers: bool = True) -> dict[str, float]:
    """`update_momentum` at the schedule's momentum for `step`; returns it to log (`ema_momentum`)."""
    momentum = value_at(schedule, step)
    update_momentum(target, online, momentum, copy_buffers)
    return {"ema_momentum": momentum}


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy that takes no gradients and drops no paths (stochastic depth is the trained network's
    regulariser): the starting point of a momentum (EMA) network."""
    twin = copy.deepcopy(module)
    for parameter in twin.parameters():
        parameter.requires_grad_(False)
    for layer in twin.modules():
        if isinstance(layer, DropPath):
            layer.drop_prob = 0.0
    return twin
