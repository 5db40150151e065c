"""ResNets with the small-image stem (a 3x3 stride-1 first convolution, no max-pool) as timm models of their own.

Importing this file registers `<name>_small_stem` with timm for each ResNet in `PLAIN_STEM_RESNETS`, so a backbone
trained with `model.small_stem` loads in plain timm with no surgery:

    import small_stem, timm, safetensors.torch
    model = timm.create_model("resnet18_small_stem", num_classes=0, in_chans=1)
    model.load_state_dict(safetensors.torch.load_file("backbone.safetensors"))

or timm's own way, `timm.create_model("resnet18_small_stem", pretrained=True, num_classes=0, in_chans=1,
pretrained_cfg_overlay={"file": "backbone.safetensors"})`. It needs only torch and timm: `pipelines.export` copies
it beside the weights it exports.
"""
import timm
from timm.models import load_checkpoint, register_model
from torch import nn

SUFFIX = "_small_stem"
# timm's ResNets whose stem is one 7x7 convolution and a max-pool (the deep stems of the d, c, s, t variants and
# the anti-aliased pools have no one layer to replace); tests/methods/test_backbones.py builds each to check
PLAIN_STEM_RESNETS = (
    "resnet18", "resnet26", "resnet34", "resnet50", "resnet50_gn", "resnet101", "resnet152", "resnet200",
    "resnext50_32x4d", "resnext101_32x4d", "resnext101_32x8d", "resnext101_32x16d", "resnext101_32x32d",
    "resnext101_64x4d", "seresnet18", "seresnet34", "seresnet50", "seresnet101", "seresnet152", "seresnext50_32x4d",
    "seresnext101_32x4d", "seresnext101_32x8d", "seresnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2",
)


def apply_small_stem(model: nn.Module) -> nn.Module:
    """CIFAR-style ResNet stem: a 3x3 stride-1 first convolution and no max-pool, for 28-96 px images."""
    old = model.conv1
    model.conv1 = nn.Conv2d(old.in_channels, old.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def small_stem_name(timm_name: str) -> str:
    """The name this file registers for `timm_name` with the small stem."""
    return timm_name + SUFFIX


def small_stem_entrypoint(timm_name: str):
    def create(pretrained: bool = False, pretrained_cfg=None, pretrained_cfg_overlay=None, **kwargs) -> nn.Module:
        model = apply_small_stem(timm.create_model(timm_name, pretrained=False, **kwargs))
        if pretrained:
            path = (pretrained_cfg_overlay or {}).get("file")
            if not path:
                raise ValueError(f"{small_stem_name(timm_name)} has no released weights: pass the file, "
                                 "pretrained_cfg_overlay={'file': 'backbone.safetensors'}")
            load_checkpoint(model, path, strict=True)
        return model

    create.__name__ = small_stem_name(timm_name)
    create.__module__ = __name__
    return create


for _name in PLAIN_STEM_RESNETS:
    register_model(small_stem_entrypoint(_name))
