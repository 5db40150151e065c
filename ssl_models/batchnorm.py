"""Batch norm over the global batch of all workers, on CPU (gloo) as on GPU, where nn.SyncBatchNorm needs CUDA."""
import torch
import torch.distributed.nn.functional as dist_fn
from timm.layers import BatchNormAct2d
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ssl_models.distributed import world


class GlobalBatchNorm(_BatchNorm):
    """In training, normalises with the mean and biased variance of every worker's samples together."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() not in (2, 3, 4):
            raise ValueError(f"expected a 2-D, 3-D or 4-D input, got {input.dim()}-D")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training or world()[1] == 1:
            return super().forward(input)
        self._check_input_dim(input)
        x = input.float()
        channels = x.shape[1]
        dims = [0, *range(2, x.dim())]
        count = x.new_full((1,), x.numel() // channels)
        # one autograd-aware all-reduce: its backward sums every worker's gradient for the statistics
        stats = dist_fn.all_reduce(torch.cat([x.sum(dims), (x * x).sum(dims), count]))
        n = stats[-1]
        if n.item() <= 1:
            raise ValueError(f"expected more than 1 value per channel when training, got input size {tuple(x.shape)}")
        mean = stats[:channels] / n
        var = (stats[channels:-1] / n - mean * mean).clamp_min(0)
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach() * n / (n - 1))
        shape = [1, channels] + [1] * (x.dim() - 2)
        y = (x - mean.view(shape)) * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.float().view(shape) + self.bias.float().view(shape)
        return y.to(input.dtype)

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


def convert_to_global_batchnorm(module: nn.Module) -> nn.Module:
    """`module` with every BatchNorm1d/2d (subclasses included) replaced by a GlobalBatchNorm sharing its tensors."""
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        kind = GlobalBatchNormAct if isinstance(module, BatchNormAct2d) else GlobalBatchNorm
        converted = kind(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            setattr(converted, name, getattr(module, name))
        if isinstance(module, BatchNormAct2d):
            converted.drop, converted.act = module.drop, module.act
        return converted.train(module.training)
    for name, child in list(module.named_children()):
        setattr(module, name, convert_to_global_batchnorm(child))
    return module
