"""Batch norm over the global batch of all workers, on CPU (gloo) as on GPU, where nn.SyncBatchNorm needs CUDA,
and per view of a concatenated batch."""
from typing import Optional

import torch
import torch.distributed.nn.functional as dist_fn
from timm.layers import BatchNormAct2d
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ssl_models.distributed import world


class GlobalBatchNorm(_BatchNorm):
    """Batch norm whose training statistics can span every worker's samples (`across_workers`) and be taken
    per view (`groups`: the input holds that many equal chunks, the views, each normalised with its own
    statistics, as if each view went through the network alone, as the BYOL, SimSiam, Barlow Twins and
    VICReg references forward them). Plain BatchNorm when neither applies."""

    across_workers: bool = True
    groups: int = 1

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() not in (2, 3, 4):
            raise ValueError(f"expected a 2-D, 3-D or 4-D input, got {input.dim()}-D")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.training and len(input) % self.groups:
            raise ValueError(f"a batch of {len(input)} rows does not split into {self.groups} views")
        if not (self.training and self.across_workers and world()[1] > 1):
            if not self.training or self.groups == 1:
                return super().forward(input)
            # torch's kernel on each view, in turn: the running statistics move once per view, as with separate calls
            return torch.cat([_BatchNorm.forward(self, view) for view in input.chunk(self.groups)])
        self._check_input_dim(input)
        x = input.float().reshape(self.groups, -1, *input.shape[1:])  # (views, rows, C, ...)
        channels = x.shape[2]
        dims = [1, *range(3, x.dim())]
        count = x.new_full((self.groups, 1), x[0].numel() // channels)
        stats = torch.cat([x.sum(dims), (x * x).sum(dims), count], dim=1)
        # one autograd-aware all-reduce: its backward sums every worker's gradient for the statistics
        stats = dist_fn.all_reduce(stats)
        n = stats[:, -1:]
        if n.min().item() <= 1:
            raise ValueError(f"expected more than 1 value per channel when training, got input size {tuple(input.shape)}")
        mean = stats[:, :channels] / n
        var = (stats[:, channels:-1] / n - mean * mean).clamp_min(0)
        if self.track_running_stats:  # once per view, as on one process
            for view_mean, view_var in zip(mean.detach(), (var * n / (n - 1)).detach()):
                self._update_running_stats(view_mean, view_var)
        shape = [self.groups, 1, channels] + [1] * (x.dim() - 3)
        y = (x - mean.view(shape)) * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.float().view(shape[1:]) + self.bias.float().view(shape[1:])
        return y.reshape(input.shape).to(input.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, unbiased_var: torch.Tensor) -> None:
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
        self.running_var.mul_(1 - factor).add_(unbiased_var.to(self.running_var.dtype), alpha=factor)


class GlobalBatchNormAct(GlobalBatchNorm):
    """GlobalBatchNorm then the dropout and activation of the timm BatchNormAct2d it replaces."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(super().forward(input)))


def convert_batchnorm(module: nn.Module, across_workers: Optional[bool] = None, groups: Optional[int] = None
                      ) -> nn.Module:
    """`module` with every BatchNorm1d/2d (subclasses included) replaced by a GlobalBatchNorm sharing its tensors;
    `across_workers` and `groups`, where given, set on those and on the GlobalBatchNorms already there."""
    if isinstance(module, GlobalBatchNorm):
        converted = module
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        kind = GlobalBatchNormAct if isinstance(module, BatchNormAct2d) else GlobalBatchNorm
        converted = kind(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            setattr(converted, name, getattr(module, name))
        if isinstance(module, BatchNormAct2d):
            converted.drop, converted.act = module.drop, module.act
        converted.across_workers = False  # until asked
        converted.train(module.training)
    else:
        for name, child in list(module.named_children()):
            setattr(module, name, convert_batchnorm(child, across_workers, groups))
        return module
    if across_workers is not None:
        converted.across_workers = across_workers
    if groups is not None:
        converted.groups = groups
    return converted


def convert_to_global_batchnorm(module: nn.Module) -> nn.Module:
    """Batch norm over the global batch of all workers (per view where the method normalises views apart)."""
    return convert_batchnorm(module, across_workers=True)


def normalise_views_apart(module: nn.Module, views: int) -> nn.Module:
    """Batch norm of `module` taken per view when it is called on the `views` views concatenated."""
    return convert_batchnorm(module, groups=views)
