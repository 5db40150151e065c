"""Each method trains as its paper (and reference code) trains it: the recipe details that change results."""
import pytest
import torch
from timm.layers import DropPath
from torch import nn

from pipelines.config.load import load_config
from pipelines.config.section import ConfigError
from pipelines.training.methods import build_method
from pipelines.training.optimizer import build_optimizer
from pipelines.training.step import TrainStep, clip_each_module, clip_each_parameter
from ssl_models import DINO, SimSiam
from tests.helpers import tiny_method

CPU = torch.device("cpu")
SMALL_DINO = ["method.name=dino", "method.out_dim=64", "method.head_hidden_dim=64", "method.bottleneck_dim=32",
              "method.num_local_crops=2", "method.local_crop_size=12", "data.batch_size=8"]
VIT = ["model.backbone=vit_tiny_patch16_224", "model.patch_size=4"]


def test_dino_evaluates_and_exports_the_teacher_and_initialises_its_head_as_the_reference():
    method = build_method(load_config(None, SMALL_DINO + ["method.head_hidden_dim=1024"]), 1, 10)
    assert isinstance(method, DINO) and method.backbone is method.teacher.backbone
    for layer in [m for m in method.student.head.mlp if isinstance(m, nn.Linear)]:
        assert torch.count_nonzero(layer.bias) == 0
        assert layer.weight.std().item() == pytest.approx(0.02, rel=0.1)  # truncated normal, std 0.02


def test_dino_teacher_keeps_its_own_batchnorm_statistics_and_takes_only_the_ema_of_parameters():
    torch.manual_seed(0)
    method = build_method(load_config(None, SMALL_DINO), 1, 10)  # ResNet-18: BatchNorm
    views = [torch.randn(8, 1, 28, 28) + 3, torch.randn(8, 1, 28, 28) + 3] + [torch.randn(8, 1, 12, 12)] * 2
    method.training_step(views, 0)
    method.after_optimizer_step(0)
    teacher_bn, student_bn = method.teacher.backbone.bn1, method.student.backbone.bn1
    # each moved by its own forward passes (the teacher: global crops only), not copied from the student
    assert not torch.equal(teacher_bn.running_mean, student_bn.running_mean)
    assert teacher_bn.running_mean.abs().sum() > 0


def test_moco_v2_head_has_no_batchnorm_and_its_key_encoder_keeps_its_own_statistics():
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.BatchNorm1d(8))
    method = tiny_method("moco", backbone, queue_size=16, shuffle_bn_splits=1)
    head = method.query_encoder[1]
    assert [type(m) for m in head] == [nn.Linear, nn.ReLU, nn.Linear]
    method.training_step([torch.randn(6, 3, 2, 2), torch.randn(6, 3, 2, 2) + 5], 0)
    method.after_optimizer_step(0)
    assert not torch.equal(method.key_encoder[0][2].running_mean, method.query_encoder[0][2].running_mean)


def test_dino_student_vit_drops_paths_at_0_1_and_its_teacher_drops_none():
    dino = build_method(load_config(None, SMALL_DINO + VIT), 1, 10)
    rates = [m.drop_prob for m in dino.student.backbone.modules() if isinstance(m, DropPath)]
    assert rates and max(rates) == pytest.approx(0.1)
    assert all(m.drop_prob == 0 for m in dino.teacher.backbone.modules() if isinstance(m, DropPath))
    byol = build_method(load_config(None, VIT + ["model.projector_hidden_dim=32", "model.projection_dim=16",
                                                 "model.predictor_hidden_dim=32"]), 1, 10)
    assert not [m for m in byol.backbone.modules() if isinstance(m, DropPath)]
    chosen = build_method(load_config(None, SMALL_DINO + VIT + ["model.drop_path_rate=0"]), 1, 10)
    assert not [m for m in chosen.student.backbone.modules() if isinstance(m, DropPath)]


