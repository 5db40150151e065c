"""Evaluation of a frozen backbone: kNN top-1 against labelled data, and the collapse signal."""
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import nn

from pipelines.augment import eval_transform, to_chw
from pipelines.dataset_store import DatasetInfo, read_split
from pipelines.images import decode_image
from pipelines.knn import knn_accuracy
from ssl_models.metrics import embedding_std

HOLDOUT_FRACTION = 0.1


@dataclass
class LabelledImages:
    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) int64

    def head(self, count: int) -> "LabelledImages":
        return LabelledImages(self.images[:count], self.labels[:count])


def decode_for_eval(encoded: list[bytes], channels: int, image_size: int) -> tuple[list[np.ndarray], list[int]]:
    """Decoded, resized and centre-cropped CHW images, and the indices of the rows that decoded."""
    transform = eval_transform(image_size)
    images, kept = [], []
    for index, data in enumerate(encoded):
        try:
            images.append(to_chw(transform(image=decode_image(data, channels))["image"]))
            kept.append(index)
        except ValueError:
            continue
    return images, kept


def load_images(root: str, split: str, channels: int, image_size: int, count: int) -> torch.Tensor:
    """The first `count` readable images of a split, (N, C, H, W) uint8: fixed images for pictures."""
    images, _ = decode_for_eval(read_split(root, split, ("image",), limit=count).column("image").to_pylist(),
                                channels, image_size)
    return torch.from_numpy(np.stack(images))


def load_labelled(root: str, split: str, channels: int, image_size: int, limit: Optional[int] = None) -> LabelledImages:
    table = read_split(root, split, limit=limit)
    labels = table.column("label").to_pylist()
    labelled = [index for index, label in enumerate(labels) if label is not None]
    images, kept = decode_for_eval([table.column("image")[i].as_py() for i in labelled], channels, image_size)
    if not images:
        raise ValueError(f"split '{split}' has no labelled image")
    return LabelledImages(torch.from_numpy(np.stack(images)),
                          torch.tensor([labels[labelled[i]] for i in kept], dtype=torch.int64))


def eval_plan(info: DatasetInfo) -> tuple[Optional[str], str]:
    """How kNN is evaluated on this dataset, or why it is skipped: (query split or None, explanation)."""
    if not info.labelled:
        return None, "no labels in the dataset: kNN evaluation skipped (the run goes on)"
    if "test" in info.splits:
        return "test", "kNN: train split as memory bank, test split as queries"
    return "holdout", f"kNN: no test split, the last {HOLDOUT_FRACTION:.0%} of the train split are the queries"


def load_eval_sets(info: DatasetInfo, root: str, image_size: int, bank_size: Optional[int], query_size: Optional[int]):
    """(bank, queries), or None when the dataset has no labels."""
    query_split, _ = eval_plan(info)
    if query_split is None:
        return None
    if query_split == "test":
        bank = load_labelled(root, "train", info.channels, image_size, bank_size)
        queries = load_labelled(root, "test", info.channels, image_size, query_size)
        return bank, queries
    everything = load_labelled(root, "train", info.channels, image_size)
    cut = int(len(everything.labels) * (1 - HOLDOUT_FRACTION))
    bank = LabelledImages(everything.images[:cut], everything.labels[:cut])
    queries = LabelledImages(everything.images[cut:], everything.labels[cut:])
    return bank.head(bank_size or cut), queries.head(query_size or len(queries.labels))


class Normalizer:
    """uint8 (N, C, H, W) -> float, standardised with the dataset's channel statistics."""

    def __init__(self, mean: list[float], std: list[float], device: torch.device):
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return (images.to(self.mean.device, non_blocking=True).float() - self.mean) / self.std


@torch.no_grad()
def extract_features(backbone: nn.Module, images: torch.Tensor, normalize: Normalizer, batch_size: int, autocast=nullcontext) -> torch.Tensor:
    was_training = backbone.training
    backbone.eval()
    features = []
    for start in range(0, images.shape[0], batch_size):
        with autocast():
            features.append(backbone(normalize(images[start : start + batch_size])).float())
    backbone.train(was_training)
    return torch.cat(features)


def evaluate_backbone(
    backbone: nn.Module, bank: LabelledImages, queries: LabelledImages, num_classes: int, normalize: Normalizer,
    ks: list[int], temperature: float, batch_size: int, autocast=nullcontext,
) -> dict[str, float]:
    bank_features = extract_features(backbone, bank.images, normalize, batch_size, autocast)
    query_features = extract_features(backbone, queries.images, normalize, batch_size, autocast)
    device = bank_features.device
    metrics = {
        f"knn_top1_k{k}": knn_accuracy(bank_features, bank.labels.to(device), query_features,
                                       queries.labels.to(device), num_classes, k, temperature)
        for k in ks
    }
    metrics["feature_std"] = embedding_std(query_features)
    return metrics
