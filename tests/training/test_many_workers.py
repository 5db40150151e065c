"""Two real Ray Train workers: every rank starts from rank 0's state (targets, teachers, key encoders, queues),
BatchNorm is global where the paper has it, the lr follows the global batch; and 2-worker BYOL and DINO runs on
a class-sorted image folder train with identical replicas and mixed-class batches."""
import pytest
import torch
from mlflow.tracking import MlflowClient

from pipelines.config.load import load_config
from pipelines.pretraining.run import pretrain
from pipelines.training.methods import build_method
from ssl_models.batchnorm import GlobalBatchNorm
from tests.helpers import mlflow_store, results_of, tiny_overrides, two_worker_check

pytestmark = pytest.mark.slow

SMALL = {
    "byol": ["model.projector_hidden_dim=64", "model.projection_dim=32", "model.predictor_hidden_dim=64"],
    "moco": ["model.projector_hidden_dim=64", "model.projection_dim=32", "method.queue_size=64"],
    "dino": ["method.out_dim=64", "method.head_hidden_dim=64", "method.bottleneck_dim=32", "method.num_local_crops=2",
             "method.local_crop_size=12"],
}


def small_config(method: str):
    return load_config(None, [f"method.name={method}", "data.batch_size=8", "train.num_workers=2", *SMALL[method]])


@two_worker_check
def _first_step(rank: int) -> dict:
    import ray.train.torch

    from pipelines.training.step import TrainStep, prepare

    results = {}
    for method in SMALL:
        config = small_config(method)
        torch.manual_seed(100 + rank)  # as the loop does: each rank seeds seed + rank, so initialisations differ
        own = build_method(config, 1, 10)
        momentum_network = getattr(own, {"byol": "target", "moco": "key_encoder", "dino": "teacher"}[method])
        results[f"{method}/own_init"] = next(momentum_network.parameters()).detach().clone()
        torch.manual_seed(100 + rank)
        prepared = prepare(config, 1, 10, torch.device("cpu"), wrap=ray.train.torch.prepare_model)
        torch.manual_seed(200 + rank)  # different images on each rank
        sizes = [28, 28, 12, 12] if method == "dino" else [28, 28]
        views = [torch.randn(8, 1, size, size) for size in sizes]
        TrainStep(config, prepared.method, prepared.optimizer, 10, torch.device("cpu"))(views, 0)
        model = prepared.method
        in_ddp = {id(buffer) for buffer in model.trained.buffers()}  # DDP re-broadcasts these at each forward
        results[method] = {name: tensor.detach().clone()
                           for name, tensor in [*model.named_parameters(), *model.named_buffers()]
                           if id(tensor) not in in_ddp}
        results[f"{method}/global_bn"] = any(isinstance(m, GlobalBatchNorm) and m.across_workers for m in model.modules())
    return results


def test_after_step_0_every_rank_holds_the_same_targets_teachers_and_queues(two_worker_results):
    results = results_of(two_worker_results, _first_step)
    for method in SMALL:
        # without the start-up broadcast each rank would have had its own target/teacher/key encoder
        assert not torch.equal(results[0][f"{method}/own_init"], results[1][f"{method}/own_init"])
        names = results[0][method].keys()
        assert any(n.startswith(("target", "teacher", "key_encoder")) for n in names)
        for name in names:
            assert torch.equal(results[0][method][name], results[1][method][name]), f"{method}: {name}"
    assert "queue" in results[0]["moco"] and "center" in results[0]["dino"]
    # global BN where the paper has it (BYOL, DINO on a ResNet); MoCo keeps shuffle-BN
    assert results[0]["byol/global_bn"] and results[0]["dino/global_bn"] and not results[0]["moco/global_bn"]


@pytest.mark.parametrize("method", ["byol", "dino"])
def test_two_worker_run_on_a_class_sorted_folder(ray_session, sorted_shards, tmp_path, method):
    uri = mlflow_store(tmp_path)
    extra = {"method.out_dim": 256, "method.head_hidden_dim": 256, "method.bottleneck_dim": 64,
             "method.num_local_crops": 2, "model.backbone": "resnet18", "model.patch_size": "null"} if method == "dino" else {}
    overrides = tiny_overrides(sorted_shards, str(tmp_path / "runs"), uri, method, **{
        **extra, "data.image_size": 32, "data.batch_size": 32, "data.limit": "null", "train.epochs": 2,
        "train.num_workers": 2, "train.cpus_per_worker": 0.25, "eval.baseline": False, "eval.picture_every": 0,
        "eval.online_bank_size": 200, "eval.online_query_size": 48})
    outcome = pretrain(load_config(None, overrides))
    client = MlflowClient(uri)
    run = client.get_run(outcome.run_id)
    assert run.info.status == "FINISHED" and outcome.metrics["step"] == 2 * 7  # 480 images / (2 x 32)
    # the replicas (targets / teachers included) are bit-identical at the end of every epoch
    assert [m.value for m in client.get_metric_history(run.info.run_id, "replicas_identical")] == [1.0, 1.0]
    # the online probe ran on each worker's batches, its gradients averaged (its weights are in the fingerprint)
    probe = client.get_metric_history(run.info.run_id, "online_linear_top1")
    assert len(probe) == 2 and all(0.15 < m.value <= 1 for m in probe), probe  # chance: 0.1 (BYOL's read 0.32)
    # mixed-class batches: 32 images of 10 classes hold 9.7 classes on average when drawn uniformly;
    # each logged value is a mean over 1-2 batches (bound 7), their mean over the run at least 9
    mixed = [m.value for m in client.get_metric_history(run.info.run_id, "train/classes_per_batch")]
    assert min(mixed) >= 7 and sum(mixed) / len(mixed) >= 9, mixed
    params = run.data.params
    assert params["resolved.sync_batchnorm"] == "True" and params["resolved.global_batch"] == "64"
    base_lr = 0.03 if method == "dino" else 2e-3  # DINO's ResNet recipe (config.DINO_RESNET), BYOL's shared default
    assert float(params["resolved.effective_lr"]) == pytest.approx(base_lr * 64 / 256)
    assert params["optim.name"] == ("sgd" if method == "dino" else "adamw")