SMALL_DINOV2 = ["method.name=dinov2", "method.out_dim=64", "method.patch_out_dim=64", "method.head_hidden_dim=64",
                "method.bottleneck_dim=32", "method.num_local_crops=2", "method.local_crop_size=12",
                "data.image_size=28", "data.batch_size=8"]


def test_dinov2_decays_the_lr_layer_by_layer_slows_the_patch_embedding_and_scales_each_block():
    config = load_config(None, SMALL_DINOV2 + VIT)
    assert (config.optim.layer_decay, config.optim.patch_embed_lr_mult) == (0.9, 0.2)
    method = build_method(config, 1, 10)
    gammas = torch.cat([m.gamma for m in method.trained.modules() if hasattr(m, "gamma")])
    assert len(gammas) and torch.allclose(gammas, torch.full_like(gammas, 1e-5))  # LayerScale: branches start shut
    optimizer = build_optimizer(config, method.trained)
    scale = {id(p): group["lr_scale"] for group in optimizer.param_groups for p in group["params"]}
    named = dict(method.trained.named_parameters())
    depth = len(method.student.backbone.blocks)
    assert scale[id(named["backbone.blocks.11.attn.qkv.weight"])] == pytest.approx(0.9)
    assert scale[id(named["backbone.blocks.0.attn.qkv.weight"])] == pytest.approx(0.9 ** depth)
    assert scale[id(named["backbone.cls_token"])] == scale[id(named["mask_token"])] == pytest.approx(0.9 ** 13)
    assert scale[id(named["backbone.patch_embed.proj.weight"])] == pytest.approx(0.9 ** 13 * 0.2)
    assert scale[id(named["head.mlp.0.weight"])] == scale[id(named["backbone.norm.weight"])] == 1.0
    step = TrainStep(config, method, optimizer, 10, CPU)
    step([torch.randn(8, 1, size, size) for size in (28, 28, 12, 12)], 5)
    for group in optimizer.param_groups:
        assert group["lr"] == pytest.approx(step.lrs[5].item() * group["lr_scale"])
    dino = load_config(None, SMALL_DINO + VIT)
    assert (dino.optim.layer_decay, dino.model.layer_scale_init) == (1.0, None)
    assert {g["lr_scale"] for g in build_optimizer(dino, build_method(dino, 1, 10).trained).param_groups} == {1.0}
    with pytest.raises(ConfigError, match="optim.patch_embed_lr_mult applies to ViT backbones"):
        load_config(None, ["optim.patch_embed_lr_mult=0.5"])
    with pytest.raises(ValueError, match="model.layer_scale_init applies to ViTs"):
        build_method(load_config(None, ["model.layer_scale_init=0.1"]), 1, 10)
    unscaled = build_method(load_config(None, SMALL_DINOV2 + VIT + ["model.layer_scale_init=0"]), 1, 10)
    assert not any(hasattr(m, "gamma") for m in unscaled.trained.modules())  # 0: DINOv2 without LayerScale


def test_a_run_without_a_preset_gets_its_papers_optimizer_and_a_preset_or_override_wins():
    dino = load_config(None, ["method.name=dino", "model.backbone=vit_tiny_patch16_224"]).optim  # ViT recipe
    assert (dino.lr, dino.weight_decay, dino.weight_decay_end, dino.clip_grad, dino.clip_mode) == (
        5e-4, 0.04, 0.4, 3.0, "per_parameter")
    mae = load_config(None, ["method.name=mae"]).optim
    assert (mae.lr, mae.betas, mae.weight_decay, mae.clip_grad) == (1.5e-4, (0.9, 0.95), 0.05, None)
    byol = load_config(None).optim
    assert (byol.lr, byol.betas, byol.weight_decay, byol.clip_mode) == (2e-3, (0.9, 0.999), 1e-6, "global")
    assert load_config(None, ["method.name=dino", "optim.clip_mode=global", "optim.lr=0.01"]).optim.lr == 0.01
    from pipelines.config.project import PROJECT_ROOT

    mae_preset = load_config(PROJECT_ROOT / "configs" / "mae_fmnist_quick.yaml")
    assert mae_preset.optim.lr == 1.5e-4 and mae_preset.effective_lr() == pytest.approx(1.5e-4)  # batch 256


