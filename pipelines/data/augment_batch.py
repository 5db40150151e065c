"""The Ray Data stage that turns image bytes into views. It imports albumentations (and with it torch) only
where it builds its views, so Ray Data's coordinator, which unpickles this class with the dataset's plan, does
not pay for them."""
import functools
import json
import os
from typing import Optional, Sequence

import numpy as np

from pipelines.data.decode import decode_image
from ssl_models.mask_sampling import draw_crop_masks

MASKS = "masks"  # the column of DINOv2's masks


def to_chw(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image.transpose(2, 0, 1))


def view_column(index: int) -> str:
    return f"view_{index}"


def use_reserved_cpus() -> None:
    """OpenCV's threads as many as the CPUs Ray reserved for this actor (Ray says so in OMP_NUM_THREADS, which
    OpenCV's own thread pool does not read): a pool of one-CPU actors sized to the cores then does not contend."""
    threads = os.environ.get("OMP_NUM_THREADS")
    if threads and threads.isdigit():
        import cv2

        cv2.setNumThreads(int(threads))


class AugmentBatch:
    """Ray Data stage: decode each image and produce one fixed-shape uint8 column (N, C, H, W) per view, and
    the `label` column passed through where the rows have one (the loop logs how mixed its batches are).

    Rows that do not decode are left out instead of failing the epoch (ingest already filters them). JPEGs are
    decoded no larger than their views' crops need (`CropFirst`).
    """

    def __init__(self, method: dict, image_size: int, channels: int, crop_scale_min: float, removed: Sequence[str] = (),
                 mask_grid: Optional[tuple[int, int]] = None):
        from pipelines.data.augment import method_views
        from pipelines.data.crop_first import CropFirst

        use_reserved_cpus()

        self.views = method_views(method, image_size, channels, crop_scale_min, removed)
        self.crop_first = CropFirst(self.views, channels)
        self.channels = channels
        probe = np.zeros((image_size, image_size, channels), np.uint8)
        self.shapes = [to_chw(view(image=probe)["image"]).shape for view in self.views]
        self.masking = None
        if mask_grid:  # DINOv2: its global crops' masks drawn here, not in the training step
            self.masking = (*mask_grid, *(method[key] for key in ("mask_probability", "mask_ratio_min",
                                                                  "mask_ratio_max", "mask_shape")))
            self.rng = np.random.default_rng()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = batch["image"]
        # each view written once, transposed, into its column (no per-view array, no stacking copy)
        columns = [np.empty((len(images), *shape), np.uint8) for shape in self.shapes]
        decoded = []
        for index, data in enumerate(images):
            try:
                views = self.views_of(data)
            except ValueError:
                continue
            for column, view in zip(columns, views):
                column[len(decoded)] = view.transpose(2, 0, 1)
            decoded.append(index)
        kept = len(decoded)
        out = {view_column(i): column if kept == len(images) else column[:kept].copy()
               for i, column in enumerate(columns)}
        if self.masking:
            out[MASKS] = self.masks(kept)
        if "label" in batch:
            labels = batch["label"]
            out["label"] = np.array([-1 if labels[i] is None or labels[i] != labels[i] else int(labels[i])
                                     for i in decoded], dtype=np.int64)
        return out

    def views_of(self, data) -> list[np.ndarray]:
        """HxWxC views of one image (bytes, or a memoryview of a stored column): JPEGs decoded at the scale their
        crops need, other formats in full."""
        views = self.crop_first(data)
        if views is None:
            image = decode_image(data, self.channels)
            views = [view(image=image)["image"] for view in self.views]
        return views

    def masks(self, rows: int) -> np.ndarray:
        """(rows, 2, patches) 0 or 1: each row's two global crops' masks, drawn over the batch's 2 x rows crops as
        DINOv2 draws them over a training batch (int(2 rows x mask_probability) masked, ratios stratified)."""
        height, width, *masking = self.masking
        masks = draw_crop_masks(2 * rows, height, width, *masking, self.rng)
        return masks.reshape(2, rows, height * width).transpose(1, 0, 2).astype(np.uint8)  # Arrow holds bytes


class AugmentTables:
    """What the training stream's read tasks make of each table of rows they read: a block of views (the same
    columns as `AugmentBatch`'s). The read tasks run in the stream's actor pool, and each actor builds the
    augmentation once, for the first table it gets."""

    def __init__(self, arguments: dict):
        self.arguments = json.dumps(arguments)  # the key of the actor's AugmentBatch

    def __call__(self, table):
        from ray.data.block import BlockAccessor

        batch = {name: binary_values(column) if pa_binary(column.type) else column.to_numpy(zero_copy_only=False)
                 for name, column in zip(table.column_names, table.columns)}
        return BlockAccessor.batch_to_block(self.augment(batch))

    def augment(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return augmenter(self.arguments)(batch)


def pa_binary(kind) -> bool:
    import pyarrow as pa

    return pa.types.is_binary(kind) or pa.types.is_large_binary(kind)


def binary_values(column) -> np.ndarray:
    """Each value of a binary Arrow column as a memoryview of the column's own buffer (None where null): the image
    bytes are not copied again (2.3 MB a phone photo)."""
    import pyarrow as pa

    values = []
    for chunk in column.chunks:
        _, offsets, data = chunk.buffers()
        kind = np.int64 if pa.types.is_large_binary(chunk.type) else np.int32
        ends = np.frombuffer(offsets, kind)[chunk.offset:chunk.offset + len(chunk) + 1].tolist()
        whole = memoryview(data if data is not None else b"").cast("B")  # Arrow's buffers are signed chars
        valid = chunk.is_valid().to_numpy(zero_copy_only=False) if chunk.null_count else None
        values.extend(whole[start:end] if valid is None or valid[i] else None
                      for i, (start, end) in enumerate(zip(ends[:-1], ends[1:])))
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


@functools.lru_cache(maxsize=4)
def augmenter(arguments: str) -> AugmentBatch:
    return AugmentBatch(**json.loads(arguments))
