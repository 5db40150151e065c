"""Backbone weights in safetensors with the timm name and build arguments beside them.

Outside this project (docs/weights.md; a small-stem ResNet's name is registered by ssl_models/small_stem.py, which
pipelines.export copies beside the weights):
    import json, timm, safetensors.torch
    meta = json.load(open("backbone.json"))
    model = timm.create_model(meta["timm_model"], num_classes=0, **meta["timm_kwargs"])
    # meta["norm"] other than "batch": ssl_models.norms.replace_batchnorm(model, meta["norm"]) (GroupNorm + WS, or none)
    model.load_state_dict(safetensors.torch.load_file("backbone.safetensors"))
"""
import json
from pathlib import Path
from typing import Any

import safetensors.torch
from torch import nn

from ssl_models import BackboneSpec, create_backbone

WEIGHTS_FILE = "backbone.safetensors"
META_FILE = "backbone.json"


def save_backbone(folder: Path, backbone: nn.Module, spec: BackboneSpec, extra: dict[str, Any]) -> None:
    folder = Path(folder)
    state = {key: value.detach().cpu().contiguous() for key, value in backbone.state_dict().items()}
    safetensors.torch.save_file(state, folder / WEIGHTS_FILE)
    (folder / META_FILE).write_text(json.dumps({**spec.to_dict(), "timm_model": spec.timm_model, **extra}, indent=2))



def load_backbone(weights: bytes, meta: dict[str, Any]) -> nn.Module:
    """The backbone `save_backbone` wrote, rebuilt from its description (nothing unpickled), in eval mode."""
    backbone, _ = create_backbone(BackboneSpec.from_meta(meta))
    backbone.load_state_dict(safetensors.torch.load(weights))
    return backbone.eval()


def read_export(folder: str, field: str, hint: str) -> tuple[dict[str, Any], bytes]:
    """(backbone.json, backbone.safetensors' bytes) of `folder`; `field` (the setting that named it) and `hint`
    make the message when they are not there."""
    from pipelines.config.section import ConfigError
    from pipelines.storage.files import read_bytes

    try:
        return json.loads(read_bytes(f"{folder}/{META_FILE}")), read_bytes(f"{folder}/{WEIGHTS_FILE}")
    except (FileNotFoundError, OSError):
        raise ConfigError(f"{field}: no backbone at '{folder}' (expected {WEIGHTS_FILE} and {META_FILE}; "
                          f"{hint})") from None
