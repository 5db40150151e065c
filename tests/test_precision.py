"""Mixed precision through CPU autocast (bf16, and fp16 with the loss scaler), as the GPU paths run it."""
import pytest
import torch
from mlflow.tracking import MlflowClient

from pipelines.build import build_method, build_optimizer
from pipelines.config import load_config
from pipelines.pretrain import pretrain
from pipelines.step import TrainStep, resolve_precision
from tests.conftest import tiny_overrides

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


def test_bf16_step_runs_under_autocast():
    method, step = byol_step("bf16")
    assert not step.scaler.is_enabled()
    out = step([torch.randn(8, 1, 28, 28), torch.randn(8, 1, 28, 28)], 0)
    assert torch.isfinite(out["loss"]) and out["loss"].dtype == torch.float32


@pytest.mark.slow
def test_an_fp16_run_trains_end_to_end_with_the_loss_scaler(ray_session, fmnist_slice, tmp_path):
    """(bf16 end to end: DINO's run in tests/test_pretrain.py)"""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # small: CPUs emulate fp16 matrix products slowly (a GPU's path, exercised here for correctness)
    overrides = tiny_overrides(fmnist_slice, str(tmp_path / "runs"), uri, **{
        "train.precision": "fp16", "data.limit": 64, "data.batch_size": 32, "train.log_every": 1,
        "eval.baseline": False, "eval.picture_every": 0, "eval.online_bank_size": 64, "eval.online_query_size": 32})
    outcome = pretrain(load_config(None, overrides))
    client = MlflowClient(uri)
    run = client.get_run(outcome["run_id"])
    assert run.info.status == "FINISHED" and outcome["metrics"]["step"] == 2
    losses = [m.value for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert len(losses) == 2 and all(0 < value < 10 for value in losses)
    assert 0 <= run.data.metrics["knn_top1_k20"] <= 1  # evaluated under the same autocast
