"""The settings the lecture's ablation studies need: DINO without centring or with MSE, MAE's augmentation rows,
transformations removed one by one from a method's recipe."""
import json

import albumentations as A
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipelines.config.load import load_config
from pipelines.config.section import ConfigError
from pipelines.data.augment import method_views
from pipelines.data.augment_batch import AugmentBatch
from pipelines.training.methods import build_method
from ssl_models.dino import dino_loss
from ssl_models.ema import update_momentum

SMALL_DINO = ["method.name=dino", "method.out_dim=64", "method.head_hidden_dim=64", "method.bottleneck_dim=32",
              "method.num_local_crops=0"]


def test_dino_mse_is_the_squared_distance_of_the_probabilities():
    torch.manual_seed(0)
    student, teacher = torch.randn(8, 16), F.softmax(torch.randn(8, 16), dim=-1)  # 2 views of 4, each side
    probabilities = F.softmax(student / 0.1, dim=-1).chunk(2)
    pairs = [(teacher[:4], probabilities[1]), (teacher[4:], probabilities[0])]  # never a view with itself
    by_hand = sum(((t - s) ** 2).sum(-1).mean() for t, s in pairs) / 2
    assert dino_loss(student, teacher, 2, 0.1, kind="mse") == pytest.approx(by_hand.item(), rel=1e-6)
    method = build_method(load_config(None, SMALL_DINO + ["method.loss=mse"]), 1, 10)
    assert method.loss_kind == "mse"


def test_dino_without_centring_keeps_the_centre_at_zero():
    views = [torch.randn(4, 1, 28, 28) + 2, torch.randn(4, 1, 28, 28) + 2]
    for centering in (True, False):
        method = build_method(load_config(None, SMALL_DINO + [f"method.centering={str(centering).lower()}"]), 1, 10)
        method.training_step(views, 0)
        assert (method.center.abs().sum() > 0) == centering


def kinds(view: A.Compose) -> list[str]:
    return [type(t).__name__ for t in view.transforms]


def test_mae_augmentation_rows_of_the_paper():
    views = {kind: method_views({"name": "mae", "augmentation": kind}, 28, 1, 0.2)[0]
             for kind in ("none", "fixed_crop", "random_crop", "random_crop_jitter")}
    assert kinds(views["none"]) == ["SmallestMaxSize", "CenterCrop"]
    assert kinds(views["fixed_crop"]) == ["SmallestMaxSize", "RandomCrop", "HorizontalFlip"]
    assert kinds(views["random_crop"]) == ["RandomResizedCrop", "HorizontalFlip"]
    assert kinds(views["random_crop_jitter"]) == ["RandomResizedCrop", "HorizontalFlip", "ColorJitter"]
    image = np.random.default_rng(0).integers(0, 255, (20, 24, 1), dtype=np.uint8)
    assert all(view(image=image)["image"].shape == (28, 28, 1) for view in views.values())
    with pytest.raises(ConfigError, match="method.augmentation"):
        load_config(None, ["method.name=mae", "method.augmentation=mixup"])


def test_transformations_removed_one_by_one_from_a_recipe():
    byol = {"name": "byol"}
    full = method_views(byol, 32, 3, 0.08)
    assert kinds(full[0]) == ["RandomResizedCrop", "HorizontalFlip", "ColorJitter", "ToGray", "GaussianBlur", "Solarize"]
    fewer = method_views(byol, 32, 3, 0.08, ["colour", "blur"])
    assert all(kinds(view) == ["RandomResizedCrop", "HorizontalFlip", "ToGray", "Solarize"] for view in fewer)
    uncropped = method_views(byol, 32, 3, 0.08, ["crop", "flip", "colour", "grayscale", "blur", "solarize"])
    assert all(kinds(view) == ["Resize"] for view in uncropped)
    image = np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    first, second = (view(image=image)["image"] for view in uncropped)
    assert np.array_equal(first, second)  # nothing random is left: both views are the image, resized
    config = load_config(None, ["data.remove_augmentations=[colour, solarize]"])
    assert config.data.remove_augmentations == ["colour", "solarize"]
    stage = AugmentBatch(config.method.model_dump(), 32, 3, 0.08, config.data.remove_augmentations)
    assert all("ColorJitter" not in kinds(view) and "Solarize" not in kinds(view) for view in stage.views)
    with pytest.raises(ConfigError, match="data.remove_augmentations"):
        load_config(None, ["data.remove_augmentations=[rotation]"])


