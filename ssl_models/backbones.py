"""Backbones from timm by name, with small-image options, returning the network and its feature width.

Everything needed to rebuild a backbone outside this project is in `BackboneSpec`:
`timm.create_model(spec.timm_name, num_classes=0, **spec.timm_kwargs)`, then, when
`spec.small_stem` is true, `apply_small_stem(model)` (or, with ssl_models/small_stem.py imported, timm's own
`<name>_small_stem`), then `replace_batchnorm(model, spec.norm)`.
"""
import difflib
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import timm
from torch import nn

from ssl_models.norms import replace_batchnorm
from ssl_models.small_stem import PLAIN_STEM_RESNETS, apply_small_stem, small_stem_name


@dataclass(frozen=True)
class BackboneSpec:
    timm_name: str
    timm_kwargs: dict[str, Any] = field(default_factory=dict)
    small_stem: bool = False
    norm: str = "batch"  # see ssl_models.norms

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def timm_model(self) -> str:
        """The name plain timm builds it by (a small-stem ResNet's once ssl_models/small_stem.py is imported)."""
        return small_stem_name(self.timm_name) if self.small_stem else self.timm_name

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> "BackboneSpec":
        """From an exported backbone.json (older files have no `norm`: BatchNorm)."""
        return cls(meta["timm_name"], meta.get("timm_kwargs", {}), meta.get("small_stem", False),
                   meta.get("norm", "batch"))


def is_vit(name: str) -> bool:
    return name.startswith(("vit_", "deit_", "deit3_"))


def backbone_spec(
    name: str,
    in_chans: int = 3,
    image_size: int = 224,
    small_stem: bool = False,
    patch_size: Optional[int] = None,
    drop_path_rate: float = 0.0,
    norm: str = "batch",
    layer_scale_init: Optional[float] = None,
) -> BackboneSpec:
    """Validate the options for `name` and turn them into timm arguments."""
    if name not in timm.list_models():
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(
            f"unknown backbone '{name}'.{hint} Any timm model name works, "
            "e.g. resnet18, resnet50, vit_tiny_patch16_224, vit_small_patch16_224, convnext_atto."
        )
    kwargs: dict[str, Any] = {"in_chans": in_chans}
    if small_stem and name not in PLAIN_STEM_RESNETS:
        raise ValueError(f"model.small_stem applies to ResNets whose stem is one 7x7 convolution and a max-pool, not "
                         f"'{name}' (for ViTs and ConvNeXts set model.patch_size); the ResNets it applies to: "
                         f"{', '.join(PLAIN_STEM_RESNETS)}")
    if is_vit(name):
        kwargs["img_size"] = image_size
        kwargs["dynamic_img_size"] = True  # multi-crop: local crops are smaller than image_size
        if patch_size is not None:
            kwargs["patch_size"] = patch_size
    elif patch_size is not None:
        if not name.startswith("convnext"):
            raise ValueError(f"model.patch_size applies to ViTs and ConvNeXts, not '{name}'")
        kwargs["patch_size"] = patch_size
    if drop_path_rate:
        kwargs["drop_path_rate"] = drop_path_rate
    if layer_scale_init:  # 0: none, as timm reads it
        if not is_vit(name):
            raise ValueError(f"model.layer_scale_init applies to ViTs, not '{name}'")
        kwargs["init_values"] = layer_scale_init  # timm's LayerScale on each block's two branches
    return BackboneSpec(timm_name=name, timm_kwargs=kwargs, small_stem=small_stem, norm=norm)


def vit_layer(name: str, depth: int) -> int:
    """The layer of a ViT's parameter named `name`: 0 for the embeddings and tokens, i + 1 for block i, depth + 1
    for what follows the blocks (BEiT's, MAE's and DINOv2's numbering for layer-wise lr decay)."""
    if name.startswith(("cls_token", "reg_token", "pos_embed", "patch_embed", "mask_token")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def layer_lr_scales(backbone: nn.Module, decay: float) -> dict[str, float]:
    """Layer-wise lr decay over a timm backbone: its parameter `name` learns at lr x decay^(top - l), l its layer
    and top the layer of what follows the backbone (the heads, at the full lr). A ViT's layers are BEiT's, MAE's
    and DINOv2's (`vit_layer`: the embeddings 0, block i i + 1, the final norm top); another model's are timm's
    grouping (its group_matcher: the stem 0, then each block or stage, top the one after the last)."""
    names = [name for name, _ in backbone.named_parameters()]
    if hasattr(backbone, "blocks") and hasattr(backbone, "patch_embed"):
        depth = len(backbone.blocks)
        return {name: decay ** (depth + 1 - vit_layer(name, depth)) for name in names}
    if not hasattr(backbone, "group_matcher"):
        raise ValueError(f"layer-wise lr decay needs a backbone timm groups into layers (a group_matcher): "
                         f"{type(backbone).__name__} has none")
    from timm.models import group_parameters

    layers = group_parameters(backbone, backbone.group_matcher(coarse=False), reverse=True)
    top = max(layers.values()) + 1
    return {name: decay ** (top - layers.get(name, top - 1)) for name in names}


def create_backbone(spec: BackboneSpec, **create_kwargs: Any) -> tuple[nn.Module, int]:
    """The network (classifier removed, returns pooled features) and its feature width. `create_kwargs` go to
    `timm.create_model` too (weights from a file: pretrained=True, pretrained_cfg_overlay={"file": path})."""
    model = timm.create_model(spec.timm_name, **{"pretrained": False, "num_classes": 0, **spec.timm_kwargs,
                                                 **create_kwargs})
    if spec.small_stem:
        apply_small_stem(model)
    return replace_batchnorm(model, spec.norm), model.num_features
