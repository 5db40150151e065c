"""`model.init`: the backbone starts from a timm weights file, an earlier run or an export; the heads start random and
the momentum target from the same weights; a file or run that does not fit is named with both architectures."""
import pytest
import safetensors.torch
import timm
import torch

from pipelines.config.load import load_config
from pipelines.config.section import ConfigError
from pipelines.training.init_weights import resolve_init
from pipelines.training.methods import build_method
from tests.helpers import write_run_files

SMALL_HEADS = ["model.projector_hidden_dim=16", "model.projection_dim=8", "model.predictor_hidden_dim=16"]


def weights_file(folder, name: str, **kwargs) -> tuple[str, dict]:
    """A timm architecture's weights, as a released checkpoint would hold them (its classifier included)."""
    torch.manual_seed(1)
    state = {key: value.contiguous() for key, value in timm.create_model(name, **kwargs).state_dict().items()}
    path = folder / f"{name}.safetensors"
    safetensors.torch.save_file(state, path)
    return str(path), state


def config(*overrides: str):
    return load_config(None, ["method.name=byol", *SMALL_HEADS, *overrides])


def test_a_timm_weights_file_starts_the_backbone_and_the_target_and_the_first_layer_takes_the_datas_channels(tmp_path):
    path, released = weights_file(tmp_path, "resnet18")
    method = build_method(config("model.backbone=resnet18", f"model.init={path}", "data.image_size=32"), 3, 10)
    backbone = method.backbone.state_dict()
    assert all(torch.equal(backbone[key], value) for key, value in released.items() if not key.startswith("fc."))
    target = method.target.state_dict()
    assert torch.equal(next(value for key, value in target.items() if key.endswith("conv1.weight")),
                       released["conv1.weight"])  # BYOL's momentum target: a copy of the same weights
    random = build_method(config("model.backbone=resnet18", "data.image_size=32"), 3, 10)
    assert not torch.equal(random.backbone.state_dict()["conv1.weight"], released["conv1.weight"])
    # grey data: timm sums the first layer's colour channels, as for any 1-channel use of RGB weights
    grey = build_method(config("model.backbone=resnet18", f"model.init={path}"), 1, 10).backbone.state_dict()
    assert torch.allclose(grey["conv1.weight"], released["conv1.weight"].sum(dim=1, keepdim=True))
    assert torch.equal(grey["layer4.1.bn2.weight"], released["layer4.1.bn2.weight"])


def test_a_vit_file_is_resampled_to_the_image_and_patch_size_of_the_run(tmp_path):
    path, released = weights_file(tmp_path, "vit_tiny_patch16_224")
    overrides = ["model.backbone=vit_tiny_patch16_224", "model.patch_size=4", f"model.init={path}"]
    backbone = build_method(config(*overrides), 1, 10).backbone.state_dict()
    assert torch.equal(backbone["cls_token"], released["cls_token"])
    assert torch.equal(backbone["blocks.11.mlp.fc2.weight"], released["blocks.11.mlp.fc2.weight"])
    assert backbone["pos_embed"].shape == (1, 1 + 7 * 7, 192) and backbone["patch_embed.proj.weight"].shape[-1] == 4


def test_an_earlier_run_or_its_checkpoint_folder_starts_the_backbone_whole(tmp_path):
    earlier_config = config("model.backbone=resnet18", f"train.storage_path={tmp_path}")
    earlier = build_method(earlier_config, 1, 10)
    folder = write_run_files(tmp_path, "earlier", earlier_config, earlier)
    later = config("model.backbone=resnet18", "model.init=run:earlier", f"train.storage_path={tmp_path}")
    resolve_init(later, "sqlite://")  # what the driver does before Ray: the run's name becomes its checkpoint
    assert later.model.init == str(folder)
    for init in ("run:earlier", str(folder)):
        started = build_method(config("model.backbone=resnet18", f"model.init={init}",
                                      f"train.storage_path={tmp_path}"), 1, 10)
        assert all(torch.equal(started.backbone.state_dict()[key], value)
                   for key, value in earlier.backbone.state_dict().items())


def test_weights_that_do_not_fit_are_named_with_both_architectures(tmp_path):
    path, _ = weights_file(tmp_path, "resnet18")
    with pytest.raises(ConfigError, match=r"model.init: '.*resnet18.safetensors' does not fit model.backbone resnet34"):
        build_method(config("model.backbone=resnet34", f"model.init={path}"), 3, 10)
    with pytest.raises(ConfigError, match="model.init: no weights file at"):
        build_method(config(f"model.init={tmp_path / 'missing.pth'}"), 3, 10)
    earlier_config = config("model.backbone=resnet18", f"train.storage_path={tmp_path}")
    write_run_files(tmp_path, "earlier", earlier_config, build_method(earlier_config, 1, 10))
    with pytest.raises(ConfigError, match=r"holds a resnet18 \(1 channels\) backbone; model.backbone is "
                                          r"resnet18 \(1 channels, small stem\)"):
        build_method(config("model.small_stem=true", "model.init=run:earlier", f"train.storage_path={tmp_path}"), 1, 10)
    with pytest.raises(ConfigError, match="model.init: no run named 'nobody'"):
        build_method(config("model.init=run:nobody", f"train.storage_path={tmp_path}"), 1, 10)


def test_a_distillation_teacher_from_a_timm_file_is_held_to_the_same_check(tmp_path):
    from pipelines.training.teacher import timm_teacher

    path, released = weights_file(tmp_path, "resnet18")
    backbone = timm_teacher("resnet18", path, None)[0]
    assert torch.equal(backbone.state_dict()["layer4.1.conv2.weight"], released["layer4.1.conv2.weight"])
    with pytest.raises(ConfigError, match=r"method.teacher_weights: '.*resnet18.safetensors' does not fit resnet34: "
                                          r"Missing keys \(layer1.2.conv1.weight"):
        timm_teacher("resnet34", path, None)  # timm alone would leave resnet34's extra blocks random
