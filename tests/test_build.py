import pytest
import torch

from pipelines.build import build_method, build_optimizer, lr_schedule
from pipelines.config import load_config
from pipelines.pretrain import required_cpus


@pytest.mark.parametrize("name", ["adamw", "lars"])
def test_optimizer_skips_weight_decay_on_biases_and_norms(name):
    config = load_config(None, [f"optim.name={name}", "optim.weight_decay=0.1", "model.projector_hidden_dim=32",
                                "model.predictor_hidden_dim=32", "model.projection_dim=16"])
    method = build_method(config, channels=1, steps_per_epoch=5)
    optimizer = build_optimizer(config, method.trained)
    decays = {group["weight_decay"] for group in optimizer.param_groups}
    assert decays == {0.0, 0.1}
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in method.trained.parameters()}
    assert not optimized & {id(p) for p in method.target.parameters()}
    views = [torch.randn(4, 1, 28, 28), torch.randn(4, 1, 28, 28)]
    method.training_step(views, 0)["loss"].backward()
    optimizer.step()


def test_lr_schedule_spans_all_epochs_with_warmup():
    config = load_config(None, ["train.epochs=3", "optim.warmup_epochs=1", "optim.lr=0.1", "optim.min_lr=0"])
    lrs = lr_schedule(config, steps_per_epoch=10)
    assert len(lrs) == 30 and lrs[0] == 0 and lrs[10].item() == pytest.approx(0.1) and lrs[-1] == 0


def test_cpu_reservation_counts_every_consumer():
    config = load_config(None, ["train.num_workers=2", "train.cpus_per_worker=0.5", "data.augment_actors=1",
                                "data.augment_cpus=0.5", "data.read_cpus=0.25"])
    assert required_cpus(config) == 2 * 0.5 + 0.5 + 1.0
