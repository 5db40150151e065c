"""The methods by name and what the package exports (`ssl_models` imports this module on first use)."""
from ssl_models.backbones import BackboneSpec, apply_small_stem, backbone_spec, create_backbone
from ssl_models.barlow_twins import BarlowTwins
from ssl_models.byol import BYOL
from ssl_models.dino import DINO
from ssl_models.dinov2 import DINOv2
from ssl_models.distill import Distill
from ssl_models.mae import MAE
from ssl_models.method import SSLMethod
from ssl_models.moco import MoCo
from ssl_models.simclr import SimCLR
from ssl_models.simsiam import SimSiam
from ssl_models.vicreg import VICReg

METHODS: dict[str, type[SSLMethod]] = {
    "byol": BYOL,
    "simsiam": SimSiam,
    "simclr": SimCLR,
    "barlow_twins": BarlowTwins,
    "vicreg": VICReg,
    "moco": MoCo,
    "dino": DINO,
    "dinov2": DINOv2,
    "mae": MAE,
    "distill": Distill,
}

__all__ = ["METHODS", "BYOL", "SimSiam", "SimCLR", "BarlowTwins", "VICReg", "MoCo", "DINO", "DINOv2", "Distill", "MAE", "SSLMethod", "BackboneSpec",
           "apply_small_stem", "backbone_spec", "create_backbone"]
