"""The CUDA paths; skipped without a GPU, so that the first machine with one runs them."""
import pytest
import torch

from pipelines.config.load import load_config
from pipelines.storage.checkpoint import load_training_state, save_training_state
from pipelines.training.step import TrainStep, prepare, resolve_precision

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def small(method: str, precision: str = "auto"):
    overrides = {"byol": ["model.projector_hidden_dim=64", "model.projection_dim=32", "model.predictor_hidden_dim=64"],
                 "moco": ["model.projector_hidden_dim=64", "model.projection_dim=32", "method.queue_size=64"]}[method]
    return load_config(None, [f"method.name={method}", f"train.precision={precision}", "data.batch_size=16", *overrides])


def test_auto_precision_picks_what_the_gpu_supports():
    expected = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    assert resolve_precision("auto", torch.device("cuda")) == expected


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_one_step_on_cuda(precision):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    device = torch.device("cuda")
    config = small("byol", precision)
    prepared = prepare(config, 1, 10, device)
    step = TrainStep(config, prepared.method, prepared.optimizer, 10, device)
    views = [torch.randn(16, 1, 28, 28, device=device) for _ in range(2)]
    out = step(views, 0)
    assert out["loss"].device.type == "cuda" and torch.isfinite(out["loss"]).item()


def test_checkpoint_round_trip_on_cuda(tmp_path):
    device = torch.device("cuda")
    config = small("moco")
    prepared = prepare(config, 1, 10, device)
    step = TrainStep(config, prepared.method, prepared.optimizer, 10, device)
    step([torch.randn(16, 1, 28, 28, device=device) for _ in range(2)], 0)
    save_training_state(tmp_path, prepared.method, prepared.optimizer, step=1, epoch=1, metrics={})
    expected = torch.rand(3)
    fresh = prepare(config, 1, 10, device)
    restored = load_training_state(tmp_path, fresh.method, fresh.optimizer)
    assert restored["rng_restored"] and torch.equal(torch.rand(3), expected)
    for key, value in prepared.method.state_dict().items():
        assert torch.equal(fresh.method.state_dict()[key], value), key
    assert all(p.device.type == "cuda" for p in fresh.method.parameters())
    TrainStep(config, fresh.method, fresh.optimizer, 10, device)(
        [torch.randn(16, 1, 28, 28, device=device) for _ in range(2)], 1)


def test_sync_batchnorm_on_cuda_is_torchs():
    from torch import nn

    from pipelines.training.step import use_global_batchnorm

    method = prepare(small("byol"), 1, 10, torch.device("cuda")).method
    converted = use_global_batchnorm(method, torch.device("cuda"))
    assert any(isinstance(m, nn.SyncBatchNorm) for m in converted.modules())
