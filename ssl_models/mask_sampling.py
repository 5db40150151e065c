"""DINOv2's masks of its global crops drawn with numpy alone (no torch: the augmentation actors import this): which
crops are masked, at which ratio, and the masked patches as blocks (BEiT's blockwise masking, which iBOT and DINOv2
use) or at random."""
import math

import numpy as np


def block_mask(height: int, width: int, count: int, rng: np.random.Generator, min_block: int = 4,
               max_block: int | None = None, aspect_min: float = 0.3, attempts: int = 10) -> np.ndarray:
    """(height, width) bool with `count` patches masked: rectangles of `min_block` to `max_block` patches with a
    log-uniform aspect ratio in [aspect_min, 1 / aspect_min], placed at random while one fits (`attempts` tries
    each); the patches no block could reach are masked at random, so the count is exact."""
    mask = np.zeros((height, width), dtype=bool)
    max_block = max_block or count
    log_aspect = (math.log(aspect_min), -math.log(aspect_min))
    masked = 0
    while masked < count:
        remaining = count - masked
        added = 0
        for _ in range(attempts):
            area = rng.uniform(min(min_block, remaining), min(max_block, remaining))
            aspect = math.exp(rng.uniform(*log_aspect))
            rows, columns = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
            if not (0 < rows <= height and 0 < columns <= width):
                continue
            top, left = rng.integers(0, height - rows + 1), rng.integers(0, width - columns + 1)
            block = mask[top:top + rows, left:left + columns]
            new = block.size - int(block.sum())
            if 0 < new <= remaining:
                block[...] = True
                added = new
                break
        if not added:
            break
        masked += added
    if masked < count:
        free = np.flatnonzero(~mask)
        mask.flat[rng.choice(free, count - masked, replace=False)] = True
    return mask


def draw_crop_masks(images: int, height: int, width: int, probability: float, ratio_min: float, ratio_max: float,
                    shape: str, rng: np.random.Generator) -> np.ndarray:
    """(images, height x width) bool, as DINOv2 masks a batch of global crops: int(images x probability) of them
    masked, their ratios stratified over [ratio_min, ratio_max] (one drawn in each of as many equal slices), in a
    random order; `shape` "blocks" or "random" patches."""
    patches = height * width
    masked = int(images * probability)
    edges = np.linspace(ratio_min, ratio_max, masked + 1)
    masks = np.zeros((images, patches), dtype=bool)
    for image in range(masked):
        count = int(patches * rng.uniform(edges[image], edges[image + 1]))
        if shape == "blocks":
            masks[image] = block_mask(height, width, count, rng, max_block=patches // 2).ravel()
        else:
            masks[image, rng.choice(patches, count, replace=False)] = True
    return masks[rng.permutation(images)]
