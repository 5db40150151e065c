"""Augmentation recipes (albumentations): each method's views of an HxWxC uint8 image."""
import os
import sys
from typing import Callable, Sequence

import numpy as np

from pipelines.config.methods import local_crop_size


def import_albumentations():
    """albumentations, without the PyTorch transforms it imports when torch is installed (none of which the
    recipes use): in a process that has not imported torch (Ray Data's augmentation actors), importing torch
    for them cost 1.5 s of CPU and 450 MB. albumentations skips them on ImportError, which a None entry in
    sys.modules raises for the time of its import."""
    # its import asks PyPI for a newer version, in every process (a 2 s timeout where PyPI does not answer)
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    if "albumentations" in sys.modules or "torch" in sys.modules:
        import albumentations
        return albumentations
    sys.modules["torch"] = None
    try:
        import albumentations
    finally:
        del sys.modules["torch"]
    return albumentations


A = import_albumentations()


# Shrinking by area, as Pillow's antialiased resize in the papers' loaders: albumentations' default (bilinear)
# skips pixels when a photo's crop shrinks by more than 2x (its views' fine detail then 1.6x the antialiased one's).
ANTIALIASED = {"area_for_downscale": "image"}

ViewTransform = Callable[[np.ndarray], np.ndarray]


def blur_kernel(image_size: int) -> int:
    """About a tenth of the image side, odd, at least 3 (the BYOL/SimCLR choice)."""
    return max(3, int(image_size * 0.1) // 2 * 2 + 1)


# Colour jitter (brightness, contrast, saturation, hue), applied with p = 0.8, as each paper's reference
# sets it; BYOL's strengths (also Barlow Twins', VICReg's and DINO's) for the others.
COLOUR_JITTER = {"simclr": (0.8, 0.8, 0.8, 0.2), "moco": (0.4, 0.4, 0.4, 0.1), "simsiam": (0.4, 0.4, 0.4, 0.1)}
BYOL_JITTER = (0.4, 0.4, 0.2, 0.1)


def colour_jitter(method: dict) -> tuple[float, float, float, float]:
    return COLOUR_JITTER.get(method.get("name"), BYOL_JITTER)


def view_recipe(image_size: int, channels: int, crop_scale_min: float, blur_p: float, solarize_p: float,
                crop_scale_max: float = 1.0, jitter: tuple[float, float, float, float] = BYOL_JITTER) -> A.Compose:
    """Random resized crop, flip, colour jitter, grayscale (colour images), blur and solarize; grey images
    get the jitter's brightness and contrast only."""
    brightness, contrast, saturation, hue = jitter
    colour = (
        [A.ColorJitter(brightness=brightness, contrast=contrast, saturation=saturation, hue=hue, p=0.8), A.ToGray(p=0.2)]
        if channels == 3
        else [A.ColorJitter(brightness=brightness, contrast=contrast, saturation=0.0, hue=0.0, p=0.8)]
    )
    return A.Compose(
        [
            A.RandomResizedCrop(size=(image_size, image_size), scale=(crop_scale_min, crop_scale_max), **ANTIALIASED),
            A.HorizontalFlip(p=0.5),
            *colour,
            A.GaussianBlur(blur_limit=(3, blur_kernel(image_size)), sigma_limit=(0.1, 2.0), p=blur_p),
            A.Solarize(threshold_range=(0.5, 0.5), p=solarize_p),
        ]
    )


def asymmetric_views(image_size: int, channels: int, crop_scale_min: float, method: dict) -> list[A.Compose]:
    """BYOL's pair (also Barlow Twins' and VICReg's): the first view always blurred, the second rarely
    blurred and sometimes solarized."""
    return [
        view_recipe(image_size, channels, crop_scale_min, blur_p=1.0, solarize_p=0.0, jitter=colour_jitter(method)),
        view_recipe(image_size, channels, crop_scale_min, blur_p=0.1, solarize_p=0.2, jitter=colour_jitter(method)),
    ]


def symmetric_views(image_size: int, channels: int, crop_scale_min: float, method: dict) -> list[A.Compose]:
    """SimCLR's, SimSiam's and MoCo v2's pair: both views drawn from one recipe, blurred half of the time."""
    view = view_recipe(image_size, channels, crop_scale_min, blur_p=0.5, solarize_p=0.0, jitter=colour_jitter(method))
    return [view, view]


def distillation_views(image_size: int, channels: int, crop_scale_min: float, method: dict) -> list[A.Compose]:
    """Distillation: one view both networks see (BYOL's first), or BYOL's pair with `views: different`."""
    views = asymmetric_views(image_size, channels, crop_scale_min, method)
    return views if method.get("views") == "different" else views[:1]


def multi_crop_views(image_size: int, channels: int, crop_scale_min: float, method: dict) -> list[A.Compose]:
    """DINO's multi-crop: BYOL's asymmetric pair of global crops, then small local crops (blurred half the time)."""
    (global_min, global_max), (local_min, local_max) = method["global_crop_scale"], method["local_crop_scale"]
    global_views = [
        view_recipe(image_size, channels, global_min, blur_p=1.0, solarize_p=0.0, crop_scale_max=global_max),
        view_recipe(image_size, channels, global_min, blur_p=0.1, solarize_p=0.2, crop_scale_max=global_max),
    ]
    local = view_recipe(local_crop_size(image_size, method), channels, local_min, blur_p=0.5, solarize_p=0.0,
                        crop_scale_max=local_max)
    return global_views + [local] * method["num_local_crops"]


def single_crop_view(image_size: int, channels: int, crop_scale_min: float, method: dict) -> list[A.Compose]:
    """MAE's only augmentation: a random resized crop and a flip; `method["augmentation"]` picks the paper's
    ablation rows (none: the centre; fixed_crop: a fixed-size random crop of the image resized by 256/224;
    random_crop_jitter: colour jitter as well). Fine-tuning adds timm's RandAugment after them with
    `method["rand_augment"]` (filling with `method["fill"]`)."""
    kind = method.get("augmentation", "random_crop")
    if kind == "none":
        return [eval_transform(image_size)]
    if kind == "fixed_crop":
        crop = [A.SmallestMaxSize(max_size=round(image_size * 256 / 224), **ANTIALIASED),
                A.RandomCrop(height=image_size, width=image_size)]
    else:
        crop = [A.RandomResizedCrop(size=(image_size, image_size), scale=(crop_scale_min, 1.0), **ANTIALIASED)]
    brightness, contrast, saturation, hue = BYOL_JITTER
    after = [A.ColorJitter(brightness=brightness, contrast=contrast, saturation=saturation if channels == 3 else 0.0,
                           hue=hue if channels == 3 else 0.0, p=0.8)] if kind == "random_crop_jitter" else []
    if method.get("rand_augment"):
        from pipelines.data.finetune_augment import RandAugmentImage

        fill = method.get("fill") or [128] * channels
        after.append(A.Lambda(image=RandAugmentImage(method["rand_augment"], image_size, fill), name="rand_augment"))
    return [A.Compose([*crop, A.HorizontalFlip(p=0.5), *after])]


RECIPES = {
    "byol": asymmetric_views,
    "barlow_twins": asymmetric_views,
    "vicreg": asymmetric_views,
    "simclr": symmetric_views,
    "simsiam": symmetric_views,
    "moco": symmetric_views,
    "dino": multi_crop_views,
    "dinov2": multi_crop_views,
    "mae": single_crop_view,
    "distill": distillation_views,
    "finetune": single_crop_view,  # MAE's fine-tuning and linear probing crop and flip as its pretraining does
}


REMOVABLE = {"flip": A.HorizontalFlip, "colour": A.ColorJitter, "grayscale": A.ToGray, "blur": A.GaussianBlur,
             "solarize": A.Solarize}


def without(view: A.Compose, removed: Sequence[str]) -> A.Compose:
    """`view` less the `removed` transformations; crop: the whole image resized to the crop's size instead."""
    kept = []
    for transform in view.transforms:
        if "crop" in removed and isinstance(transform, A.RandomResizedCrop):
            kept.append(A.Resize(*transform.size, **ANTIALIASED))
        elif not any(isinstance(transform, REMOVABLE[name]) for name in removed if name in REMOVABLE):
            kept.append(transform)
    return A.Compose(kept)


def method_views(method: dict, image_size: int, channels: int, crop_scale_min: float,
                 removed: Sequence[str] = ()) -> list[A.Compose]:
    """The method's views (its recipe), less the `removed` transformations."""
    views = RECIPES[method["name"]](image_size, channels, crop_scale_min, method)
    return [without(view, removed) for view in views] if removed else views


def eval_transform(image_size: int) -> A.Compose:
    """Evaluation: shorter side to the training size, then the centre square."""
    return A.Compose([A.SmallestMaxSize(max_size=image_size, **ANTIALIASED),
                      A.CenterCrop(height=image_size, width=image_size)])
