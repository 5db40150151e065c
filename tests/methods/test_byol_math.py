import math

import pytest
import torch
from torch import nn

from ssl_models.ema import update_momentum
from ssl_models.losses import normalized_regression_loss
from ssl_models.metrics import embedding_std
from ssl_models.schedules import cosine_schedule, warmup_cosine_schedule
from tests.helpers import tiny_method


def test_regression_loss_matches_hand_computation():
    p = torch.tensor([[1.0, 0.0], [3.0, 4.0]])
    z = torch.tensor([[0.0, 2.0], [3.0, 4.0]])
    # first pair orthogonal: 2 - 2*0 = 2; second identical direction: 0; mean = 1
    assert normalized_regression_loss(p, z).item() == pytest.approx(1.0)
    opposite = normalized_regression_loss(torch.tensor([[1.0, 1.0]]), torch.tensor([[-2.0, -2.0]]))
    assert opposite.item() == pytest.approx(4.0)


def test_regression_loss_stops_gradient_into_target():
    p = torch.randn(4, 3, requires_grad=True)
    z = torch.randn(4, 3, requires_grad=True)
    normalized_regression_loss(p, z).backward()
    assert p.grad is not None and z.grad is None


def test_ema_update_matches_hand_computation():
    online, target = nn.Linear(2, 1), nn.Linear(2, 1)
    with torch.no_grad():
        online.weight.copy_(torch.tensor([[1.0, 2.0]]))
        online.bias.fill_(3.0)
        target.weight.copy_(torch.tensor([[0.0, 0.0]]))
        target.bias.fill_(1.0)
    update_momentum(target, online, 0.9)
    assert torch.allclose(target.weight, torch.tensor([[0.1, 0.2]]))
    assert target.bias.item() == pytest.approx(0.9 * 1.0 + 0.1 * 3.0)


def test_cosine_momentum_schedule():
    schedule = cosine_schedule(0.99, 1.0, 101)
    assert schedule[0].item() == pytest.approx(0.99)
    assert schedule[50].item() == pytest.approx(0.995)
    assert schedule[-1].item() == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(schedule[:-1], schedule[1:]))
    # BYOL's formula: 1 - (1 - tau_base) * (cos(pi k / K) + 1) / 2
    k, big_k = 30, 100
    assert schedule[k].item() == pytest.approx(1 - 0.01 * (math.cos(math.pi * k / big_k) + 1) / 2)


def test_warmup_cosine_lr_schedule():
    lrs = warmup_cosine_schedule(1.0, 0.0, total_steps=20, warmup_steps=5)
    assert len(lrs) == 20
    assert lrs[0].item() == 0.0 and lrs[5].item() == pytest.approx(1.0)
    assert lrs[4].item() == pytest.approx(0.8)
    assert lrs[-1].item() == pytest.approx(0.0)


def test_byol_step_trains_online_only_and_moves_target_by_ema():
    torch.manual_seed(0)
    method = tiny_method("byol", projection_dim=4)
    optimizer = torch.optim.SGD(method.trained.parameters(), lr=0.1)
    target_before = [p.clone() for p in method.target.parameters()]
    online_before = [p.clone() for p in method.online.encoder.parameters()]
    views = [torch.randn(6, 3, 2, 2), torch.randn(6, 3, 2, 2)]
    out = method.training_step(views, step=0)
    out["loss"].backward()
    assert all(p.grad is None for p in method.target.parameters())
    optimizer.step()
    logged = method.after_optimizer_step(0)
    assert logged["ema_momentum"] == pytest.approx(0.99)
    online_after = list(method.online.encoder.parameters())
    for t_before, t_after, o_before, o_after in zip(target_before, method.target.parameters(), online_before, online_after):
        assert torch.allclose(t_after, 0.99 * t_before + 0.01 * o_after)
        assert not torch.equal(o_before, o_after)


def test_byol_loss_is_symmetric_sum_of_both_directions():
    torch.manual_seed(1)
    method = tiny_method("byol", projection_dim=4)
    v1, v2 = torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2)
    loss = method.training_step([v1, v2], 0)["loss"]
    p, _ = method.online(torch.cat([v1, v2]))
    t = method.target(torch.cat([v1, v2]))
    expected = normalized_regression_loss(p[:4], t[4:]) + normalized_regression_loss(p[4:], t[:4])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_embedding_std_detects_collapse():
    assert embedding_std(torch.ones(32, 16)).item() == pytest.approx(0.0, abs=1e-6)
    healthy = embedding_std(torch.randn(4096, 16)).item()
    assert healthy == pytest.approx(1 / math.sqrt(16), rel=0.1)