def test_dino_clips_each_parameters_gradient_on_its_own():
    big, small = nn.Parameter(torch.zeros(4)), nn.Parameter(torch.zeros(4))
    big.grad, small.grad = torch.full((4,), 5.0), torch.full((4,), 0.1)  # norms 10 and 0.2
    clip_each_parameter(nn.ParameterList([big, small]), 3.0)
    assert big.grad.norm().item() == pytest.approx(3.0, rel=1e-5) and torch.equal(small.grad, torch.full((4,), 0.1))
    config = load_config(None, SMALL_DINO)
    method = build_method(config, 1, 10)
    step = TrainStep(config, method, build_optimizer(config, method.trained), 10, CPU)
    assert step.clip_norm is clip_each_parameter and step.clip == 3.0


def test_dinov2_clips_the_backbones_and_each_heads_gradient_on_their_own():
    config = load_config(None, SMALL_DINOV2 + VIT)
    assert config.optim.clip_mode == "per_module" and config.optim.clip_grad == 3.0
    parts = nn.Module()
    parts.backbone, parts.head = nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False)
    parts.token = nn.Parameter(torch.zeros(4))
    parts.backbone.weight.grad, parts.head.weight.grad = torch.full((4, 4), 5.0), torch.full((4, 4), 0.01)
    parts.token.grad = torch.full((4,), 5.0)  # norms 20, 0.04, 10
    clip_each_module(parts, 3.0)
    assert parts.backbone.weight.grad.norm().item() == pytest.approx(3.0, rel=1e-5)
    assert torch.equal(parts.head.weight.grad, torch.full((4, 4), 0.01))  # not scaled down with the backbone
    assert parts.token.grad.norm().item() == pytest.approx(3.0, rel=1e-5)


def test_simsiam_projector_ends_in_batchnorm_without_affine_and_the_predictor_lr_can_be_fixed():
    config = load_config(None, ["method.name=simsiam", "method.fix_predictor_lr=true", "model.projector_hidden_dim=32",
                                "model.projection_dim=16", "model.predictor_hidden_dim=8", "optim.warmup_epochs=1",
                                "data.batch_size=8"])
    torch.manual_seed(0)
    method = build_method(config, 1, 10)
    assert isinstance(method, SimSiam)
    last = method.network.encoder[1][-1]
    assert isinstance(last, nn.modules.batchnorm._BatchNorm) and not last.affine
    optimizer = build_optimizer(config, method.trained, method.fixed_lr_parameters())
    step = TrainStep(config, method, optimizer, 10, CPU)
    step([torch.randn(8, 1, 28, 28), torch.randn(8, 1, 28, 28)], 3)  # mid warm-up
    predictor = {id(p) for p in method.network.predictor.parameters()}
    for group in optimizer.param_groups:
        fixed = all(id(p) in predictor for p in group["params"])
        assert group["fixed_lr"] == fixed
        expected = config.effective_lr() if fixed else config.effective_lr() * 3 / 10
        assert group["lr"] == pytest.approx(expected, rel=1e-6)


def test_mae_initialises_encoder_and_decoder_as_the_reference():
    import math

    from ssl_models import backbone_spec, create_backbone

    torch.manual_seed(0)
    backbone, width = create_backbone(backbone_spec("vit_tiny_patch16_224", in_chans=1, image_size=28, patch_size=4))
    model = tiny_method("mae", backbone, width, decoder_dim=64, decoder_heads=4).autoencoder
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears and all(torch.count_nonzero(m.bias) == 0 for m in linears if m.bias is not None)
    for layer in linears:  # xavier-uniform: bounded by sqrt(6 / (fan_in + fan_out)) and filling the bound
        bound = math.sqrt(6 / sum(layer.weight.shape))
        assert layer.weight.abs().max() <= bound and layer.weight.abs().max() > 0.9 * bound
    kernel = model.encoder.patch_embed.proj.weight
    bound = math.sqrt(6 / (kernel.shape[0] + kernel[0].numel()))  # the kernel as one (192, 16) matrix
    assert kernel.abs().max() <= bound and kernel.abs().max() > 0.9 * bound
    assert model.encoder.cls_token.std().item() == pytest.approx(0.02, rel=0.25)
    assert model.mask_token.std().item() == pytest.approx(0.02, rel=0.3)


