"""DINOv2's terms against direct computations: KoLeo, Sinkhorn-Knopp, the masked patch loss, the masks; two real
Ray Train workers keep the same teacher and centres."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipelines.config.load import load_config
from pipelines.training.methods import build_method
from ssl_models import DINOv2, backbone_spec, create_backbone
from ssl_models.block_masks import crop_masks, with_positions
from ssl_models.dino import DINOHead
from ssl_models.dinov2 import koleo_loss, masked_patch_loss, masked_tokens, sinkhorn_knopp
from ssl_models.mask_sampling import block_mask
from ssl_models.schedules import value_at
from tests.helpers import results_of, tiny_method, two_worker_check


def test_koleo_is_minus_the_mean_log_distance_to_the_nearest_neighbour():
    torch.manual_seed(0)
    features = torch.randn(7, 5)
    unit = [f / f.norm() for f in features]
    expected = -sum(math.log(min((unit[i] - unit[j]).norm().item() for j in range(7) if j != i)) for i in range(7)) / 7
    assert koleo_loss(features).item() == pytest.approx(expected, rel=1e-5)
    spread, bunched = torch.eye(4), torch.eye(4) * 0.01 + torch.tensor([1.0, 0, 0, 0])
    assert koleo_loss(spread) < koleo_loss(bunched)  # minimising it spreads the features


def test_koleo_gradient_is_finite_for_duplicates():
    features = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    koleo_loss(features).backward()
    assert torch.isfinite(features.grad).all()


def test_sinkhorn_knopp_gives_each_sample_a_distribution_and_each_prototype_an_equal_share():
    torch.manual_seed(0)
    output = torch.randn(12, 4) * 0.5 + torch.tensor([1.0, 0.0, 0.0, 0.0])  # prototype 0 favoured
    q = sinkhorn_knopp(output, 0.1, iterations=100)
    assert torch.allclose(q.sum(dim=1), torch.ones(12), atol=1e-5)
    assert torch.allclose(q.sum(dim=0), torch.full((4,), 12 / 4), atol=1e-3)
    three = sinkhorn_knopp(output, 0.1).sum(dim=0)
    softmax = F.softmax(output / 0.1, dim=-1).sum(dim=0)
    assert (three - 3).abs().max() < (softmax - 3).abs().max()


def test_masked_patch_loss_is_the_per_image_mean_over_masked_tokens_then_the_mean_over_images():
    torch.manual_seed(0)
    student, teacher = torch.randn(3, 5, 6), F.softmax(torch.randn(3, 5, 6), dim=-1)
    masks = torch.tensor([[1, 0, 1, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.bool)
    expected = 0.0
    for image in range(3):
        positions = masks[image].nonzero().flatten().tolist()
        if positions:
            expected += sum(-(teacher[image, p] * F.log_softmax(student[image, p], -1)).sum() for p in positions) / len(positions)
    located = with_positions(masks, "cpu")
    assert torch.equal(masked_tokens(student, located), student[masks])  # the gather keeps the boolean index's order
    loss = masked_patch_loss(masked_tokens(student, located), masked_tokens(teacher, located), located)
    assert loss.item() == pytest.approx(expected.item() / 3, rel=1e-5)


@pytest.mark.parametrize("shape", ["blocks", "random"])
def test_masks_hide_the_asked_share_of_crops_at_stratified_ratios_in_random_order(shape):
    torch.manual_seed(0)
    masks = crop_masks(2000, 7, 7, 0.5, 0.1, 0.5, shape)
    ratios = masks.float().mean(dim=1)
    masked = ratios > 0
    assert masked.sum() == 1000 and 400 < masked[:1000].sum() < 600
    assert ratios[masked].min() >= int(0.1 * 49) / 49 and ratios.max() <= 0.5
    spread = ratios[masked].sort().values
    assert spread[100] < 0.15 and spread[500] == pytest.approx(0.3, abs=0.03) and spread[900] > 0.4


def boundary(mask: np.ndarray) -> int:
    """Adjacent patch pairs with one masked and one not."""
    return int((mask[1:] != mask[:-1]).sum() + (mask[:, 1:] != mask[:, :-1]).sum())


def test_block_masks_mask_exactly_the_count_in_compact_blocks():
    rng = np.random.default_rng(0)
    counts = rng.integers(1, 25, 300)
    blocks = [block_mask(7, 7, int(count), rng, max_block=24) for count in counts]
    assert [int(mask.sum()) for mask in blocks] == counts.tolist()
    scattered = []
    for count in counts:
        mask = np.zeros(49, dtype=bool)
        mask[rng.choice(49, count, replace=False)] = True
        scattered.append(mask.reshape(7, 7))
    assert sum(map(boundary, blocks)) < 0.6 * sum(map(boundary, scattered))


def tiny_dinov2(**kwargs):
    vit, width = create_backbone(backbone_spec("vit_tiny_patch16_224", in_chans=1, image_size=28, patch_size=4))
    return tiny_method("dinov2", vit, width, num_local_crops=2, **kwargs)


def views(batch=4):
    return [torch.randn(batch, 1, 28, 28), torch.randn(batch, 1, 28, 28),
            torch.randn(batch, 1, 12, 12), torch.randn(batch, 1, 12, 12)]


def test_masked_patches_reach_the_student_as_the_mask_token_and_only_they_enter_the_patch_loss():
    torch.manual_seed(0)
    method = tiny_dinov2(mask_probability=1.0).eval()
    images = torch.randn(2, 1, 28, 28)
    masks = crop_masks(2, 7, 7, 1.0, 0.3, 0.3)
    grid = masks.view(2, 7, 7).repeat_interleave(4, 1).repeat_interleave(4, 2).unsqueeze(1)
    changed = torch.where(grid, torch.randn_like(images), images)  # new pixels under the masks only
    with torch.no_grad():
        before, after = method.student.tokens(images, masks), method.student.tokens(changed, masks)
        unmasked = method.student.tokens(changed)
    assert torch.allclose(before[1], after[1], atol=1e-5) and torch.allclose(before[0], after[0], atol=1e-5)
    assert not torch.allclose(unmasked[1], before[1], atol=1e-3)
    seen = []
    method.student.patch_head.register_forward_hook(lambda module, inputs, output: seen.append(len(inputs[0])))
    given = crop_masks(8, 7, 7, 1.0, 0.3, 0.3).view(2, 4, 49).transpose(0, 1)  # as the batch brings them: (N, 2, P)
    method.training_step(views(), 0, masks=given)
    assert seen == [8 * int(0.3 * 49)]


def test_masks_the_batch_brings_are_the_steps_and_none_are_drawn_then(monkeypatch):
    import ssl_models.dinov2

    torch.manual_seed(0)
    method = tiny_dinov2()
    given = crop_masks(8, 7, 7, 0.5, 0.1, 0.5).view(2, 4, 49).transpose(0, 1)
    monkeypatch.setattr(ssl_models.dinov2, "crop_masks", lambda *args: pytest.fail("masks drawn in the step"))
    out = method.training_step(views(), 0, masks=given)
    assert out["masked_share"].item() == pytest.approx(given.float().mean().item())
    crops = torch.cat(views()[:2])
    used = method.crop_masks(crops, given)  # image i's first crop is row i, its second row 4 + i, as torch.cat(views[:2])
    assert torch.equal(used.grid[:4], given[:, 0]) and torch.equal(used.grid[4:], given[:, 1])
    with pytest.raises(ValueError, match=r"the batch's masks are \(4, 2, 16\), the crops have 7 x 7 patches"):
        method.training_step(views(), 0, masks=torch.zeros(4, 2, 16, dtype=torch.bool))


def test_a_step_trains_every_term_and_freezes_both_last_layers_at_first():
    torch.manual_seed(0)
    method = tiny_dinov2(freeze_last_layer_steps=1)
    out = method.training_step(views(), 0)
    for term in ("dino_loss", "ibot_loss", "koleo_loss"):
        assert torch.isfinite(out[term]) and out[term] > 0
    out["loss"].backward()
    method.after_backward(0)
    assert method.student.head.last_layer.parametrizations.weight.original1.grad is None
    assert method.student.patch_head.last_layer.parametrizations.weight.original1.grad is None
    assert method.student.mask_token.grad is not None and method.student.backbone.blocks[0].attn.qkv.weight.grad is not None
    before = method.teacher.backbone.blocks[0].attn.qkv.weight.clone()
    with torch.no_grad():
        method.student.backbone.blocks[0].attn.qkv.weight.add_(1.0)
    method.after_optimizer_step(0)
    assert torch.allclose(method.teacher.backbone.blocks[0].attn.qkv.weight, before + (1 - 0.992) * 1.0, atol=1e-6)
    assert method.backbone is method.teacher.backbone


def test_the_heads_weight_norm_scale_trains_as_in_dinov2_and_stays_frozen_in_dino():
    torch.manual_seed(0)
    method = tiny_dinov2(freeze_last_layer_steps=0)
    method.training_step(views(), 0)["loss"].backward()
    method.after_backward(0)
    for head in (method.student.head, method.student.patch_head):
        scale = head.last_layer.parametrizations.weight.original0
        assert scale.requires_grad and scale.grad is not None and scale.grad.abs().sum() > 0
    dino_head = DINOHead(16, 8, 16, 4)
    assert not dino_head.last_layer.parametrizations.weight.original0.requires_grad


def test_tied_heads_and_dinos_centring_are_options():
    torch.manual_seed(0)
    method = tiny_dinov2(separate_patch_head=False, centering="ema")
    assert method.student.patch_head is method.student.head and len(method.frozen_last_layers()) == 1
    method.training_step(views(), 0)["loss"].backward()
    assert method.center.abs().sum() > 0 and torch.equal(method.patch_center, method.center) is False


def test_the_teacher_temperature_warms_up_from_0_04_over_30_percent_of_any_run_unless_set():
    """A `--method dinov2` run (no preset) of 10 epochs of 10 steps: 0.04 at step 0, 0.07 from step 30 on (the
    reference: 30 of 100 epochs); an explicit warm-up is kept, 0 among them."""
    base = ["method.name=dinov2", "model.backbone=vit_tiny_patch16_224", "model.patch_size=4", "data.image_size=28",
            "method.out_dim=32", "method.patch_out_dim=16", "train.epochs=10"]
    schedule = build_method(load_config(None, base), 1, 10).teacher_temperatures
    assert schedule[0].item() == pytest.approx(0.04) and 0.05 < schedule[15].item() < 0.06
    assert value_at(schedule, 30) == pytest.approx(0.07) and value_at(schedule, 99) == pytest.approx(0.07)
    none = build_method(load_config(None, [*base, "method.teacher_temperature_warmup_epochs=0"]), 1, 10)
    assert value_at(none.teacher_temperatures, 0) == pytest.approx(0.07)
    longer = build_method(load_config(None, [*base, "method.teacher_temperature_warmup_epochs=5"]), 1, 10)
    assert value_at(longer.teacher_temperatures, 40) < 0.069 and value_at(longer.teacher_temperatures, 50) == pytest.approx(0.07)


def test_a_resnet_is_refused():
    resnet, width = create_backbone(backbone_spec("resnet18", in_chans=1))
    with pytest.raises(ValueError, match="VisionTransformer"):
        DINOv2(resnet, width, 10)


@two_worker_check
def _sinkhorn(rank: int):
    torch.manual_seed(0)
    output = torch.randn(8, 6)
    return sinkhorn_knopp(output[rank * 4:(rank + 1) * 4], 0.1)


@pytest.mark.slow
def test_sinkhorn_knopp_balances_the_global_batch_across_workers(two_worker_results):
    results = results_of(two_worker_results, _sinkhorn)
    torch.manual_seed(0)
    alone = sinkhorn_knopp(torch.randn(8, 6), 0.1)
    assert torch.allclose(torch.cat([results[0], results[1]]), alone, atol=1e-5)


TINY = ["method.name=dinov2", "model.backbone=vit_tiny_patch16_224", "model.patch_size=4", "method.out_dim=32",
        "method.patch_out_dim=32", "method.head_hidden_dim=32", "method.bottleneck_dim=8", "method.num_local_crops=2",
        "method.local_crop_size=12", "data.batch_size=4", "train.num_workers=2", "optim.warmup_epochs=0"]


@two_worker_check
def _dinov2_step(rank: int) -> dict:
    """A training step on each rank's own images, with the paper's Sinkhorn-Knopp centring and with DINO's EMA
    centres; the state outside DDP (teacher, centres) afterwards."""
    import ray.train.torch

    from pipelines.training.step import TrainStep, prepare

    results = {}
    for centering in ("sinkhorn_knopp", "ema"):
        config = load_config(None, [*TINY, f"method.centering={centering}"])
        torch.manual_seed(100 + rank)  # as the loop does: each rank seeds seed + rank, so initialisations differ
        own_init = build_method(config, 1, 10).teacher.backbone.patch_embed.proj.weight.detach().clone()
        torch.manual_seed(100 + rank)
        prepared = prepare(config, 1, 10, torch.device("cpu"), wrap=ray.train.torch.prepare_model)
        method = prepared.method
        teacher_before = method.teacher.backbone.blocks[0].attn.qkv.weight.detach().clone()
        torch.manual_seed(200 + rank)  # different images (and masks) on each rank
        loss = TrainStep(config, method, prepared.optimizer, 10, torch.device("cpu"))(views(), 0)["loss"]
        in_ddp = {id(buffer) for buffer in method.trained.buffers()}
        results[centering] = {
            "own_init": own_init, "loss": loss,
            "teacher_moved": not torch.equal(teacher_before, method.teacher.backbone.blocks[0].attn.qkv.weight),
            "outside_ddp": {name: tensor.detach().clone()
                            for name, tensor in [*method.named_parameters(), *method.named_buffers()]
                            if id(tensor) not in in_ddp}}
    return results


@pytest.mark.slow
def test_after_a_step_on_two_workers_every_rank_holds_the_same_teacher_and_centres(two_worker_results):
    results = results_of(two_worker_results, _dinov2_step)
    for centering in ("sinkhorn_knopp", "ema"):
        ranks = [results[0][centering], results[1][centering]]
        # each rank built its own teacher before the start-up broadcast, and trained on its own images
        assert not torch.equal(ranks[0]["own_init"], ranks[1]["own_init"])
        assert ranks[0]["loss"].item() != ranks[1]["loss"].item() and ranks[0]["teacher_moved"]
        names = ranks[0]["outside_ddp"].keys()
        assert any(n.startswith("teacher.") for n in names) and {"center", "patch_center"} <= set(names)
        assert ranks[1]["outside_ddp"].keys() == names
        for name in names:
            assert torch.equal(ranks[0]["outside_ddp"][name], ranks[1]["outside_ddp"][name]), f"{centering}: {name}"
    # DINO's centres move with the teacher's output over the global batch; Sinkhorn-Knopp needs none
    assert results[0]["ema"]["outside_ddp"]["center"].abs().sum() > 0
    assert results[0]["ema"]["outside_ddp"]["patch_center"].abs().sum() > 0
    assert results[0]["sinkhorn_knopp"]["outside_ddp"]["center"].abs().sum() == 0
