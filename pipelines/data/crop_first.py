"""Photos decoded no larger than their views need.

A 12-megapixel JPEG decoded in full costs more than all its views' transforms together. Here each view's random
resized crop is drawn first, on the image's full size as its header states it (the recipe's crop distribution
unchanged), then the JPEG is decoded once at the coarsest of libjpeg's 1/2, 1/4 and 1/8 scales that still gives
every crop twice its output size in pixels (a small crop keeps its resolution), and each crop is cut from that and
resized as the crop transform would; the view's other transforms follow unchanged.
"""
import io
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from pipelines.data.augment import import_albumentations
from pipelines.data.decode import JPEG_MAGIC, decode_image

A = import_albumentations()

FACTORS = (8, 4, 2)
MARGIN = 2  # each crop decoded at twice its output size or more: its detail then within 5 % of a full decode's
TURNED = {5, 6, 7, 8}  # EXIF orientations that swap width and height (OpenCV decodes the photo upright)
HEADER_BYTES = 1 << 17  # where a JPEG's header ends, but for rare ones (large embedded profiles)


def upright_size(data) -> tuple[int, int]:
    """(height, width) of a JPEG (bytes, or a memoryview of a stored column) as OpenCV decodes it (EXIF orientation
    applied), from its header alone: the first HEADER_BYTES, then the whole file if the header runs past them."""
    if isinstance(data, bytes) or len(data) <= HEADER_BYTES:
        return header_size(bytes(data))
    try:
        return header_size(bytes(data[:HEADER_BYTES]))
    except Exception:
        return header_size(bytes(data))


def header_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
        turned = image.getexif().get(0x0112) in TURNED
    return (width, height) if turned else (height, width)


def full_region(crop, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """(x_min, y_min, x_max, y_max) of the view's crop on an image of `shape` (height, width)."""
    if isinstance(crop, A.RandomResizedCrop):
        return crop.get_params_dependent_on_data({"shape": shape}, {})["crop_coords"]
    return 0, 0, shape[1], shape[0]


def coarsest_factor(regions: Sequence[tuple[int, int, int, int]], sizes: Sequence[tuple[int, int]]) -> int:
    """The largest of 8, 4, 2 at which every region keeps MARGIN times its output (height, width); 1 if none."""
    for factor in FACTORS:
        if all((x1 - x0) // factor >= MARGIN * width and (y1 - y0) // factor >= MARGIN * height
               for (x0, y0, x1, y1), (height, width) in zip(regions, sizes)):
            return factor
    return 1


class CropFirst:
    """`views` (albumentations pipelines) applied to JPEG bytes, each view's leading crop drawn before decoding.
    `applies` is False when a view does not begin with a random resized crop or a resize (it then needs the whole
    image: decode it in full and call the views themselves)."""

    def __init__(self, views: Sequence[A.Compose], channels: int):
        self.channels = channels
        self.crops = [view.transforms[0] if len(view.transforms) else None for view in views]
        self.applies = all(isinstance(crop, (A.RandomResizedCrop, A.Resize)) for crop in self.crops)
        self.sizes = [self.output_size(crop) for crop in self.crops] if self.applies else []
        self.rests = [A.Compose(list(view.transforms)[1:]) for view in views] if self.applies else []
        self.factors: dict[int, int] = {}  # how many images each decode factor served

    @staticmethod
    def output_size(crop) -> tuple[int, int]:
        return tuple(crop.size) if isinstance(crop, A.RandomResizedCrop) else (crop.height, crop.width)

    def __call__(self, data) -> Optional[list[np.ndarray]]:
        """The views of one image (bytes or a memoryview), or None when the bytes are not a JPEG whose header Pillow
        reads (the caller decodes those in full). Raises ValueError when the bytes are no image."""
        if not self.applies or not data[:2] == JPEG_MAGIC:
            return None
        try:
            shape = upright_size(data)
        except Exception:  # a header Pillow does not read (bad EXIF, say): the full decode decides
            return None
        regions = [full_region(crop, shape) for crop in self.crops]
        factor = coarsest_factor(regions, self.sizes)
        self.factors[factor] = self.factors.get(factor, 0) + 1
        image = decode_image(data, self.channels, factor)
        return [rest(image=cut(image, shape, region, size, crop))["image"]
                for region, crop, size, rest in zip(regions, self.crops, self.sizes, self.rests)]


def cut(image: np.ndarray, shape: tuple[int, int], region: tuple[int, int, int, int], size: tuple[int, int],
        crop) -> np.ndarray:
    """`region` of an image of full `shape` (height, width), cut from `image` (that image decoded at a reduced
    scale, or in full) and resized to `size` (height, width) with the interpolation the `crop` transform would
    choose."""
    import cv2

    scale_y, scale_x = image.shape[0] / shape[0], image.shape[1] / shape[1]
    x0, y0, x1, y1 = region
    left, top = int(x0 * scale_x), int(y0 * scale_y)
    right, bottom = max(left + 1, round(x1 * scale_x)), max(top + 1, round(y1 * scale_y))
    height, width = size
    shrinks = bottom - top > height or right - left > width
    interpolation = cv2.INTER_AREA if shrinks and crop.area_for_downscale else crop.interpolation
    out = cv2.resize(image[top:bottom, left:right], (width, height), interpolation=interpolation)
    return out.reshape(height, width, image.shape[2])
