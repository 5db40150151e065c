"""Mixed precision through CPU autocast (bf16, and fp16 with the loss scaler), as the GPU paths run it. End to end:
Barlow Twins in fp16 (tests/end_to_end/test_pretrain.py), MAE in bf16 (tests/tuning/test_studies.py)."""
import pytest
import torch

from pipelines.config.load import load_config
from pipelines.training.methods import build_method
from pipelines.training.optimizer import build_optimizer
from pipelines.training.step import TrainStep, resolve_precision
from pipelines.training.teacher import build_with_teacher

CPU = torch.device("cpu")


def test_auto_precision_is_fp32_on_cpu_and_explicit_choices_stand():
    assert resolve_precision("auto", CPU) == "fp32"
    assert resolve_precision("fp16", CPU) == "fp16" and resolve_precision("bf16", CPU) == "bf16"


def byol_step(precision: str):
    config = load_config(None, [f"train.precision={precision}", "model.projector_hidden_dim=32",
                                "model.projection_dim=16", "model.predictor_hidden_dim=32", "data.batch_size=8"])
    torch.manual_seed(0)
    method = build_method(config, 1, 10)
    return method, TrainStep(config, method, build_optimizer(config, method.trained), 10, CPU)


@pytest.mark.slow  # CPU autocast emulates fp16/bf16 kernels: tens of seconds
def test_fp16_step_that_overflows_is_skipped_and_the_ema_waits():
    method, step = byol_step("fp16")
    assert step.scaler.is_enabled()
    views = [torch.randn(8, 1, 28, 28), torch.randn(8, 1, 28, 28)]
    step.scaler = torch.amp.GradScaler("cpu", init_scale=1e38)  # scaled fp16 gradients overflow
    online = [p.clone() for p in method.online.parameters()]
    target = [p.clone() for p in method.target.parameters()]
    out = step(views, 0)
    assert step.skipped_steps == 1 and "ema_momentum" not in out
    assert all(torch.equal(a, b) for a, b in zip(online, method.online.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(target, method.target.parameters()))
    step.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    out = step(views, 1)
    assert step.skipped_steps == 1 and out["ema_momentum"] > 0 and torch.isfinite(out["loss"])
    assert not all(torch.equal(a, b) for a, b in zip(target, method.target.parameters()))


@pytest.mark.slow  # CPU autocast emulates fp16/bf16 kernels: tens of seconds
def test_bf16_step_runs_under_autocast():
    method, step = byol_step("bf16")
    assert not step.scaler.is_enabled()
    out = step([torch.randn(8, 1, 28, 28), torch.randn(8, 1, 28, 28)], 0)
    assert torch.isfinite(out["loss"]) and out["loss"].dtype == torch.float32


@pytest.mark.slow  # CPU autocast emulates fp16/bf16 kernels: tens of seconds
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("method", ["dinov2", "distill"])
def test_dinov2_and_distillation_step_under_cpu_autocast(method, precision, tmp_path):
    """The GPU paths of the two newest methods (bf16; fp16 with the loss scaler) through CPU autocast."""
    from tests.helpers import write_run_files

    overrides = [f"method.name={method}", f"train.precision={precision}", "data.batch_size=8", "optim.warmup_epochs=0"]
    if method == "dinov2":
        overrides += ["model.backbone=vit_tiny_patch16_224", "model.patch_size=4", "method.out_dim=32",
                      "method.patch_out_dim=32", "method.head_hidden_dim=32", "method.bottleneck_dim=8",
                      "method.num_local_crops=2", "method.mask_probability=1.0"]
        views = [torch.randn(8, 1, 28, 28), torch.randn(8, 1, 28, 28), torch.randn(8, 1, 12, 12),
                 torch.randn(8, 1, 12, 12)]
    else:
        teacher = load_config(None, ["model.projector_hidden_dim=32", "model.projection_dim=16",
                                     "model.predictor_hidden_dim=32"])
        write_run_files(tmp_path, "teacher", teacher, build_method(teacher, 1, 10))
        overrides += ["method.teacher_run=teacher", f"train.storage_path={tmp_path}", "model.backbone=resnet10t",
                      "model.projector_hidden_dim=32"]
        views = [torch.randn(8, 1, 28, 28)]
    config = load_config(None, overrides)
    torch.manual_seed(0)
    built = build_with_teacher(config, 1, 10)
    step = TrainStep(config, built, build_optimizer(config, built.trained), 10, CPU)
    assert step.scaler.is_enabled() == (precision == "fp16")
    if precision == "fp16":  # from 16, not 65536: at 256 DINOv2 overflowed 4-5 steps in a row (37 s of emulated fp16)
        step.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 4)
    before = [p.clone() for p in built.trained.parameters()]
    for index in range(6):  # fp16: an overflowing step is skipped and the scale halved, until a step goes through
        out = step(views, index)
        if step.skipped_steps == index:
            break
    assert torch.isfinite(out["loss"]) and out["loss"].dtype == torch.float32 and step.skipped_steps < 6
    assert step.skipped_steps == 0 or precision == "fp16"
    assert not all(torch.equal(a, b) for a, b in zip(before, built.trained.parameters()))
