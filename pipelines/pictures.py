"""Pictures for MLflow: a grid of augmented views."""
import numpy as np
from PIL import Image

from pipelines.augment import RECIPES
from pipelines.config import Config
from pipelines.dataset_store import DatasetInfo, read_split
from pipelines.images import decode_image

CELL = 112


def _cell(image: np.ndarray) -> Image.Image:
    picture = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)
    return picture.convert("RGB").resize((CELL, CELL), Image.NEAREST)


def augmented_views_grid(config: Config, info: DatasetInfo, rows: int = 8) -> Image.Image:
    """One row per training image: the original, then each view the method's recipe makes of it."""
    views = RECIPES[config.method.name](config.data.image_size, info.channels, config.data.crop_scale_min,
                                        config.method.model_dump(mode="json"))
    images = [decode_image(data, info.channels) for data in read_split(config.data.path, "train", ("image",), rows).column("image").to_pylist()]
    grid = Image.new("RGB", ((len(views) + 1) * (CELL + 4), len(images) * (CELL + 4)), "white")
    for row, image in enumerate(images):
        cells = [image] + [view(image=image)["image"] for view in views]
        for column, cell in enumerate(cells):
            grid.paste(_cell(cell), (column * (CELL + 4), row * (CELL + 4)))
    return grid
