"""The Ray Data stage that turns image bytes into views. It imports albumentations (and with it torch) only
where it builds its views, so Ray Data's coordinator, which unpickles this class with the dataset's plan, does
not pay for them."""
from typing import Sequence

import numpy as np

from pipelines.data.decode import decode_image


def to_chw(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image.transpose(2, 0, 1))


def view_column(index: int) -> str:
    return f"view_{index}"


class AugmentBatch:
    """Ray Data stage: decode each image and produce one fixed-shape uint8 column (N, C, H, W) per view, and
    the `label` column passed through where the rows have one (the loop logs how mixed its batches are).

    Rows that do not decode are left out instead of failing the epoch (ingest already filters them).
    """

    def __init__(self, method: dict, image_size: int, channels: int, crop_scale_min: float, removed: Sequence[str] = ()):
        from pipelines.data.augment import method_views

        self.views = method_views(method, image_size, channels, crop_scale_min, removed)
        self.channels = channels
        probe = np.zeros((image_size, image_size, channels), np.uint8)
        self.shapes = [to_chw(view(image=probe)["image"]).shape for view in self.views]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs: list[list[np.ndarray]] = [[] for _ in self.views]
        decoded = []
        for index, data in enumerate(batch["image"]):
            try:
                image = decode_image(data, self.channels)
            except ValueError:
                continue
            decoded.append(index)
            for out, view in zip(outputs, self.views):
                out.append(to_chw(view(image=image)["image"]))
        columns = {view_column(i): np.stack(out) if out else np.zeros((0, *shape), np.uint8)
                   for i, (out, shape) in enumerate(zip(outputs, self.shapes))}
        if "label" in batch:
            labels = batch["label"]
            columns["label"] = np.array([-1 if labels[i] is None or labels[i] != labels[i] else int(labels[i])
                                         for i in decoded], dtype=np.int64)
        return columns
