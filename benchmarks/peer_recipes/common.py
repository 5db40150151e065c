"""What both peer recipes share: Fashion-MNIST as arrays from the Debian package's files, the project's own kNN
protocol on a backbone's features, and the one line of results benchmarks/peers.py reads."""
import argparse
import gzip
import json
import time
from pathlib import Path

import numpy as np
import torch

from pipelines.features.knn import knn_accuracy

RESULT = "PEER_RESULT "
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def arguments(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--source", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--limit", type=int, default=None, help="training images (default: all 60,000)")
    parser.add_argument("--workers", type=int, default=1, help="DataLoader worker processes")
    parser.add_argument("--out", required=True, help="a folder for the peer's files")
    return parser.parse_args()


def fashion_mnist(source: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images N x 28 x 28 uint8, labels N) of 'train' or 't10k'."""
    def read(kind: str, offset: int) -> np.ndarray:
        with gzip.open(Path(source) / f"{split}-{kind}-ubyte.gz") as file:
            return np.frombuffer(file.read(), np.uint8, offset=offset).copy()
    return read("images-idx3", 16).reshape(-1, 28, 28), read("labels-idx1", 8).astype(np.int64)


@torch.no_grad()
def features(backbone: torch.nn.Module, images: np.ndarray, batch: int = 512) -> torch.Tensor:
    """The backbone's pooled features of gray images shown as RGB, normalised with ImageNet's statistics as both
    peers' transforms do."""
    backbone.eval()
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    out = []
    for start in range(0, len(images), batch):
        x = torch.from_numpy(images[start : start + batch]).float().div(255).unsqueeze(1).expand(-1, 3, -1, -1)
        out.append(backbone((x - mean) / std).flatten(start_dim=1))
    return torch.cat(out)


def knn_top1(backbone: torch.nn.Module, source: str, k: int = 20) -> float:
    """The project's final kNN (k=20, T=0.07, cosine, weighted vote): the whole train split as the bank, the whole
    test split as the queries."""
    (bank, bank_labels), (queries, query_labels) = fashion_mnist(source, "train"), fashion_mnist(source, "t10k")
    return knn_accuracy(features(backbone, bank), torch.from_numpy(bank_labels), features(backbone, queries),
                        torch.from_numpy(query_labels), num_classes=10, k=k)


def report(**figures) -> None:
    print(RESULT + json.dumps(figures), flush=True)


class Clock:
    """Seconds since it was made."""
    def __init__(self):
        self.started = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.started