def test_augmentation_strengths_and_crop_scales_follow_each_paper():
    import albumentations as A

    from pipelines.data.augment import RECIPES

    def jitter(method: str, channels: int = 3):
        views = RECIPES[method](32, channels, 0.08, load_config(None, [f"method.name={method}"]).method.model_dump())
        found = [t for t in views[0].transforms if isinstance(t, A.ColorJitter)][0]
        return tuple(round(max(abs(x - 1) if name != "hue" else abs(x) for x in getattr(found, name)), 3)
                     for name in ("brightness", "contrast", "saturation", "hue"))

    assert jitter("simclr") == (0.8, 0.8, 0.8, 0.2)
    assert jitter("moco") == jitter("simsiam") == (0.4, 0.4, 0.4, 0.1)
    assert jitter("byol") == jitter("barlow_twins") == jitter("vicreg") == jitter("dino") == (0.4, 0.4, 0.2, 0.1)
    assert jitter("simclr", channels=1)[:2] == (0.8, 0.8)
    scales = {m: load_config(None, [f"method.name={m}"]).crop_scale_min()
              for m in ("byol", "simclr", "barlow_twins", "vicreg", "moco", "simsiam", "mae")}
    assert scales == {"byol": 0.08, "simclr": 0.08, "barlow_twins": 0.08, "vicreg": 0.08, "moco": 0.2,
                      "simsiam": 0.2, "mae": 0.2}
    assert load_config(None, ["data.crop_scale_min=0.3"]).crop_scale_min() == 0.3


@pytest.mark.parametrize("name, apart", [("byol", True), ("simsiam", True), ("barlow_twins", True), ("vicreg", True),
                                         ("simclr", False)])
def test_each_view_is_its_own_batchnorm_batch_where_the_reference_forwards_views_apart(name, apart):
    from ssl_models.batchnorm import GlobalBatchNorm

    heads = ["model.projector_hidden_dim=32", "model.projection_dim=16"]
    heads += ["model.predictor_hidden_dim=32"] if name in ("byol", "simsiam") else []
    method = build_method(load_config(None, [f"method.name={name}", *heads]), 1, 10)
    norms = [m for m in method.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    grouped = [m for m in norms if isinstance(m, GlobalBatchNorm) and m.groups == 2]
    assert norms and (len(grouped) == len(norms) if apart else not grouped)  # BYOL's target network included
    out = method.training_step([torch.randn(4, 1, 28, 28), torch.randn(4, 1, 28, 28) * 3 + 1], 0)
    assert torch.isfinite(out["loss"])


def test_moco_normalises_queries_over_sub_batches_the_size_of_the_keys():
    import copy

    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.BatchNorm1d(8))
    method = tiny_method("moco", backbone, shuffle_bn_splits=4)
    assert method.splits(16) == 4 and method.splits(6) == 3 and method.splits(7) == 1 and method.splits(2) == 1
    plain = copy.deepcopy(method.query_encoder)
    images = torch.randn(16, 3, 2, 2) * torch.linspace(0.5, 4, 16).view(16, 1, 1, 1)
    method.training_step([images, torch.randn(16, 3, 2, 2)], 0)
    queries = method.query_encoder(images)  # still in sub-batches of 4 (the last step's setting)
    expected = torch.cat([plain(part) for part in images.chunk(4)])
    assert torch.allclose(queries, expected, atol=1e-5) and not torch.allclose(queries, plain(images), atol=1e-3)
