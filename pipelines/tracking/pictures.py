"""Pictures for MLflow: augmented views, DINO attention maps, MAE reconstructions."""
import numpy as np
import torch
from PIL import Image
from timm.models.vision_transformer import VisionTransformer
from torchvision.utils import make_grid

from pipelines.config.schema import Config
from pipelines.data.augment import method_views
from pipelines.data.decode import decode_image
from pipelines.data.store import DatasetInfo, read_rows
from ssl_models import DINO, MAE, DINOv2
from ssl_models.attention import last_block_cls_attention

CELL = 112


def _cell(image: np.ndarray) -> Image.Image:
    picture = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)
    return picture.convert("RGB").resize((CELL, CELL), Image.NEAREST)


def augmented_views_grid(config: Config, info: DatasetInfo, rows: int = 8) -> Image.Image:
    """One row per training image: the original, then each view the method's recipe makes of it."""
    views = method_views(config.method.model_dump(mode="json"), config.data.image_size, info.channels,
                         config.crop_scale_min(), config.data.remove_augmentations)
    picked = read_rows(config.data.path, "train", range(rows), ("image",)).column("image").to_pylist()
    images = [decode_image(data, info.channels) for data in picked]
    return _grid([[image] + [view(image=image)["image"] for view in views] for image in images])


def _heat(values: np.ndarray) -> np.ndarray:
    """[0, 1] values as a black-red-yellow heat map, HxWx3 uint8."""
    v = np.clip(values, 0, 1)
    return (np.stack([np.clip(2 * v, 0, 1), np.clip(2 * v - 1, 0, 1), np.zeros_like(v)], -1) * 255).astype(np.uint8)


def _grid(rows: list[list[np.ndarray]]) -> Image.Image:
    """The rows' images as cells of one picture (torchvision's make_grid), short rows filled with white."""
    columns = max(map(len, rows))
    blank = np.full((CELL, CELL, 3), 255, np.uint8)
    cells = [cell for row in rows
             for cell in [np.asarray(_cell(image)) for image in row] + [blank] * (columns - len(row))]
    grid = make_grid(torch.from_numpy(np.stack(cells)).permute(0, 3, 1, 2), nrow=columns, padding=4, pad_value=255)
    return Image.fromarray(grid.permute(1, 2, 0).numpy())


def _to_uint8(images: torch.Tensor, normalize) -> np.ndarray:
    """Standardised (N, C, H, W) back to uint8 (N, H, W, C)."""
    pixels = images.float() * normalize.std + normalize.mean
    return pixels.clamp(0, 255).byte().permute(0, 2, 3, 1).cpu().numpy()


def attention_grid(method, images: torch.Tensor, normalize) -> Image.Image:
    """DINO on a ViT: each image, then its last block's CLS attention, one map per head."""
    attention = last_block_cls_attention(method.backbone, normalize(images))
    attention = attention / attention.amax(dim=(2, 3), keepdim=True)
    originals = images.permute(0, 2, 3, 1).cpu().numpy()
    return _grid([[originals[i]] + [_heat(head.cpu().numpy()) for head in attention[i]] for i in range(len(images))])


def reconstruction_grid(method, images: torch.Tensor, normalize) -> Image.Image:
    """MAE: masked input, reconstruction (visible patches pasted back), original; one image per row."""
    masked, reconstructed = method.reconstruct(normalize(images))
    masked, reconstructed = _to_uint8(masked, normalize), _to_uint8(reconstructed, normalize)
    originals = images.permute(0, 2, 3, 1).cpu().numpy()
    return _grid([[masked[i], reconstructed[i], originals[i]] for i in range(len(images))])


def method_pictures(method, images: torch.Tensor, normalize) -> dict[str, Image.Image]:
    """The pictures a method has to show of itself on fixed images: {MLflow image key: picture}."""
    if isinstance(method, MAE):
        return {"mae_reconstruction": reconstruction_grid(method, images, normalize)}
    if isinstance(method, (DINO, DINOv2)) and isinstance(method.backbone, VisionTransformer):
        return {"dino_attention": attention_grid(method, images, normalize)}
    return {}
