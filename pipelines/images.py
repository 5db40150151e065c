"""Decoding stored image bytes into uint8 arrays of a fixed channel count."""
import io
import re

import cv2
import numpy as np
from PIL import Image

# What the installed decoders open (Pillow's plugins, AVIF among them where Pillow has it), and OpenCV's own.
IMAGE_SUFFIXES = frozenset({suffix for suffix, name in Image.registered_extensions().items() if name in Image.OPEN}
                           | {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"})


def suffix_reason(name: str) -> str:
    """Why a file is not read, by its name: the format its suffix names, or none."""
    suffix = name.rsplit(".", 1)[-1].lower() if "." in name.lstrip(".") else ""
    return (f"not an image format the installed decoders read (suffix .{suffix})" if suffix
            else "not an image file (no suffix)")


def decode_image(data: bytes, channels: int) -> np.ndarray:
    """HxWxC uint8 (RGB order when C is 3). Raises ValueError when the bytes are no image."""
    flag = cv2.IMREAD_GRAYSCALE if channels == 1 else cv2.IMREAD_COLOR
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    if image is None:
        return verified_pil_image(data, channels)
    if channels == 1:
        return image[:, :, None]
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def verified_pil_image(data: bytes, channels: int) -> np.ndarray:
    """Strict decode with Pillow: truncated files raise instead of yielding a half-grey picture."""
    if not data:
        raise ValueError("empty file (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            array = np.asarray(image.convert("L" if channels == 1 else "RGB"))
    except Exception as error:  # Pillow raises many types for bad files
        message = re.sub(r" ?<[^<>]* at 0x[0-9a-fA-F]+>", "", str(error))  # no memory addresses in reports
        raise ValueError(f"not a readable image ({type(error).__name__}: {message})") from None
    return array[:, :, None] if channels == 1 else array


def is_grayscale(data: bytes) -> bool:
    with Image.open(io.BytesIO(data)) as image:
        return image.mode in ("1", "L", "I", "I;16", "F", "LA")


def encode_png(array: np.ndarray) -> bytes:
    ok, buffer = cv2.imencode(".png", array)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buffer.tobytes()


def channel_stats(images: list[np.ndarray]) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of uint8 HxWxC images, in [0, 1]."""
    pixels = np.concatenate([image.reshape(-1, image.shape[-1]) for image in images]).astype(np.float64) / 255
    return pixels.mean(0).round(4).tolist(), pixels.std(0).round(4).tolist()
