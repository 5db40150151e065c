"""MAE's fine-tuning regularisers from timm, as settings of `finetune` and `scratch`: RandAugment on each image
(after the crop and flip, in the augmentation actors), random erasing on each normalised image and mixup/cutmix
on each batch (on the Train worker), which turns the labels into soft targets for `SoftTargetCrossEntropy`."""
from typing import Callable, Optional, Sequence

import numpy as np
import torch

# MAE's fine-tuning recipe (ViT-B): --mixup 0.8 --cutmix 1.0 --aa rand-m9-mstd0.5-inc1 --reprob 0.25
MAE_AUGMENT = {"mixup": 0.8, "cutmix": 1.0, "rand_augment": "rand-m9-mstd0.5-inc1", "random_erasing": 0.25}


def posterize_any_bits(image, bits_to_keep, **_):
    """timm's increasing posterize keeps 0 bits at magnitude 10 (m9 with mstd0.5 reaches it), which Pillow 11 and
    later refuse; keeping no bit gives a black image, as older Pillow did."""
    from PIL import Image, ImageOps

    if bits_to_keep >= 8:
        return image
    return ImageOps.posterize(image, bits_to_keep) if bits_to_keep > 0 else Image.new(image.mode, image.size)


def rand_augment(config: str, image_size: int, fill: Sequence[int]):
    """timm's RandAugment from its config string (e.g. rand-m9-mstd0.5-inc1), translating by up to 45 % of the
    image side, filling with `fill` (the dataset's mean, one value per channel), bicubic as MAE's fine-tuning;
    a string timm does not read raises ValueError."""
    from PIL import Image
    from timm.data import rand_augment_transform

    try:
        transform = rand_augment_transform(config, {"translate_const": int(image_size * 0.45),
                                                    "img_mean": tuple(int(v) for v in fill),
                                                    "interpolation": Image.BICUBIC})
    except (AssertionError, ValueError, KeyError, IndexError) as error:
        raise ValueError(f"rand_augment '{config}' is no timm RandAugment setting (e.g. rand-m9-mstd0.5-inc1): "
                         f"{error or type(error).__name__}") from None
    for op in transform.ops:
        if op.name.startswith("Posterize"):
            op.aug_fn = posterize_any_bits
    return transform


class RandAugmentImage:
    """RandAugment on an HxWxC uint8 array (C = 1 or 3), as an albumentations Lambda calls it."""

    def __init__(self, config: str, image_size: int, fill: Sequence[int]):
        self.transform = rand_augment(config, image_size, fill)

    def __call__(self, image: np.ndarray, **_) -> np.ndarray:
        from PIL import Image

        out = np.asarray(self.transform(Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)))
        return out[:, :, None] if out.ndim == 2 else out


BatchRegulariser = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def batch_regulariser(mixup: float, cutmix: float, random_erasing: float, label_smoothing: float, classes: int,
                      device: torch.device) -> tuple[Optional[BatchRegulariser], torch.nn.Module]:
    """(what turns a normalised batch and its labels into the trained inputs and targets, None when nothing does;
    the loss for those targets). Random erasing (pixel mode, MAE's) comes first, image by image, then mixup or
    cutmix (chosen per batch with equal odds when both are on) with the label smoothing folded into the soft
    targets."""
    from timm.data import Mixup
    from timm.data.random_erasing import RandomErasing
    from timm.loss import SoftTargetCrossEntropy

    erase = RandomErasing(random_erasing, mode="pixel", device=str(device)) if random_erasing else None
    mix = Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=label_smoothing,
                num_classes=classes) if mixup or cutmix else None
    criterion = SoftTargetCrossEntropy() if mix else torch.nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    if not (erase or mix):
        return None, criterion

    def regularise(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if erase:
            images = erase(images)
        return mix(images, labels) if mix else (images, labels)

    return regularise, criterion