@pytest.mark.parametrize("norm", ["none", "group_ws"])
def test_backbone_and_heads_without_batch_statistics(norm, tmp_path):
    """The BYOL batch-statistics study's rows: no BatchNorm left anywhere (online and target), GroupNorm and
    weight-standardised convolutions for group_ws; each sample's output is independent of the rest of the batch,
    and the exported backbone rebuilds from its description."""
    from timm.layers import StdConv2d
    from torch.nn.modules.batchnorm import _BatchNorm

    from pipelines.storage.export import load_backbone, save_backbone
    from pipelines.training.methods import build_spec

    config = load_config(None, [f"model.norm={norm}", "model.projector_hidden_dim=64", "model.projection_dim=32",
                                "model.predictor_hidden_dim=64"])
    torch.manual_seed(0)
    method = build_method(config, 1, 10)
    modules = list(method.modules())
    assert not any(isinstance(module, _BatchNorm) for module in modules)
    assert any(isinstance(module, torch.nn.GroupNorm) for module in modules) == (norm == "group_ws")
    assert any(isinstance(module, StdConv2d) for module in modules) == (norm == "group_ws")
    views = [torch.randn(4, 1, 28, 28), torch.randn(4, 1, 28, 28)]
    assert torch.isfinite(method.training_step(views, 0)["loss"])
    backbone = method.backbone.train()
    alone, together = backbone(views[0][:1]), backbone(views[0])[:1]
    assert torch.allclose(alone, together, rtol=1e-4, atol=1e-4)  # no batch statistics (a batch of 1 may take
    # another convolution kernel: equal to float rounding, where batch statistics would change them entirely)
    save_backbone(tmp_path, backbone, build_spec(config, 1), {})
    rebuilt = load_backbone((tmp_path / "backbone.safetensors").read_bytes(),
                            json.loads((tmp_path / "backbone.json").read_text()))
    assert torch.allclose(rebuilt(views[0]), backbone.eval()(views[0]), atol=1e-5)
    with pytest.raises(ConfigError, match="model.norm"):
        load_config(None, ["model.norm=layer"])


def test_dino_with_a_predictor_on_the_student_only():
    config = load_config(None, SMALL_DINO + ["method.predictor=true", "method.momentum_start=0.9"])
    method = build_method(config, 1, 10)
    assert isinstance(method.teacher.head.predictor, torch.nn.Identity)
    student, teacher = dict(method.student.named_parameters()), dict(method.teacher.named_parameters())
    predictor = {name for name in student if name.startswith("head.predictor.")}
    assert predictor and all(student[name].requires_grad for name in predictor)
    assert teacher.keys() == student.keys() - predictor  # the predictor has no teacher twin
    views = [torch.randn(4, 1, 28, 28), torch.randn(4, 1, 28, 28)]
    method.training_step(views, 0)["loss"].backward()
    assert all(student[name].grad is not None for name in predictor)
    with torch.no_grad():
        for index, parameter in enumerate(student.values()):
            parameter.add_(index + 1.0)  # a different shift each: a teacher parameter paired wrongly shows
    before = {name: parameter.clone() for name, parameter in teacher.items()}
    momentum = method.after_optimizer_step(0)["ema_momentum"]
    assert momentum == pytest.approx(0.9)
    for name, parameter in teacher.items():
        assert torch.allclose(parameter, momentum * before[name] + (1 - momentum) * student[name]), name
    with pytest.raises(ValueError, match="head.predictor"):
        update_momentum(method.student, method.teacher, 0.5)  # pairing by name: a student-only name has no source
