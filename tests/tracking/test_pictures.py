"""The picture grids logged to MLflow: every cell in its place, whatever its size and channels."""
import numpy as np
import torch

from pipelines.config.load import load_config
from pipelines.features.extract import Normalizer
from pipelines.tracking.pictures import CELL, _grid, method_pictures
from pipelines.training.methods import build_method

PITCH = CELL + 4  # a cell and the white line after it


def cell_at(grid, row: int, column: int) -> np.ndarray:
    top, left = 4 + row * PITCH, 4 + column * PITCH
    return np.asarray(grid)[top:top + CELL, left:left + CELL]


def test_a_grid_puts_each_image_in_its_cell_and_fills_short_rows_with_white():
    grey = np.full((28, 28, 1), 40, np.uint8)
    colour = np.zeros((16, 16, 3), np.uint8)
    colour[..., 1] = 200
    grid = _grid([[grey, colour, grey], [colour]])
    assert grid.size == (4 + 3 * PITCH, 4 + 2 * PITCH)
    assert (cell_at(grid, 0, 0) == 40).all() and (cell_at(grid, 0, 2) == 40).all()
    assert (cell_at(grid, 0, 1) == [0, 200, 0]).all() and (cell_at(grid, 1, 0) == [0, 200, 0]).all()
    assert (cell_at(grid, 1, 1) == 255).all() and (cell_at(grid, 1, 2) == 255).all()  # no image: white
    assert (np.asarray(grid)[:4] == 255).all() and (np.asarray(grid)[:, 4 + CELL:4 + PITCH] == 255).all()


def test_maes_pictures_hold_masked_input_reconstruction_and_original_per_image():
    torch.manual_seed(0)
    config = load_config(None, ["method.name=mae", "model.backbone=vit_tiny_patch16_224", "model.patch_size=4",
                                "method.decoder_dim=32", "method.decoder_depth=1"])
    images = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    grid = method_pictures(build_method(config, 1, 10), images, Normalizer([0.3], [0.35], "cpu"))["mae_reconstruction"]
    assert grid.size == (4 + 3 * PITCH, 4 + 2 * PITCH)
    original = images[1, 0].numpy().repeat(CELL // 28, 0).repeat(CELL // 28, 1)  # nearest-neighbour, 4x
    assert (cell_at(grid, 1, 2)[..., 0] == original).all() and not (cell_at(grid, 1, 0)[..., 0] == original).all()
