"""The backbone with a linear head as each supervised protocol trains it, and its parameter groups."""
from functools import partial
from typing import Callable, Optional

import torch
from torch import nn

from pipelines.evaluation.finetune_settings import FROZEN, FinetuneSettings
from ssl_models.online_probe import linear_classifier


class Classifier(nn.Module):
    """Backbone and linear head; a frozen backbone stays in eval mode and out of autograd, and the head reads
    `features(images)` (default: the backbone's output) through a parameter-free BatchNorm, or as they are with
    `plain_head`."""

    def __init__(self, backbone: nn.Module, width: int, classes: int, frozen: bool,
                 features: Optional[Callable[[torch.Tensor], torch.Tensor]] = None, plain_head: bool = False):
        super().__init__()
        self.backbone, self.frozen, self.features = backbone, frozen, features  # a function, not a submodule
        if frozen:
            backbone.requires_grad_(False)
        if frozen and not plain_head:
            self.head = linear_classifier(width, classes)
        else:
            self.head = nn.Linear(width, classes)
            init = partial(nn.init.normal_, std=0.01) if frozen else partial(nn.init.trunc_normal_, std=2e-5)
            init(self.head.weight)  # DINO's linear classifier; MAE's fine-tuning head
            nn.init.zeros_(self.head.bias)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.frozen:
            with torch.no_grad():
                features = (self.features or self.backbone)(images).float()
            return self.head(features)
        return self.head(self.backbone(images))


def dino_tokens(vit: nn.Module, images: torch.Tensor, last_blocks: int, avg_patch_tokens: bool) -> torch.Tensor:
    """DINO's linear-evaluation features of a timm ViT: the class token of each of its last `last_blocks` blocks
    under the final norm, concatenated, and with `avg_patch_tokens` the last block's patch tokens averaged."""
    outputs = vit.forward_intermediates(images, indices=last_blocks, norm=True, output_fmt="NLC",
                                        intermediates_only=True, return_prefix_tokens=True)
    features = [prefix[:, 0] for _, prefix in outputs]
    if avg_patch_tokens:
        features.append(outputs[-1][0].mean(dim=1))
    return torch.cat(features, dim=-1)


def param_groups(model: Classifier, settings: FinetuneSettings, vit: bool) -> list[dict]:
    """`build.param_groups` as MAE's fine-tuning sets them: on ViTs layer l of n at lr x decay^(n + 1 - l) (the
    head and the final norm at the full rate, the patch embedding slowest), no weight decay on biases, norms and
    the backbone's tokens (its `no_weight_decay`)."""
    from pipelines.training.optimizer import param_groups as groups

    skip = getattr(model.backbone, "no_weight_decay", lambda: ())()
    return groups(model, settings.weight_decay, settings.layer_decay if vit else 1.0,
                  no_decay_names=[f"backbone.{name}" for name in skip])


def classifier_meta(meta: dict, settings: FinetuneSettings) -> dict:
    """The backbone's description as the protocol trains it: a ViT trained whole gets stochastic depth
    (`settings.drop_path`) and, after MAE pretraining unless `settings.global_pool` says otherwise, the average of
    its patch tokens under a fresh norm as the head's input (MAE's fine-tuning) instead of the class token, which
    MAE never trains. linear_aug and other backbones: the description as pretrained."""
    from ssl_models.backbones import is_vit

    if settings.protocol in FROZEN or not is_vit(meta["timm_name"]):
        return meta
    kwargs = {key: value for key, value in meta.get("timm_kwargs", {}).items() if key not in ("drop_path_rate", "global_pool")}
    if settings.drop_path:
        kwargs["drop_path_rate"] = settings.drop_path
    if (settings.global_pool or ("avg" if meta.get("method") == "mae" else "token")) == "avg":
        kwargs["global_pool"] = "avg"  # timm then norms the pooled tokens (fc_norm) and drops the final norm
    return {**meta, "timm_kwargs": kwargs}


def check_linear_dino(meta: dict) -> None:
    from ssl_models.backbones import is_vit

    if not is_vit(meta["timm_name"]):
        raise ValueError(f"linear_dino reads a ViT's class tokens, which {meta['timm_name']} has not: use linear_aug")


def build_classifier(meta: dict, weights: Optional[bytes], classes: int, settings: FinetuneSettings) -> Classifier:
    """The backbone `meta` describes (see `classifier_meta`), with `weights` (None: random init, seeded) and a new
    head. A ViT pooled by averaging starts its fc_norm fresh and leaves the pretrained final norm out, as MAE's
    reference does; any other weight that does not fit is an error."""
    import safetensors.torch

    from ssl_models import BackboneSpec, create_backbone

    if weights is None:
        torch.manual_seed(settings.seed)
    backbone, _ = create_backbone(BackboneSpec.from_meta(meta))
    if weights is not None:
        state = safetensors.torch.load(weights)
        if isinstance(getattr(backbone, "norm", None), nn.Identity):
            state = {key: value for key, value in state.items() if not key.startswith("norm.")}
        missing, unexpected = backbone.load_state_dict(state, strict=False)
        missing = [key for key in missing if not key.startswith("fc_norm.")]
        if missing or unexpected:
            raise ValueError(f"the weights do not fit {meta['timm_name']}: missing {missing}, unexpected {unexpected}")
    if settings.protocol != "linear_dino":
        return Classifier(backbone, meta["feature_dim"], classes, frozen=settings.protocol in FROZEN)
    check_linear_dino(meta)
    if settings.last_blocks > len(backbone.blocks):
        raise ValueError(f"last_blocks {settings.last_blocks}: {meta['timm_name']} has {len(backbone.blocks)} blocks")
    width = meta["feature_dim"] * (settings.last_blocks + settings.avg_patch_tokens)
    return Classifier(backbone, width, classes, frozen=True, plain_head=True,
                      features=partial(dino_tokens, backbone, last_blocks=settings.last_blocks,
                                       avg_patch_tokens=settings.avg_patch_tokens))
