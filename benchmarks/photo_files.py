"""Photos with real texture at the sizes users bring, made offline from scikit-image's photographs: a mosaic of
tiles of them, each resized to a random size, JPEG-encoded (a 12-megapixel one is about 2.5 MB at quality 90, as a
phone's)."""
import io
from pathlib import Path

import cv2
import numpy as np

PHONE = (3024, 4032)  # a 12-megapixel phone photo (height, width)


def sources() -> list[np.ndarray]:
    from skimage import data as pictures

    return [getattr(pictures, name)() for name in ("astronaut", "chelsea", "coffee", "rocket")]


def textured_photo(height: int, width: int, rng: np.random.Generator, pictures: list[np.ndarray]) -> np.ndarray:
    """HxWx3 uint8 RGB: rows of tiles, each a whole photograph resized to 10-27 % of the width."""
    canvas = np.zeros((height, width, 3), np.uint8)
    top = 0
    while top < height:
        tile_height = int(rng.integers(width // 10, width * 27 // 100))
        left = 0
        while left < width:
            tile_width = int(rng.integers(width // 10, width * 27 // 100))
            tile = cv2.resize(pictures[rng.integers(len(pictures))], (tile_width, tile_height),
                              interpolation=cv2.INTER_CUBIC)
            canvas[top:top + tile_height, left:left + tile_width] = tile[:height - top, :width - left]
            left += tile_width
        top += tile_height
    return canvas


def jpeg(image: np.ndarray, quality: int = 90, orientation: int = 0) -> bytes:
    """RGB `image` as JPEG bytes; `orientation`, when set, written as its EXIF orientation tag."""
    if not orientation:
        ok, buffer = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
        return buffer.tobytes()
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    Image.fromarray(image).save(out, "JPEG", quality=quality, exif=exif.tobytes())
    return out.getvalue()


def write_photos(root: Path, count: int, smallest: tuple[int, int], largest: tuple[int, int], seed: int = 0) -> Path:
    """`count` JPEGs in `root`, each of a random size between `smallest` and `largest` (height, width)."""
    rng, pictures = np.random.default_rng(seed), sources()
    root.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        height = int(rng.integers(smallest[0], largest[0] + 1))
        width = int(rng.integers(smallest[1], largest[1] + 1))
        (root / f"photo{index:05d}.jpg").write_bytes(jpeg(textured_photo(height, width, rng, pictures)))
    return root
