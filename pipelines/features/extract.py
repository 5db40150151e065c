"""A frozen backbone's features: the labelled images evaluation reads (decoded, resized, centre-cropped), their
embeddings, kNN top-1 against labelled data, and the collapse signal."""
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import nn

from pipelines.data.augment import eval_transform
from pipelines.data.augment_batch import to_chw
from pipelines.data.decode import decode_image
from pipelines.data.sampling import stratified_holdout, stratified_sample
from pipelines.data.store import DatasetInfo, read_rows, split_labels
from pipelines.features.knn import knn_accuracy
from ssl_models.metrics import effective_rank, embedding_std, uniformity

HOLDOUT_FRACTION = 0.1


@dataclass
class LabelledImages:
    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) int64


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
    encoded = read_rows(root, split, range(count), ("image",)).column("image").to_pylist()
    images, _ = decode_for_eval(encoded, channels, image_size)
    return torch.from_numpy(np.stack(images))


def load_labelled(root: str, split: str, channels: int, image_size: int, rows) -> LabelledImages:
    """The labelled images at positions `rows` of a split, decoded for evaluation."""
    table = read_rows(root, split, rows)
    labels = table.column("label").to_pylist()
    images, kept = decode_for_eval(table.column("image").to_pylist(), channels, image_size)
    if not images:
        raise ValueError(f"split '{split}' has no labelled image")
    return LabelledImages(torch.from_numpy(np.stack(images)), torch.tensor([labels[i] for i in kept], dtype=torch.int64))


def eval_plan(info: DatasetInfo) -> tuple[Optional[str], str]:
    """How kNN is evaluated on this dataset, or why it is skipped: (query split or None, explanation)."""
    if not info.labelled:
        return None, "no labels in the dataset: kNN evaluation skipped (the run goes on)"
    if "test" in info.splits:
        return "test", "kNN: train split as memory bank, test split as queries"
    return "holdout", (f"kNN: no test split, a random {HOLDOUT_FRACTION:.0%} of the train split (stratified, "
                       "seeded) are the queries, the rest the memory bank")


def labelled_positions(root: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(positions, labels) of the split's rows that have a label."""
    labels = split_labels(root, split)
    positions = np.flatnonzero(labels >= 0)
    return positions, labels[positions]


def eval_rows(info: DatasetInfo, root: str, bank_size: Optional[int], query_size: Optional[int],
              seed: int = 0) -> Optional[tuple[tuple[str, np.ndarray], tuple[str, np.ndarray]]]:
    """((split, rows) of the memory bank, (split, rows) of the queries): seeded random subsets, stratified
    by class; None when the dataset has no labels."""
    query_split, _ = eval_plan(info)
    if query_split is None:
        return None
    bank_positions, bank_labels = labelled_positions(root, "train")
    if query_split == "test":
        query_positions, query_labels = labelled_positions(root, "test")
    else:
        rest, held = stratified_holdout(bank_labels, HOLDOUT_FRACTION, seed)
        query_positions, query_labels = bank_positions[held], bank_labels[held]
        bank_positions, bank_labels = bank_positions[rest], bank_labels[rest]
    bank = bank_positions[stratified_sample(bank_labels, bank_size, seed)]
    queries = query_positions[stratified_sample(query_labels, query_size, seed + 1)]
    return ("train", bank), ("train" if query_split == "holdout" else "test", queries)


def load_eval_sets(info: DatasetInfo, root: str, image_size: int, bank_size: Optional[int], query_size: Optional[int],
                   seed: int = 0):
    """(bank, queries) as decoded images, or None when the dataset has no labels."""
    plan = eval_rows(info, root, bank_size, query_size, seed)
    if plan is None:
        return None
    return tuple(load_labelled(root, split, info.channels, image_size, rows) for split, rows in plan)


class Normalizer:
    """uint8 (N, C, H, W) -> float, standardised with the dataset's channel statistics."""

    def __init__(self, mean: list[float], std: list[float], device: torch.device):
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        normalized = (images.to(self.mean.device, non_blocking=True).float() - self.mean) / self.std
        if self.mean.device.type == "cuda":  # convolutions run fastest on NHWC there
            return normalized.contiguous(memory_format=torch.channels_last)
        return normalized


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
    metrics["feature_std"] = embedding_std(query_features).item()
    return {**metrics, **label_free_metrics(query_features)}


UNIFORMITY_SAMPLE = 1000  # its pairs cost N^2 x D: 1,000 features of 2,048 take a second on a CPU core


def label_free_metrics(features: torch.Tensor) -> dict[str, float]:
    """Measures of the embeddings that need no labels: `rankme` (their effective rank) and `uniformity`."""
    return {"rankme": effective_rank(features).item(), "uniformity": uniformity(features[:UNIFORMITY_SAMPLE]).item()}


def load_sample(info: DatasetInfo, root: str, split: str, image_size: int, count: int, seed: int = 0) -> torch.Tensor:
    """`count` images of a split drawn at random (seeded), (N, C, H, W) uint8: the label-free measures' images."""
    total, channels = info.splits[split], info.channels
    rows = np.sort(np.random.default_rng(seed).choice(total, min(count, total), replace=False))
    images, _ = decode_for_eval(read_rows(root, split, rows, ("image",)).column("image").to_pylist(), channels,
                                image_size)
    return torch.from_numpy(np.stack(images))

