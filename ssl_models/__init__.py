"""Self-supervised methods in pure PyTorch + timm: no Ray, no MLflow, no file IO."""
from ssl_models.backbones import BackboneSpec, apply_small_stem, backbone_spec, create_backbone
from ssl_models.byol import BYOL
from ssl_models.method import SSLMethod

METHODS: dict[str, type[SSLMethod]] = {"byol": BYOL}

__all__ = ["METHODS", "BYOL", "SSLMethod", "BackboneSpec", "apply_small_stem", "backbone_spec", "create_backbone"]
