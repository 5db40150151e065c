"""Decoding stored image bytes into uint8 arrays of a fixed channel count."""
import io
import re
import warnings
from contextlib import contextmanager
from typing import Iterable, Iterator, Optional

import cv2
import numpy as np
from PIL import Image

# What the installed decoders open (Pillow's plugins, AVIF among them where Pillow has it), and OpenCV's own.
IMAGE_SUFFIXES = frozenset({suffix for suffix, name in Image.registered_extensions().items() if name in Image.OPEN}
                           | {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"})


JPEG_MAGIC = b"\xff\xd8"  # the first bytes of every JPEG file


def suffix_reason(name: str) -> str:
    """Why a file is not read, by its name: the format its suffix names, or none."""
    suffix = name.rsplit(".", 1)[-1].lower() if "." in name.lstrip(".") else ""
    return (f"not an image format the installed decoders read (suffix .{suffix})" if suffix
            else "not an image file (no suffix)")


def decode_image(data: bytes, channels: int, factor: int = 1) -> np.ndarray:
    """HxWxC uint8 (RGB order when C is 3), at 1/`factor` scale (1, 2, 4 or 8: OpenCV's reduced decode, which
    never makes a JPEG's full-size array; formats OpenCV does not read are decoded by Pillow, then resized).
    Raises ValueError when the bytes are no image."""
    if not data:
        raise ValueError("empty file (0 bytes)")
    kind = "GRAYSCALE" if channels == 1 else "COLOR"
    flag = getattr(cv2, f"IMREAD_{kind}" if factor == 1 else f"IMREAD_REDUCED_{kind}_{factor}")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    if image is None:
        image = verified_pil_image(data, channels)
        if factor == 1:
            return image
        height, width = image.shape[0] // factor, image.shape[1] // factor
        return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA).reshape(height, width, channels)
    if channels == 1:
        return image[:, :, None]
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def verified_pil_image(data: bytes, channels: int) -> np.ndarray:
    """Strict decode with Pillow: truncated files raise instead of yielding a half-grey picture."""
    with opened(data) as (image, _):
        array = np.asarray(image.convert("L" if channels == 1 else "RGB"))
    return array[:, :, None] if channels == 1 else array


def verified_size(data: bytes) -> tuple[int, int]:
    """(width, height) of an image that decodes whole, checked without a full-size array: JPEGs decode at 1/8
    scale (every byte still read). Raises ValueError naming the problem."""
    with opened(data, draft=True) as (_, size):
        return size


@contextmanager
def opened(data: bytes, draft: bool = False) -> Iterator[tuple[Image.Image, tuple[int, int]]]:
    """(the image decoded by Pillow, strictly; its size before any draft). Above Pillow's pixel limit
    (Image.MAX_IMAGE_PIXELS) it is refused by its size before anything is decoded."""
    if not data:
        raise ValueError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
        width, height = image.size
        limit = Image.MAX_IMAGE_PIXELS
        if limit and width * height > limit:
            raise Image.DecompressionBombError(f"{width}x{height} px")
        if draft and image.format == "JPEG":
            image.draft(image.mode, (max(1, width // 8), max(1, height // 8)))
        image.load()
    except Image.DecompressionBombError:
        raise ValueError(f"too large ({image_size_text(data)}, above the {Image.MAX_IMAGE_PIXELS:,} pixels of Pillow's "
                         "Image.MAX_IMAGE_PIXELS, which a user may raise)") from None
    except Exception as error:  # Pillow raises many types for bad files
        message = re.sub(r" ?<[^<>]* at 0x[0-9a-fA-F]+>", "", str(error))  # no memory addresses in reports
        raise ValueError(f"not a readable image ({type(error).__name__}: {message})") from None
    with image:
        yield image, (width, height)


def image_size_text(data: bytes) -> str:
    """The size a header states, without decoding, past Pillow's pixel limit."""
    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        with Image.open(io.BytesIO(data)) as image:
            return f"{image.size[0]}x{image.size[1]} px"
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def decode_reduced(data: bytes, channels: int, side: int) -> np.ndarray:
    """As `decode_image`, at the largest of 1/2, 1/4, 1/8 scale that keeps the shorter side at `side` px or more."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(data)) as header:
            shorter = min(header.size)
    return decode_image(data, channels, next((factor for factor in (8, 4, 2) if shorter // factor >= side), 1))


def shrunk_copy(data: bytes, side: int) -> bytes:
    """The image with its shorter side brought down to `side` px (area-averaged, from a JPEG's reduced decode at
    twice that or more), upright, as JPEG at quality 95 when it was a JPEG and as PNG otherwise."""
    channels = 1 if is_grayscale(data) else 3
    image = decode_reduced(data, channels, 2 * side)
    height, width = image.shape[:2]
    scale = side / min(height, width)
    if scale < 1:
        image = cv2.resize(image, (max(1, round(width * scale)), max(1, round(height * scale))),
                           interpolation=cv2.INTER_AREA)
    stored = image if channels == 1 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    jpeg = data[:2] == JPEG_MAGIC
    ok, buffer = cv2.imencode(".jpg" if jpeg else ".png", stored, [cv2.IMWRITE_JPEG_QUALITY, 95] if jpeg else [])
    if not ok:
        raise ValueError("re-encoding the shrunk copy failed")
    return buffer.tobytes()


def is_grayscale(data: bytes) -> bool:
    with Image.open(io.BytesIO(data)) as image:
        return image.mode in ("1", "L", "I", "I;16", "F", "LA")


def encode_png(array: np.ndarray) -> bytes:
    ok, buffer = cv2.imencode(".png", array)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buffer.tobytes()


class ChannelStats:
    """Per-channel mean and standard deviation of uint8 HxWxC images in [0, 1], over all their pixels, added one
    image at a time (no process holds more than one image's pixels as floats)."""

    def __init__(self):
        self.count, self.sum, self.squares = 0, 0.0, 0.0

    def add(self, image: np.ndarray) -> None:
        pixels = image.reshape(-1, image.shape[-1]).astype(np.float64) / 255
        self.count += len(pixels)
        self.sum = self.sum + pixels.sum(0)
        self.squares = self.squares + np.square(pixels).sum(0)

    def merge(self, other: "ChannelStats") -> None:
        """Adds what `other` counted (another process's share of the images)."""
        self.count += other.count
        self.sum, self.squares = self.sum + other.sum, self.squares + other.squares

    def result(self, channels: Optional[int] = None) -> tuple[list[float], list[float]]:
        """(mean, std); `channels` 1 keeps the first channel (grey images decoded as colour repeat it)."""
        mean = self.sum / self.count
        std = np.sqrt(np.maximum(self.squares / self.count - mean ** 2, 0))
        return mean[:channels].round(4).tolist(), std[:channels].round(4).tolist()


def channel_stats(images: Iterable[np.ndarray]) -> tuple[list[float], list[float]]:
    stats = ChannelStats()
    for image in images:
        stats.add(image)
    return stats.result()
