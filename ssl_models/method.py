"""The interface every self-supervised method implements.

A method is an `nn.Module` holding all of its networks. The pipeline needs four things from it:
- `trained`: the module whose parameters the optimizer updates; the pipeline may wrap it
  (DistributedDataParallel) with `wrap_trained`, and the method calls it through `call_trained`;
- `backbone`: the network to evaluate and export;
- `training_step(views, step)`: a dict with the `loss` to minimise and other tensors to log;
- `after_backward(step)`: gradient surgery before the optimizer step (DINO freezes its last layer);
- `after_optimizer_step(step)`: updates that follow each optimizer step (EMA), returning values to log.
Every tensor a step returns stays on its device (no host sync); the pipeline reduces them every few steps.
"""
from typing import Callable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class SSLMethod(nn.Module):
    num_views: int = 2

    @property
    def trained(self) -> nn.Module:
        raise NotImplementedError

    @property
    def backbone(self) -> nn.Module:
        raise NotImplementedError

    def wrap_trained(self, wrap: Callable[[nn.Module], nn.Module]) -> None:
        # Kept out of the module registry so that state_dict() has the same keys with or without DDP.
        object.__setattr__(self, "_trained_call", wrap(self.trained))

    def call_trained(self, *args, **kwargs):
        return self.__dict__.get("_trained_call", self.trained)(*args, **kwargs)

    def training_step(self, views: list[torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def after_backward(self, step: int) -> None:
        pass

    def fixed_lr_parameters(self) -> list[nn.Parameter]:
        """Parameters the lr schedule leaves at the initial lr (SimSiam's predictor with `fix_predictor_lr`)."""
        return []

    def after_optimizer_step(self, step: int) -> dict[str, float]:
        return {}

    def momentum_batchnorm_buffers(self) -> list[torch.Tensor]:
        """BatchNorm statistics of the networks outside `trained` (targets, teachers, key encoders): each
        worker's forward passes move them apart, so the pipeline keeps rank 0's."""
        trained = {id(module) for module in self.trained.modules()}
        return [buffer for module in self.modules() if isinstance(module, _BatchNorm) and id(module) not in trained
                for buffer in module.buffers()]
