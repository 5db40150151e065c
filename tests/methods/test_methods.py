"""The mathematics of SimSiam, SimCLR, Barlow Twins and VICReg on fixed tensors, against direct computations."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ssl_models.distributed import gather_with_grad
from ssl_models.losses import barlow_twins_loss, negative_cosine, nt_xent, queue_info_nce, vicreg_loss
from tests.helpers import results_of, tiny_method, two_worker_check


def test_negative_cosine_by_hand():
    p = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    z = torch.tensor([[0.0, 3.0], [2.0, 2.0]])
    assert negative_cosine(p, z).item() == pytest.approx(-(0.0 + 1.0) / 2)


def nt_xent_direct(z1, z2, t):
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z.shape[0]
    total = 0.0
    for i in range(n):
        j = (i + n // 2) % n
        denominator = sum(math.exp(z[i] @ z[k] / t) for k in range(n) if k != i)
        total += -math.log(math.exp(z[i] @ z[j] / t) / denominator)
    return total / n


def test_nt_xent_matches_direct_computation():
    torch.manual_seed(0)
    z1, z2 = torch.randn(5, 4), torch.randn(5, 4)
    assert nt_xent(z1, z2, 0.3).item() == pytest.approx(nt_xent_direct(z1, z2, 0.3), rel=1e-5)


def test_nt_xent_on_a_worker_sees_the_global_batch():
    torch.manual_seed(0)
    all_z1, all_z2 = torch.randn(6, 4), torch.randn(6, 4)
    per_worker = [nt_xent(all_z1[r * 3:(r + 1) * 3], all_z2[r * 3:(r + 1) * 3], 0.2, all_z1, all_z2, rank=r)
                  for r in range(2)]
    # the mean over workers of their local losses is the loss of the whole global batch
    assert (sum(per_worker) / 2).item() == pytest.approx(nt_xent(all_z1, all_z2, 0.2).item(), rel=1e-5)
    assert per_worker[0].item() != pytest.approx(nt_xent(all_z1[:3], all_z2[:3], 0.2).item(), rel=1e-3)


def test_barlow_twins_matches_direct_computation():
    torch.manual_seed(0)
    z1, z2 = torch.randn(8, 3), torch.randn(8, 3)
    a = (z1 - z1.mean(0)) / z1.std(0, unbiased=False)
    b = (z2 - z2.mean(0)) / z2.std(0, unbiased=False)
    c = [[sum(a[n, i] * b[n, j] for n in range(8)) / 8 for j in range(3)] for i in range(3)]
    expected = sum((c[i][i] - 1) ** 2 for i in range(3)) + 0.01 * sum(
        c[i][j] ** 2 for i in range(3) for j in range(3) if i != j)
    assert barlow_twins_loss(z1, z2, 0.01).item() == pytest.approx(float(expected), rel=1e-5)
    identical = torch.randn(64, 3)
    assert barlow_twins_loss(identical, identical, 0.0).item() == pytest.approx(0.0, abs=1e-4)


def test_vicreg_terms_match_direct_computation():
    torch.manual_seed(0)
    z1, z2 = torch.randn(10, 4), torch.randn(10, 4) * 0.5
    out = vicreg_loss(z1, z2, 25.0, 25.0, 1.0)
    assert out["invariance"].item() == pytest.approx(((z1 - z2) ** 2).mean().item(), rel=1e-5)
    std = lambda z: torch.sqrt(z.var(0) + 1e-4)
    variance = (torch.relu(1 - std(z1)).mean() + torch.relu(1 - std(z2)).mean()) / 2
    assert out["variance"].item() == pytest.approx(variance.item(), rel=1e-5)
    def cov_term(z):
        c = torch.cov(z.T)
        return (c.pow(2).sum() - c.diagonal().pow(2).sum()) / z.shape[1]
    assert out["covariance"].item() == pytest.approx((cov_term(z1) + cov_term(z2)).item(), rel=1e-5)
    expected = 25 * out["invariance"] + 25 * out["variance"] + out["covariance"]
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("name", ["simsiam", "simclr", "barlow_twins", "vicreg", "moco"])
def test_every_method_steps_and_trains_its_whole_network(name):
    torch.manual_seed(0)
    method = tiny_method(name)
    out = method.training_step([torch.randn(6, 3, 2, 2), torch.randn(6, 3, 2, 2)], 0)
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert all(p.grad is not None for p in method.trained.parameters())


def test_simsiam_stop_gradient_blocks_the_target_branch():
    torch.manual_seed(0)
    views = [torch.randn(6, 3, 2, 2), torch.randn(6, 3, 2, 2)]
    for stop in (True, False):
        method = tiny_method("simsiam", stop_gradient=stop, predictor_hidden_dim=4)
        network, captured = method.network, {}
        network.encoder.register_forward_hook(lambda module, inputs, output: captured.update(projection=output))
        network.predictor.register_forward_hook(lambda module, inputs, output: captured.update(prediction=output))
        loss = method.training_step(views, 0)["loss"]
        projection, prediction = captured["projection"], captured["prediction"]
        total, at_prediction = torch.autograd.grad(loss, [projection, prediction], retain_graph=True)
        through_predictor, = torch.autograd.grad(prediction, projection, at_prediction)
        through_target = total - through_predictor  # the gradient the projections get as the loss's targets
        assert through_predictor.abs().max() > 1e-3
        if stop:
            assert through_target.abs().max() == 0
        else:
            assert through_target.abs().max() > 1e-3
    without_predictor = tiny_method("simsiam", predictor=False)
    assert isinstance(without_predictor.network.predictor, nn.Identity)


@two_worker_check
def _gather(rank: int):
    local = torch.full((2, 3), float(rank + 1), requires_grad=True)
    gathered = gather_with_grad(local)
    (gathered * torch.arange(4.0).view(4, 1)).sum().backward()
    return gathered.detach().clone(), local.grad.clone()


@pytest.mark.slow
def test_gather_with_grad_spans_workers_and_returns_gradients(two_worker_results):
    results = results_of(two_worker_results, _gather)
    for rank in range(2):
        gathered, grad = results[rank]
        assert torch.equal(gathered[:2], torch.ones(2, 3)) and torch.equal(gathered[2:], torch.full((2, 3), 2.0))
    # each worker's rows get the gradient summed over both workers' losses: 2 x their weight
    assert torch.equal(results[0][1], torch.tensor([[0.0] * 3, [2.0] * 3]))
    assert torch.equal(results[1][1], torch.tensor([[4.0] * 3, [6.0] * 3]))


def test_queue_info_nce_matches_direct_computation():
    torch.manual_seed(0)
    q, k, queue = torch.randn(3, 4), torch.randn(3, 4), torch.randn(5, 4)
    qn, kn, Q = F.normalize(q, dim=1), F.normalize(k, dim=1), F.normalize(queue, dim=1)
    expected = 0.0
    for i in range(3):
        positive = math.exp(qn[i] @ kn[i] / 0.2)
        negatives = sum(math.exp(qn[i] @ Q[j] / 0.2) for j in range(5))
        expected += -math.log(positive / (positive + negatives)) / 3
    assert queue_info_nce(q, k, queue, 0.2).item() == pytest.approx(expected, rel=1e-5)


def test_moco_queue_fills_in_order_and_wraps():
    method = tiny_method("moco", queue_size=5)
    keys = torch.arange(24.0).view(3, 8)
    method.enqueue(keys)
    assert torch.equal(method.queue[:3], keys) and method.queue_pointer.item() == 3
    method.enqueue(keys + 100)
    assert torch.equal(method.queue[3:], keys[:2] + 100) and torch.equal(method.queue[0], keys[2] + 100)
    assert method.queue_pointer.item() == 1


def test_moco_step_enqueues_keys_and_moves_key_encoder_by_ema():
    torch.manual_seed(0)
    method = tiny_method("moco", queue_size=16, momentum_start=0.9, momentum_end=0.9)
    optimizer = torch.optim.SGD(method.trained.parameters(), lr=0.1)
    views = [torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2)]
    torch.manual_seed(1)
    expected_keys = method.keys(views[1])
    key_before = [p.clone() for p in method.key_encoder.parameters()]
    torch.manual_seed(1)
    method.training_step(views, 0)["loss"].backward()
    assert all(p.grad is None for p in method.key_encoder.parameters())
    assert torch.allclose(method.queue[:4], expected_keys)
    optimizer.step()
    assert method.after_optimizer_step(0)["ema_momentum"] == pytest.approx(0.9)
    for before, after, query in zip(key_before, method.key_encoder.parameters(), method.query_encoder.parameters()):
        assert torch.allclose(after, 0.9 * before + 0.1 * query)


@two_worker_check
def _enqueue(rank: int):
    torch.manual_seed(0)
    method = tiny_method("moco", queue_size=8)
    method.enqueue(torch.full((2, 8), float(rank + 1)))
    return method.queue[:4].clone()


@pytest.mark.slow
def test_moco_enqueues_keys_from_every_worker(two_worker_results):
    results = results_of(two_worker_results, _enqueue)
    expected = torch.cat([torch.ones(2, 8), torch.full((2, 8), 2.0)])
    assert torch.equal(results[0], expected) and torch.equal(results[1], expected)


def test_moco_single_worker_normalises_shuffled_keys_in_sub_batches():
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.BatchNorm1d(8))  # MoCo v2's head has no BN
    method = tiny_method("moco", backbone, queue_size=16, shuffle_bn_splits=4)
    images = torch.randn(16, 3, 2, 2)
    torch.manual_seed(3)
    keys = method.keys(images)
    torch.manual_seed(3)
    order = torch.randperm(16)
    with torch.no_grad():
        by_hand = torch.cat([method.key_encoder(part) for part in images[order].tensor_split(4)])[torch.argsort(order)]
        whole_batch = method.key_encoder(images)
    assert torch.allclose(keys, F.normalize(by_hand, dim=1), atol=1e-6)
    assert not torch.allclose(keys, F.normalize(whole_batch, dim=1), atol=1e-3)


@two_worker_check
def _simclr_and_moco_steps(rank: int):
    torch.manual_seed(0)  # same weights on both workers, as DDP would give
    simclr, moco = tiny_method("simclr", temperature=0.3), tiny_method("moco", queue_size=16, shuffle_bn_splits=2)
    torch.manual_seed(10 + rank)  # different images on each worker
    views = [torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2)]
    loss = simclr.training_step(views, 0)["loss"]
    with torch.no_grad():
        z1, z2 = simclr.encoder(torch.cat(views)).split(4)  # the same single BN batch as the step
    initial_queue = moco.queue.clone()
    torch.manual_seed(5)  # the same key shuffle (drawn on rank 0, broadcast) in both calls
    keys = moco.keys(views[1])
    torch.manual_seed(5)
    moco.training_step(views, 0)
    return {"loss": loss.detach(), "z1": z1, "z2": z2, "keys": keys, "queue": moco.queue.clone(),
            "initial_queue": initial_queue}


@pytest.mark.slow
def test_simclr_negatives_and_moco_keys_span_both_workers_of_a_ray_train_run(two_worker_results):
    results = results_of(two_worker_results, _simclr_and_moco_steps)
    z1 = torch.cat([results[r]["z1"] for r in range(2)])
    z2 = torch.cat([results[r]["z2"] for r in range(2)])
    # the two workers' losses average to NT-Xent over the global batch of 8 pairs (14 negatives per anchor)
    mean_loss = (results[0]["loss"] + results[1]["loss"]).item() / 2
    assert mean_loss == pytest.approx(nt_xent_direct(z1, z2, 0.3), rel=1e-4)
    assert results[0]["loss"].item() != pytest.approx(nt_xent_direct(results[0]["z1"], results[0]["z2"], 0.3), rel=1e-3)
    # both queues took the same 8 keys: worker 0's 4 keys, then worker 1's; the rest is untouched
    keys = torch.cat([results[0]["keys"], results[1]["keys"]])
    for rank in range(2):
        assert torch.allclose(results[rank]["queue"][:8], keys, atol=1e-6)
        assert torch.equal(results[rank]["queue"][8:], results[rank]["initial_queue"][8:])
