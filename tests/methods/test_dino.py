import pytest
import torch
import torch.nn.functional as F

from ssl_models import backbone_spec, create_backbone
from ssl_models.dino import DINOHead, dino_loss, teacher_temperature_schedule, view_pairs
from tests.helpers import results_of, tiny_method, two_worker_check


def test_pairs_skip_only_identical_views():
    pairs = view_pairs(2, 8)
    assert len(pairs) == 2 * 8 - 2
    assert (0, 0) not in pairs and (1, 1) not in pairs
    assert (0, 1) in pairs and (1, 0) in pairs and (1, 7) in pairs


def test_dino_loss_matches_direct_computation():
    torch.manual_seed(0)
    batch, dim, views = 3, 5, 4
    student = torch.randn(views * batch, dim)
    teacher = F.softmax(torch.randn(2 * batch, dim), dim=-1)
    expected, count = 0.0, 0
    for t in range(2):
        for s in range(views):
            if s == t:
                continue
            log_p = F.log_softmax(student[s * batch:(s + 1) * batch] / 0.1, dim=-1)
            expected += -(teacher[t * batch:(t + 1) * batch] * log_p).sum(-1).mean()
            count += 1
    assert dino_loss(student, teacher, views, 0.1).item() == pytest.approx((expected / count).item(), rel=1e-5)


def test_teacher_temperature_warms_up_linearly_then_holds():
    schedule = teacher_temperature_schedule(0.04, 0.07, warmup_steps=4, total_steps=10)
    assert torch.allclose(schedule[:4], torch.tensor([0.04, 0.05, 0.06, 0.07], dtype=torch.float64))
    assert (schedule[4:] == 0.07).all() and len(schedule) == 10


def test_center_is_an_ema_of_the_teacher_mean():
    method = tiny_method("dino", center_momentum=0.9)
    output = torch.tensor([[1.0] * 16, [3.0] * 16])
    method.update_center(output)
    assert torch.allclose(method.center, torch.full((1, 16), 0.1 * 2.0))
    method.update_center(output)
    assert torch.allclose(method.center, torch.full((1, 16), 0.9 * 0.2 + 0.1 * 2.0))


def test_teacher_sees_global_crops_only_and_student_one_pass_per_resolution():
    torch.manual_seed(0)
    method = tiny_method("dino", num_local_crops=3)
    calls = []
    method.student.backbone.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape))
    teacher_calls = []
    method.teacher.backbone.register_forward_hook(lambda module, inputs, output: teacher_calls.append(inputs[0].shape))
    views = [torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)] + [torch.randn(4, 3, 4, 4) for _ in range(3)]
    out = method.training_step(views, 0)
    assert calls == [(8, 3, 8, 8), (12, 3, 4, 4)]
    assert teacher_calls == [(8, 3, 8, 8)]
    assert torch.isfinite(out["loss"]) and out["teacher_temperature"] == pytest.approx(0.04)


def test_last_layer_frozen_for_the_first_steps_and_weight_norm_fixed():
    head = DINOHead(8, 16, 32, 8)
    assert not head.last_layer.parametrizations.weight.original0.requires_grad
    method = tiny_method("dino", num_local_crops=0, freeze_last_layer_steps=2)
    views = [torch.randn(4, 3, 4, 4), torch.randn(4, 3, 4, 4)]
    last = method.student.head.last_layer.parametrizations.weight.original1
    method.training_step(views, 0)["loss"].backward()
    method.after_backward(step=1)
    assert last.grad is None
    method.training_step(views, 2)["loss"].backward()
    method.after_backward(step=2)
    assert last.grad is not None


def test_teacher_follows_student_by_ema():
    method = tiny_method("dino", momentum_start=0.5, momentum_end=0.5)
    with torch.no_grad():
        for p in method.student.parameters():
            p.add_(1.0)
    before = [p.clone() for p in method.teacher.parameters()]
    method.after_optimizer_step(0)
    for b, t, s in zip(before, method.teacher.parameters(), method.student.parameters()):
        assert torch.allclose(t, 0.5 * b + 0.5 * s)


