"""Exponential moving average of one network into another of the same architecture."""
import copy

import torch
from timm.layers import DropPath
from torch import nn


@torch.no_grad()
def update_momentum(target: nn.Module, online: nn.Module, momentum: float, copy_buffers: bool = True) -> None:
    """target = momentum * target + (1 - momentum) * online, for every parameter; buffers (BatchNorm
    statistics) copied, or with `copy_buffers=False` left to the target's own forward passes."""
    target_params = list(target.parameters())
    online_params = list(online.parameters())
    if len(target_params) != len(online_params):
        raise ValueError("target and online networks have different parameter lists")
    torch._foreach_lerp_(target_params, online_params, 1.0 - momentum)
    if not copy_buffers:
        return
    for target_buffer, online_buffer in zip(target.buffers(), online.buffers()):
        target_buffer.copy_(online_buffer)


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
