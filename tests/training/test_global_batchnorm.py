"""GlobalBatchNorm: plain batch norm on one process, batch norm of the global batch across two Ray Train workers."""
import copy

import pytest
import torch
from timm.layers import BatchNormAct2d
from torch import nn

from ssl_models.batchnorm import GlobalBatchNorm, convert_to_global_batchnorm, normalise_views_apart
from ssl_models.distributed import world
from tests.helpers import results_of, two_worker_check


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 6),
                         nn.BatchNorm1d(6, momentum=None))


def _global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """8 images and the per-row weights of the loss (out * weights).sum()."""
    generator = torch.Generator().manual_seed(1)
    return torch.randn(8, 3, 6, 6, generator=generator) * 2 + 1, torch.randn(8, 6, generator=generator)


def _step(net: nn.Module, images: torch.Tensor, weights: torch.Tensor) -> dict:
    images = images.clone().requires_grad_()
    out = net(images)
    (out * weights).sum().backward()
    return {"out": out.detach(), "input_grad": images.grad,
            "param_grads": {name: p.grad for name, p in net.named_parameters()},
            "buffers": {name: b.clone() for name, b in net.named_buffers()}}


def test_converted_modules_match_plain_batchnorm_on_one_process():
    torch.manual_seed(0)
    for plain, shape in [(nn.BatchNorm2d(3), (5, 3, 4, 4)), (nn.BatchNorm1d(3), (5, 3)),
                         (nn.BatchNorm1d(3, momentum=None), (5, 3)), (nn.BatchNorm2d(3, affine=False), (5, 3, 4, 4))]:
        if plain.affine:
            nn.init.normal_(plain.weight)
            nn.init.normal_(plain.bias)
        converted = convert_to_global_batchnorm(copy.deepcopy(plain))
        assert type(converted) is GlobalBatchNorm and converted.affine == plain.affine
        x = torch.randn(shape) * 3 + 2
        loss_weights = torch.randn(shape)
        expected, actual = _step(plain, x, loss_weights), _step(converted, x, loss_weights)
        assert torch.equal(actual["out"], expected["out"]) and torch.equal(actual["input_grad"], expected["input_grad"])
        for name in expected["param_grads"]:
            assert torch.equal(actual["param_grads"][name], expected["param_grads"][name])
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            assert torch.equal(actual["buffers"][name], expected["buffers"][name])
        plain.eval()
        converted.eval()
        assert torch.equal(converted(x), plain(x))


def test_conversion_is_recursive_and_shares_parameters_and_buffers():
    net = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Sequential(nn.BatchNorm2d(2, eps=1e-3, momentum=0.3)),
                        BatchNormAct2d(2, act_layer=nn.ReLU))
    net[1].weight.requires_grad_(False)
    norms = [net[1], net[2][0], net[3]]
    net.eval()
    converted = convert_to_global_batchnorm(net)
    assert converted is net and not any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in net.modules())
    for old, new in zip(norms, [net[1], net[2][0], net[3]]):
        assert isinstance(new, GlobalBatchNorm) and not new.training
        assert (new.num_features, new.eps, new.momentum) == (old.num_features, old.eps, old.momentum)
        assert new.weight is old.weight and new.running_var is old.running_var
        assert new.num_batches_tracked is old.num_batches_tracked
    assert not net[1].weight.requires_grad and net[1].bias.requires_grad
    x = torch.randn(3, 2, 4, 4)
    assert torch.equal(net[3](x), norms[2](x)) and (net[3](x) >= 0).all()  # timm's activation kept
    assert convert_to_global_batchnorm(net)[1] is net[1]  # converting again changes nothing


@two_worker_check
def _two_worker_step(rank: int) -> dict:
    images, weights = _global_batch()
    rows = slice(rank * 4, (rank + 1) * 4)
    result = _step(convert_to_global_batchnorm(_net()), images[rows], weights[rows])
    return {**result, "world": torch.tensor(world()), "unconverted_out": _net()(images[rows]).detach()}