@pytest.mark.parametrize("name, kwargs", [("resnet18", {}), ("vit_tiny_patch16_224", {"patch_size": 4})])
def test_dino_steps_with_resnets_and_vits(name, kwargs):
    torch.manual_seed(0)
    backbone, width = create_backbone(backbone_spec(name, in_chans=1, image_size=28, **kwargs))
    method = tiny_method("dino", backbone, width, out_dim=64, head_hidden_dim=64, bottleneck_dim=32, num_local_crops=2)
    views = [torch.randn(2, 1, 28, 28), torch.randn(2, 1, 28, 28), torch.randn(2, 1, 12, 12), torch.randn(2, 1, 12, 12)]
    trained = {key: p for key, p in method.student.named_parameters() if p.requires_grad}
    student_before = {key: p.detach().clone() for key, p in trained.items()}
    teacher_before = [p.clone() for p in method.teacher.parameters()]
    loss = method.training_step(views, 0)["loss"]
    assert loss.shape == () and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trained.values())
    assert all(not p.requires_grad and p.grad is None for p in method.teacher.parameters())
    torch.optim.SGD(trained.values(), lr=0.1).step()
    changed = {key for key, p in trained.items() if not torch.equal(p, student_before[key])}
    assert changed == {key for key, p in trained.items() if p.grad.any()}  # timm zero-initialises each ResNet
    assert {key.split(".")[0] for key in changed} == {"backbone", "head"}  # block's last norm: no gradient within
    assert all(torch.equal(a, b) for a, b in zip(teacher_before, method.teacher.parameters()))
    with torch.no_grad():
        assert method.student(views).shape == (8, 64) and method.teacher(views[:2]).shape == (4, 64)
        assert method.backbone(views[0]).shape == (2, width)


@two_worker_check
def _center(rank: int):
    method = tiny_method("dino", center_momentum=0.5)
    method.update_center(torch.full((3, 16), float(rank)))  # rank 0: zeros, rank 1: ones
    return method.center.clone()


@pytest.mark.slow
def test_center_is_all_reduced_across_workers(two_worker_results):
    results = results_of(two_worker_results, _center)
    # global mean over both workers' 6 rows is 0.5; EMA from 0 with momentum 0.5 gives 0.25 on both
    assert torch.allclose(results[0], torch.full((1, 16), 0.25)) and torch.equal(results[0], results[1])


def test_attention_maps_are_the_cls_rows_of_the_last_blocks_softmax_and_leave_the_model_as_it_was():
    from ssl_models import backbone_spec, create_backbone
    from ssl_models.attention import last_block_cls_attention

    torch.manual_seed(0)
    vit, _ = create_backbone(backbone_spec("vit_tiny_patch16_224", in_chans=1, image_size=28, patch_size=4))
    images = torch.randn(3, 1, 28, 28)
    maps = last_block_cls_attention(vit, images)
    assert maps.shape == (3, 3, 7, 7)
    assert vit.training and vit.blocks[-1].attn.fused_attn and not vit.blocks[-1].attn._forward_hooks
    block, captured = vit.blocks[-1], {}  # by hand: softmax(q k^T / sqrt(d)) of the last block's input
    handle = block.attn.register_forward_pre_hook(lambda module, args: captured.setdefault("x", args[0]))
    with torch.no_grad():
        vit.eval()(images)
    handle.remove()
    x, attention = captured["x"], block.attn
    qkv = attention.qkv(x).reshape(3, x.shape[1], 3, attention.num_heads, attention.head_dim).permute(2, 0, 3, 1, 4)
    weights = (qkv[0] * attention.scale @ qkv[1].transpose(-2, -1)).softmax(-1)
    assert torch.allclose(maps, weights[:, :, 0, 1:].reshape(3, 3, 7, 7), atol=1e-6)
