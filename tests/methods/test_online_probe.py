"""The online linear probe: it learns separable features, ignores unlabelled rows, and sees each method's first view."""
from contextlib import nullcontext

import torch

from pipelines.config.load import load_config
from pipelines.training.loop import probe_step
from pipelines.training.methods import build_method
from ssl_models.online_probe import FirstOutput, OnlineProbe


def test_the_online_probe_learns_separable_features_and_ignores_unlabelled_rows():
    torch.manual_seed(0)
    centres = torch.randn(4, 16) * 4
    probe = OnlineProbe(16, 4, lr=0.1)
    for _ in range(60):
        labels = torch.randint(0, 4, (64,))
        values = probe.step(centres[labels] + torch.randn(64, 16), labels)
    assert values["online_probe_top1"].item() > 0.95
    unlabelled = probe.step(torch.randn(8, 16), torch.full((8,), -1))
    assert unlabelled["online_probe_loss"].item() == 0 and unlabelled["online_probe_top1"].item() == 0
    assert all(p.grad is None or not p.grad.any() for p in probe.classifier.parameters())
    chance = OnlineProbe(16, 4)
    for _ in range(30):
        labels = torch.randint(0, 4, (64,))
        values = chance.step(torch.randn(64, 16), labels)
    assert values["online_probe_top1"].item() < 0.5


def method_of(name: str, **extra):
    overrides = [f"method.name={name}", "data.image_size=16", "model.projector_hidden_dim=32", "model.projection_dim=16"]
    if name in ("byol", "simsiam"):
        overrides.append("model.predictor_hidden_dim=32")
    if name == "mae":
        overrides = ["method.name=mae", "data.image_size=16", "model.backbone=vit_tiny_patch16_224",
                     "model.patch_size=4", "method.decoder_dim=32", "method.decoder_depth=1"]
    return build_method(load_config(None, overrides + [f"{k}={v}" for k, v in extra.items()]), 1, 10)


def test_the_probe_sees_the_first_view_through_the_methods_own_backbone_call_or_one_more_forward():
    torch.manual_seed(0)
    for name in ("byol", "mae"):
        method = method_of(name)
        views = [torch.randn(6, 1, 16, 16) for _ in range(method.num_views)]
        tap = FirstOutput(method.backbone)
        probe = OnlineProbe(method.backbone.num_features, 10)
        method.training_step(views, 0)
        captured = tap.output
        assert (captured is not None) == (name == "byol"), name  # MAE embeds visible patches only
        seen = []
        probe.step = lambda features, labels: seen.append(features) or {}
        probe_step(probe, tap, method, views[0], torch.arange(6), nullcontext)
        assert tap.take() is None
        method.backbone.eval()
        with torch.no_grad():
            alone = method.backbone(views[0])
        if name == "byol":  # BatchNorm in training mode: the first view's rows, embedded with the second
            assert torch.equal(seen[0], captured[:6]) and seen[0].shape == (6, method.backbone.num_features)
        else:
            assert torch.allclose(seen[0], alone, atol=1e-5)
