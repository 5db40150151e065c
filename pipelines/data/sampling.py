"""Seeded random subsets of a split, stratified by class where labels exist (never "the first N rows")."""
from typing import Optional

import numpy as np


def stratified_sample(labels: np.ndarray, count: Optional[int], seed: int) -> np.ndarray:
    """Sorted positions of `count` rows drawn at random, each class in proportion to its share of `labels`
    (largest remainders get the leftover rows). Labels < 0 mark unlabelled rows, which form a class of their
    own. `count=None` or at least `len(labels)`: every position."""
    labels = np.asarray(labels)
    if count is None or count >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    classes, inverse, sizes = np.unique(labels, return_inverse=True, return_counts=True)
    exact = sizes * count / len(labels)
    quota = np.floor(exact).astype(int)
    leftover = count - quota.sum()
    quota[np.argsort(quota - exact, kind="stable")[:leftover]] += 1
    chosen = [rng.choice(np.flatnonzero(inverse == index), size, replace=False)
              for index, size in enumerate(quota) if size]
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def stratified_holdout(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(rest, held out): a stratified random `fraction` of the positions held out, the others kept."""
    held = stratified_sample(labels, round(len(labels) * fraction), seed)
    return np.setdiff1d(np.arange(len(labels)), held), held
