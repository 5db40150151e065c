"""Self-supervised methods in pure PyTorch + timm: no Ray, no MLflow, no file IO.

The names below are imported on first use (`from ssl_models import BYOL` works as ever), so that a process that
needs only a numpy part of the package (the augmentation actors drawing DINOv2's masks, ssl_models.mask_sampling)
does not import torch and timm."""

__all__ = ["METHODS", "BYOL", "SimSiam", "SimCLR", "BarlowTwins", "VICReg", "MoCo", "DINO", "DINOv2", "Distill", "MAE",
           "SSLMethod", "BackboneSpec", "apply_small_stem", "backbone_spec", "create_backbone"]


def __getattr__(name: str):
    if name in __all__:
        from ssl_models import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'ssl_models' has no attribute '{name}'")
