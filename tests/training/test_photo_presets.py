"""The 224-pixel photo presets: each follows the paper's recipe it carries, builds its own backbone and heads, and
takes two optimisation steps on CPU at a size and batch given by `--set`, fed by the augmentation stage itself."""
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from timm.optim import Lars

from benchmarks.gpu_check import cpu_sized, teacher_weights
from pipelines.config.load import load_config
from pipelines.config.project import PROJECT_ROOT
from pipelines.config.recipe import batch_note, recipe_differences
from pipelines.data.augment_batch import AugmentBatch
from pipelines.data.store import DatasetInfo
from pipelines.data.stream import augment_arguments, augment_pool_max
from pipelines.training.optimizer import lr_schedule, weight_decay_schedule
from pipelines.training.step import TrainStep, prepare

CPU = torch.device("cpu")
PHOTO_PRESETS = sorted((PROJECT_ROOT / "configs").glob("*_224.yaml"))
# What the paper's backbone and heads are, read off the built method: the backbone's feature width, and the width
# of the last head layer (the projection, the prototypes, MAE's decoder).
FEATURES = {"resnet50": 2048, "vit_small_patch16_224": 384, "vit_small_patch14_dinov2": 384, "vit_base_patch16_224": 768}
OPTIMIZERS = {"lars": Lars, "sgd": torch.optim.SGD, "adamw": torch.optim.AdamW}


def test_there_is_a_photo_preset_for_every_method():
    methods = {load_config(path).method.name for path in PHOTO_PRESETS}
    assert methods == {"byol", "simclr", "moco", "simsiam", "barlow_twins", "vicreg", "dino", "dinov2", "mae", "distill"}
    backbones = {(load_config(path).method.name, load_config(path).model.backbone) for path in PHOTO_PRESETS}
    assert {("dino", "vit_small_patch16_224"), ("dino", "resnet50"), ("dinov2", "vit_small_patch14_dinov2"),
            ("mae", "vit_base_patch16_224")} <= backbones


@pytest.mark.parametrize("preset", PHOTO_PRESETS, ids=lambda path: Path(path).stem)
def test_photo_preset_keeps_its_papers_recipe_and_its_schedules_are_the_recipes(preset):
    config = load_config(preset)
    recipe = config.recipe
    assert recipe is not None and recipe.paper and recipe_differences(config) == []
    assert config.data.image_size == 224 and config.train.precision == "auto" and config.data.augment_actors_max == "auto"
    steps = 10
    lrs, wds = lr_schedule(config, steps), weight_decay_schedule(config, steps)
    assert len(lrs) == steps * recipe.epochs
    warmup = int(recipe.warmup_epochs * steps)
    peak = recipe.lr * {"linear": config.global_batch() / 256, "sqrt": (config.global_batch() / 1024) ** 0.5}[
        recipe.lr_scaling]
    assert lrs.max().item() == pytest.approx(peak, rel=1e-6) and config.effective_lr() == pytest.approx(peak)
    assert lrs[warmup].item() == pytest.approx(peak, rel=1e-3)  # warm-up ends at the peak, cosine follows
    assert lrs[-1].item() == pytest.approx(recipe.min_lr, abs=1e-3 * peak)
    if warmup:
        assert lrs[0].item() < 0.2 * peak
    assert wds[0].item() == pytest.approx(recipe.weight_decay)
    assert wds[-1].item() == pytest.approx(recipe.weight_decay_end or recipe.weight_decay, rel=1e-3)
    assert "(paper: 1024)" in (batch_note(load_config(preset, ["data.batch_size=512", "recipe.batch=1024"])) or "")
    assert batch_note(load_config(preset, [f"data.batch_size={recipe.batch}"])) is None


def test_a_departure_from_the_recipe_is_named_with_the_papers_value():
    config = load_config(PROJECT_ROOT / "configs" / "dino_vit_small16_224.yaml",
                         ["optim.lr=1e-3", "data.image_size=96", "method.num_local_crops=2"])
    assert recipe_differences(config) == ["optim.lr 0.001 (paper: 0.0005)", "data.image_size 96 (paper: 224)",
                                          "method.num_local_crops 2 (paper: 8)"]


def test_the_auto_augmentation_pool_takes_every_cpu_the_run_does_not_reserve():
    config = load_config(PROJECT_ROOT / "configs" / "byol_resnet50_224.yaml", ["train.num_workers=2"])
    # 16 CPUs per GPU worker, 2 workers at 0.5 CPU, 1 for the file listing: 30 one-CPU actors
    assert augment_pool_max(config, cluster_cpus=32) == 30
    assert augment_pool_max(config, cluster_cpus=2) == config.data.augment_actors  # never below the fixed pool
    fixed = load_config(None, ["data.augment_actors=2", "data.augment_actors_max=5"])
    assert augment_pool_max(fixed, cluster_cpus=32) == 5


def photos(count: int, seed: int = 0) -> np.ndarray:
    """JPEG bytes of textured colour pictures of a few sizes, as the ingest stores them."""
    rng = np.random.default_rng(seed)
    encoded = []
    for index in range(count):
        height, width = (90, 120) if index % 2 else (150, 100)
        image = cv2.GaussianBlur(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), (5, 5), 0)
        encoded.append(cv2.imencode(".jpg", image)[1].tobytes())
    return np.array(encoded, dtype=object)


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    """A vit_small_patch14_dinov2 weights file made here (randomly initialised), where the distillation preset
    expects DINOv2's released one."""
    return teacher_weights(tmp_path_factory.mktemp("weights"), 56)


@pytest.mark.slow  # ResNet-50s and ViT-Bs with the papers' heads (Barlow Twins' projector: 151 M parameters)
@pytest.mark.parametrize("preset", PHOTO_PRESETS, ids=lambda path: Path(path).stem)
def test_photo_preset_builds_its_own_model_and_steps_twice_on_cpu(preset, request):
    name = load_config(preset).method.name
    overrides = cpu_sized(name)
    if name == "distill":
        overrides = overrides + [f"method.teacher_weights={request.getfixturevalue('teacher_file')}"]
    config = load_config(preset, overrides)
    assert "data.image_size 64 (paper: 224)" in recipe_differences(config) or name == "dinov2"
    torch.manual_seed(0)
    prepared = prepare(config, 3, 10, CPU)
    method, optimizer = prepared.method, prepared.optimizer
    assert isinstance(optimizer, OPTIMIZERS[config.optim.name])
    backbone = method.backbone
    assert backbone.num_features == FEATURES[config.model.backbone]
    widths = [m.out_features for m in method.trained.modules() if isinstance(m, torch.nn.Linear)]
    heads = config.model.heads()
    method_fields = config.method.model_dump()
    for wanted in (heads.get("projection_dim"), method_fields.get("out_dim"), method_fields.get("patch_out_dim"),
                   method_fields.get("decoder_dim")):
        assert wanted is None or wanted in widths
    augment = AugmentBatch(**augment_arguments(config, DatasetInfo("photos", 3, {"train": 4})))
    batch = augment({"image": photos(config.data.batch_size)})
    views = [torch.from_numpy(batch[f"view_{i}"]).float() / 255 for i in range(len(augment.views))]
    assert views[0].shape == (4, 3, config.data.image_size, config.data.image_size)
    step = TrainStep(config, method, optimizer, 10, CPU)
    before = [p.detach().clone() for p in backbone.parameters()]
    losses = [step(views, index)["loss"].item() for index in range(2)]
    assert all(np.isfinite(losses)), losses
    assert any(not torch.equal(a, b) for a, b in zip(before, backbone.parameters()))
