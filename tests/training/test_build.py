import pytest
import torch
from timm.layers import LayerScale
from torch import nn

from pipelines.config.load import load_config
from pipelines.training.checks import required_cpus
from pipelines.training.methods import build_method
from pipelines.training.optimizer import build_optimizer, lr_schedule

NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
VIT = ["model.backbone=vit_tiny_patch16_224", "model.patch_size=4", "model.layer_scale_init=1e-5"]


@pytest.mark.parametrize("name, model, kinds", [
    ("adamw", [], {"bias", "norm", "weight"}),
    ("lars", ["model.norm=group_ws"], {"bias", "norm", "weight"}),
    ("adamw", VIT, {"bias", "norm", "layer_scale", "weight"}),
    ("sgd", [], {"bias", "norm", "weight"}),
], ids=["adamw-resnet", "lars-resnet-group-norm", "adamw-vit-layer-scale", "sgd-resnet"])
def test_optimizer_skips_weight_decay_on_biases_and_norms(name, model, kinds):
    config = load_config(None, [f"optim.name={name}", "optim.weight_decay=0.1", "model.projector_hidden_dim=32",
                                "model.predictor_hidden_dim=32", "model.projection_dim=16", *model])
    method = build_method(config, channels=1, steps_per_epoch=5)
    optimizer = build_optimizer(config, method.trained)
    decay = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    assert sum(len(group["params"]) for group in optimizer.param_groups) == len(decay)
    modules, seen = dict(method.trained.named_modules()), set()
    for parameter_name, parameter in method.trained.named_parameters():
        owner = modules[parameter_name.rpartition(".")[0]]
        kind = ("norm" if isinstance(owner, NORM_LAYERS) else "layer_scale" if isinstance(owner, LayerScale)
                else "bias" if parameter_name.endswith(".bias") else "weight")
        seen.add(kind)
        assert decay[id(parameter)] == (0.1 if kind == "weight" else 0.0), f"{kind} {parameter_name}"
    assert seen == kinds
    assert decay.keys() == {id(p) for p in method.trained.parameters()}
    assert not decay.keys() & {id(p) for p in method.target.parameters()}
    views = [torch.randn(4, 1, 28, 28), torch.randn(4, 1, 28, 28)]
    method.training_step(views, 0)["loss"].backward()
    optimizer.step()


def test_sgd_is_plain_momentum_sgd_and_dino_on_a_resnet_takes_the_papers_resnet_recipe():
    config = load_config(None, ["method.name=dino", "method.out_dim=16", "method.head_hidden_dim=32",
                                "method.bottleneck_dim=8"])  # resnet18, no optimizer given
    assert (config.optim.name, config.optim.lr, config.optim.weight_decay, config.optim.weight_decay_end) == (
        "sgd", 0.03, 1e-4, 1e-4)
    assert config.method.global_crop_scale == (0.14, 1.0) and config.method.local_crop_scale == (0.05, 0.14)
    assert config.method.num_local_crops == 8  # main_dino.py's default
    optimizer = build_optimizer(config, build_method(config, channels=1, steps_per_epoch=5).trained)
    assert type(optimizer) is torch.optim.SGD
    assert all(group["momentum"] == 0.9 and not group["nesterov"] for group in optimizer.param_groups)
    vit = load_config(None, ["method.name=dino", *VIT])  # the ViT recipe: AdamW 5e-4, 0.04 -> 0.4, crops from 0.4
    assert (vit.optim.name, vit.optim.lr, vit.optim.weight_decay_end) == ("adamw", 5e-4, 0.4)
    assert vit.method.global_crop_scale == (0.4, 1.0)
    adamw = load_config(None, ["method.name=dino", "optim.name=adamw"])  # AdamW asked for on a ResNet: its lr, not SGD's
    assert (adamw.optim.lr, adamw.optim.weight_decay) == (5e-4, 0.04) and adamw.method.global_crop_scale == (0.14, 1.0)


def test_lr_schedule_spans_all_epochs_with_warmup():
    config = load_config(None, ["train.epochs=3", "optim.warmup_epochs=1", "optim.lr=0.1", "optim.min_lr=0"])
    lrs = lr_schedule(config, steps_per_epoch=10)
    assert len(lrs) == 30 and lrs[0] == 0 and lrs[10].item() == pytest.approx(0.1) and lrs[-1] == 0


def test_cpu_reservation_counts_every_consumer():
    config = load_config(None, ["train.num_workers=2", "train.cpus_per_worker=0.5", "data.augment_actors=1",
                                "data.augment_cpus=0.5"])
    assert required_cpus(config) == 2 * 0.5 + 0.5 + 1.0


@pytest.mark.parametrize("name", ["byol", "simsiam", "simclr", "barlow_twins", "vicreg", "moco", "dino", "dinov2",
                                  "distill", "mae"])
def test_a_methods_defaults_in_the_configuration_are_its_classs(name):
    """The paper's recipe is written in the method's class (ssl_models) and in its configuration section: every
    setting both name has one default; head sizes the configuration leaves unset (null) are the class's."""
    import inspect

    from ssl_models import METHODS

    sets = {"dinov2": ["model.backbone=vit_tiny_patch16_224"], "mae": ["model.backbone=vit_tiny_patch16_224"],
            "distill": ["method.teacher_run=teacher"]}.get(name, [])
    config = load_config(None, [f"method.name={name}", *sets])
    defaults = {key: parameter.default for key, parameter in inspect.signature(METHODS[name]).parameters.items()
                if parameter.default is not inspect.Parameter.empty}
    fields = config.method.model_dump(exclude={"name"})
    shared = sorted(set(defaults) & set(fields))
    assert shared, f"{name}: no setting in both"
    assert {key: fields[key] for key in shared} == {key: defaults[key] for key in shared}
    assert all(config.model.heads().get(key) in (None, defaults[key]) for key in config.model.heads() if key in defaults)


def test_layer_decay_on_a_resnet_follows_timms_grouping_from_the_stem_to_the_last_block_and_heads_at_full_lr():
    config = load_config(None, ["optim.layer_decay=0.5", "model.projector_hidden_dim=32", "model.projection_dim=16",
                                "model.predictor_hidden_dim=32"])
    method = build_method(config, channels=1, steps_per_epoch=5)
    optimizer = build_optimizer(config, method.trained)
    scale = {id(p): group["lr_scale"] for group in optimizer.param_groups for p in group["params"]}
    named = dict(method.trained.named_parameters())
    stem, first, last = (scale[id(named[f"encoder.0.{name}"])] for name in
                         ("conv1.weight", "layer1.0.conv1.weight", "layer4.1.conv2.weight"))
    assert (stem, first, last) == (0.5 ** 9, 0.5 ** 8, 0.5)  # 8 residual blocks after the stem, the heads above
    heads = [scale[id(p)] for name, p in named.items() if not name.startswith("encoder.0.")]
    assert heads and set(heads) == {1.0}
    assert len(optimizer.param_groups) == 2 * 10  # with and without weight decay, for each of the 10 scales
