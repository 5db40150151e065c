"""The label-free measures of embeddings (RankMe, uniformity, alignment) on embeddings whose answer is known."""
import math

import pytest
import torch

from ssl_models.metrics import alignment, effective_rank, uniformity


def test_rankme_counts_the_directions_the_embeddings_use():
    torch.manual_seed(0)
    spread = torch.randn(4000, 64)
    assert 56 < effective_rank(spread).item() <= 64  # isotropic: nearly every one of the 64 dimensions
    line = torch.randn(4000, 1) * torch.randn(1, 64)
    assert effective_rank(line).item() == pytest.approx(1.0, abs=0.05)  # collapsed onto a line
    eight = torch.randn(4000, 8) @ torch.linalg.qr(torch.randn(64, 64))[0][:8]
    assert effective_rank(eight).item() == pytest.approx(8, rel=0.1)  # an 8-dimensional subspace of 64
    squashed = spread * torch.cat([torch.ones(8), torch.full((56,), 1e-3)])
    assert effective_rank(squashed).item() < 12  # 56 directions nearly unused


def test_uniformity_is_zero_when_collapsed_and_falls_as_embeddings_spread():
    torch.manual_seed(0)
    point = torch.ones(500, 32)
    assert uniformity(point).item() == pytest.approx(0.0, abs=1e-6)
    spread = uniformity(torch.randn(500, 32)).item()
    clustered = uniformity(torch.randn(500, 32) * 0.1 + torch.ones(32)).item()
    assert spread < clustered < 0
    # on a sphere of many dimensions, pairs are nearly orthogonal: |u - v|^2 about 2, log E exp(-2 x 2) about -4
    assert spread == pytest.approx(-4.0, abs=0.3)


def test_alignment_measures_how_far_apart_two_views_embed():
    torch.manual_seed(0)
    first = torch.randn(100, 16)
    assert alignment(first, first * 3).item() == pytest.approx(0.0, abs=1e-6)  # scale does not matter
    assert alignment(first, -first).item() == pytest.approx(4.0)
    assert 1.5 < alignment(first, torch.randn(100, 16)).item() < 2.5  # unrelated: about 2
    assert math.isfinite(alignment(first, first + 0.1 * torch.randn(100, 16)).item())
