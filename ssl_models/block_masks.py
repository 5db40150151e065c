"""The masks of DINOv2's global crops as the step uses them: drawn here when the batch brought none
(ssl_models/mask_sampling.py draws them), with the positions of the masked patches."""
from typing import NamedTuple

import numpy as np
import torch

from ssl_models.mask_sampling import draw_crop_masks


def crop_masks(images: int, height: int, width: int, probability: float, ratio_min: float, ratio_max: float,
               shape: str = "blocks") -> torch.Tensor:
    """`draw_crop_masks` as a host tensor, drawn from torch's generator (torch.manual_seed holds): the masks of a
    step whose batch came without them."""
    rng = np.random.default_rng(int(torch.randint(2**62, ())))
    return torch.from_numpy(draw_crop_masks(images, height, width, probability, ratio_min, ratio_max, shape, rng))


class CropMasks(NamedTuple):
    grid: torch.Tensor  # (images, patches) bool
    positions: torch.Tensor  # flat indices of the masked patches in (images x patches), row-major as grid[grid]


def with_positions(masks: torch.Tensor, device: torch.device | str) -> CropMasks:
    """Host masks and their masked positions, both moved to `device`: the positions are found on the host, so
    selecting the masked tokens on a GPU is a gather of known size, not a boolean index that waits for the device;
    both are copied from pinned memory without waiting for the device's queue."""
    positions = masks.flatten().nonzero().squeeze(1)
    if torch.device(device).type == "cuda":
        masks, positions = masks.pin_memory(), positions.pin_memory()
    return CropMasks(masks.to(device, non_blocking=True), positions.to(device, non_blocking=True))