@pytest.mark.slow
def test_two_workers_normalise_with_the_global_batch(two_worker_results):
    results = results_of(two_worker_results, _two_worker_step)
    images, weights = _global_batch()
    reference = _step(_net(), images, weights)  # one process, the whole global batch, the loss over all rows
    assert all(torch.equal(results[rank]["world"], torch.tensor([rank, 2])) for rank in range(2))
    close = dict(atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(torch.cat([results[r]["out"] for r in range(2)]), reference["out"], **close)
    torch.testing.assert_close(torch.cat([results[r]["input_grad"] for r in range(2)]), reference["input_grad"],
                               **close)
    # no DDP: each worker holds its own samples' share of the gradient, and the shares add up to the whole
    for name, expected in reference["param_grads"].items():
        torch.testing.assert_close(results[0]["param_grads"][name] + results[1]["param_grads"][name], expected,
                                   **close)
        assert not torch.allclose(results[0]["param_grads"][name], expected, **close)
    for rank in range(2):
        for name, expected in reference["buffers"].items():
            torch.testing.assert_close(results[rank]["buffers"][name], expected, **close)
    # plain batch norm on each worker's half would not match the reference
    unconverted = torch.cat([results[r]["unconverted_out"] for r in range(2)])
    assert not torch.allclose(unconverted, reference["out"], atol=1e-2)


def _per_view_reference(net: nn.Module, views: list[torch.Tensor], weights: list[torch.Tensor]) -> dict:
    """Each view through the plain network on its own (as the references forward them), one loss over both."""
    inputs = [view.clone().requires_grad_() for view in views]
    outs = [net(view) for view in inputs]
    sum((out * w).sum() for out, w in zip(outs, weights)).backward()
    return {"out": torch.cat([out.detach() for out in outs]), "input_grad": torch.cat([x.grad for x in inputs]),
            "param_grads": {name: p.grad for name, p in net.named_parameters()},
            "buffers": {name: b.clone() for name, b in net.named_buffers()}}


def test_views_apart_match_each_view_through_plain_batchnorm_on_its_own():
    images, weights = _global_batch()
    shifted = torch.cat([images[:4], images[4:] * 3 + 5])  # two views with different statistics
    reference = _per_view_reference(_net(), list(shifted.chunk(2)), list(weights.chunk(2)))
    grouped = normalise_views_apart(_net(), views=2)
    assert all(m.groups == 2 and not m.across_workers for m in grouped.modules() if isinstance(m, GlobalBatchNorm))
    result = _step(grouped, shifted, weights)
    close = dict(atol=1e-5, rtol=1e-4)
    for key in ("out", "input_grad"):
        torch.testing.assert_close(result[key], reference[key], **close)
    for group in ("param_grads", "buffers"):
        for name, expected in reference[group].items():
            torch.testing.assert_close(result[group][name], expected, **close)
    assert not torch.allclose(_step(_net(), shifted, weights)["out"], reference["out"], atol=1e-2)  # one joint batch
    with pytest.raises(ValueError, match="does not split into 2 views"):
        grouped(torch.randn(5, 3, 6, 6))


@two_worker_check
def _two_worker_views_apart(rank: int) -> dict:
    images, weights = _global_batch()
    shifted = torch.cat([images[:4], images[4:] * 3 + 5])  # view 0: rows 0-3, view 1: rows 4-7, 2 of each per rank
    mine = torch.cat([shifted[rank * 2:rank * 2 + 2], shifted[4 + rank * 2:6 + rank * 2]])
    mine_weights = torch.cat([weights[rank * 2:rank * 2 + 2], weights[4 + rank * 2:6 + rank * 2]])
    net = convert_to_global_batchnorm(normalise_views_apart(_net(), views=2))
    return _step(net, mine, mine_weights)


@pytest.mark.slow
def test_views_apart_across_two_workers_normalise_each_views_global_batch(two_worker_results):
    results = results_of(two_worker_results, _two_worker_views_apart)
    images, weights = _global_batch()
    shifted = torch.cat([images[:4], images[4:] * 3 + 5])
    reference = _per_view_reference(_net(), list(shifted.chunk(2)), list(weights.chunk(2)))
    close = dict(atol=1e-5, rtol=1e-4)
    # rank r holds rows (2r, 2r+1) of view 0 then of view 1
    order = [0, 1, 4, 5, 2, 3, 6, 7]
    for key in ("out", "input_grad"):
        torch.testing.assert_close(torch.cat([results[r][key] for r in range(2)]), reference[key][order], **close)
    for name, expected in reference["param_grads"].items():
        torch.testing.assert_close(results[0]["param_grads"][name] + results[1]["param_grads"][name], expected, **close)
    for rank in range(2):
        for name, expected in reference["buffers"].items():
            torch.testing.assert_close(results[rank]["buffers"][name], expected, **close)
