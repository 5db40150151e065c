"""The network's normalisation: BatchNorm (the papers'), none, or GroupNorm with weight-standardised convolutions,
the rows of "BYOL works even without batch statistics" (Richemond et al. 2020)."""
import math

from timm.layers import StdConv2d
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

NORMS = ("batch", "none", "group_ws")
GROUPS = 32


def replace_batchnorm(module: nn.Module, norm: str) -> nn.Module:
    """`module` with every BatchNorm removed (`none`) or made a GroupNorm, and every plain Conv2d weight-
    standardised, keeping its weights (`group_ws`); `batch` leaves it as it is."""
    if norm not in NORMS:
        raise ValueError(f"unknown normalisation '{norm}'; one of {', '.join(NORMS)}")
    if norm == "batch":
        return module
    for name, child in list(module.named_children()):
        if isinstance(child, _BatchNorm):
            new = nn.Identity() if norm == "none" else nn.GroupNorm(math.gcd(GROUPS, child.num_features),
                                                                     child.num_features, affine=child.affine)
            if hasattr(child, "act"):  # timm's BatchNormAct2d and ours keep their activation
                new = nn.Sequential(new, child.drop, child.act)
            setattr(module, name, new)
        elif norm == "group_ws" and type(child) is nn.Conv2d:
            conv = StdConv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride, child.padding,
                             child.dilation, child.groups, bias=child.bias is not None)
            conv.load_state_dict(child.state_dict())
            setattr(module, name, conv)
        else:
            replace_batchnorm(child, norm)
    return module
