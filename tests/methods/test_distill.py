"""Knowledge distillation: the teacher's input, its loading from each source, the losses, frozen teacher, EMA student;
two real Ray Train workers keep identical replicas, the ResNet student's BatchNorm statistics included."""
import tempfile

import pytest
import safetensors.torch
import timm
import torch
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from pipelines.config.load import load_config
from pipelines.config.section import ConfigError
from pipelines.storage.checkpoint import STATE_FILE, load_training_state, save_training_state
from pipelines.storage.export import save_backbone
from pipelines.training.methods import build_method
from pipelines.training.teacher import build_with_teacher, load_teacher
from ssl_models import backbone_spec, create_backbone
from ssl_models.batchnorm import GlobalBatchNorm
from ssl_models.dinov2 import sinkhorn_knopp
from ssl_models.distill import Distill, FrozenTeacher, TeacherInput
from tests.helpers import results_of, tiny_method, two_worker_check, write_run_files


def test_the_teacher_gets_its_own_standardisation_channels_and_size():
    adapt = TeacherInput([0.3], [0.2], [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], channels=3, image_size=16)
    pixels = torch.rand(2, 1, 8, 8)
    views = (pixels - 0.3) / 0.2  # as the student gets them
    expected = (pixels.expand(-1, 3, -1, -1) - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) \
        / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    expected = F.interpolate(expected, size=(16, 16), mode="bilinear", align_corners=False)
    assert torch.allclose(adapt(views), expected, atol=1e-5)
    same = TeacherInput([0.3], [0.2], [0.3], [0.2], channels=1)
    assert torch.allclose(same(views), views)


def small_backbone(name="resnet18"):
    return create_backbone(backbone_spec(name, in_chans=1, image_size=28))


def distiller(views="same", head=None, **kwargs):
    teacher_backbone, teacher_dim = small_backbone()
    teacher = FrozenTeacher(teacher_backbone, teacher_dim, head)
    student, width = small_backbone("resnet10t")
    return Distill(student, width, 10, teacher, projector_hidden_dim=64, head_hidden_dim=32, bottleneck_dim=8,
                   views=views, **kwargs)


def test_same_view_the_student_matches_the_teacher_features_of_its_own_view():
    torch.manual_seed(0)
    method = distiller()
    seen = []
    method.teacher.backbone.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    view = torch.randn(4, 1, 28, 28)
    out = method.training_step([view], 0)
    assert torch.equal(seen[0], view)
    with torch.no_grad():
        expected = 1 - F.cosine_similarity(method.student(view).projected, method.teacher(view)[0]).mean()
    assert out["feature_loss"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_different_views_are_swapped_between_student_and_teacher():
    torch.manual_seed(0)
    method = distiller(views="different", loss="smooth_l1")
    a, b = torch.randn(4, 1, 28, 28), torch.randn(4, 1, 28, 28)
    out = method.training_step([a, b], 0)
    with torch.no_grad():
        projected = method.student(torch.cat([a, b])).projected.chunk(2)
        teacher = method.teacher(torch.cat([a, b]))[0].chunk(2)
    expected = (F.smooth_l1_loss(projected[0], teacher[1]) + F.smooth_l1_loss(projected[1], teacher[0])) / 2
    assert out["feature_loss"].item() == pytest.approx(expected.item(), rel=1e-4)


def test_the_teacher_stays_frozen_in_eval_mode_and_the_exported_backbone_is_the_students_ema():
    torch.manual_seed(0)
    method = distiller().train()
    assert not method.teacher.training and method.student.training
    teacher_before = {k: v.clone() for k, v in method.teacher.state_dict().items()}
    optimizer = torch.optim.SGD(method.trained.parameters(), lr=0.1)
    method.training_step([torch.randn(4, 1, 28, 28)], 0)["loss"].backward()
    assert all(p.grad is None for p in method.teacher.parameters())
    optimizer.step()
    method.after_optimizer_step(0)
    assert all(torch.equal(teacher_before[k], v) for k, v in method.teacher.state_dict().items())  # BN stats too
    student, ema = method.student.backbone.conv1[0].weight, method.backbone.conv1[0].weight
    assert method.backbone is method.student_ema and not torch.equal(student, ema)


def test_a_checkpoint_leaves_the_teacher_out_and_resumes_into_a_method_that_loaded_its_own(tmp_path):
    torch.manual_seed(0)
    method = distiller()
    optimizer = torch.optim.SGD(method.trained.parameters(), lr=0.1)
    method.training_step([torch.randn(4, 1, 28, 28)], 0)["loss"].backward()
    optimizer.step()
    method.after_optimizer_step(0)
    save_training_state(tmp_path, method, optimizer, step=1, epoch=1, metrics={})
    saved = torch.load(tmp_path / STATE_FILE, weights_only=True)["method"]
    assert saved and not [key for key in saved if key.startswith("teacher.")]
    assert [key for key in torch.nn.Module.state_dict(method) if key.startswith("teacher.")]
    resumed = distiller()
    resumed.teacher.load_state_dict(method.teacher.state_dict())  # as each worker loads it from its source
    load_training_state(tmp_path, resumed, torch.optim.SGD(resumed.trained.parameters(), lr=0.1))
    whole, whole_resumed = torch.nn.Module.state_dict(method), torch.nn.Module.state_dict(resumed)
    assert all(torch.equal(value, whole_resumed[key]) for key, value in whole.items())


def test_a_teacher_with_a_dino_head_adds_the_cross_entropy_on_its_centred_output():
    torch.manual_seed(0)
    dino = tiny_method("dino", *small_backbone())
    center = torch.randn(1, 16)
    teacher = FrozenTeacher(dino.teacher.backbone, 512, dino.teacher.head, center, temperature=0.05)
    view = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        expected = F.softmax((dino.teacher.head(dino.teacher.backbone.eval()(view)) - center) / 0.05, dim=-1)
    assert torch.allclose(teacher(view)[1], expected, atol=1e-5)
    student, width = small_backbone("resnet10t")
    method = Distill(student, width, 10, teacher, projector_hidden_dim=64, head_hidden_dim=32, bottleneck_dim=8)
    out = method.training_step([view], 0)
    assert out["head_loss"] > 0 and out["loss"].item() == pytest.approx((out["feature_loss"] + out["head_loss"]).item())


def test_a_teacher_loads_from_a_run_with_its_dino_head_and_centre(tmp_path):
    """The files a DINO run leaves (run.json, a checkpoint with backbone export and training state)."""
    torch.manual_seed(0)
    overrides = ["method.name=dino", "method.out_dim=16", "method.head_hidden_dim=32", "method.bottleneck_dim=8",
                 "method.teacher_temperature=0.06"]
    config = load_config(None, overrides)
    dino = build_method(config, 1, 10)
    dino.center.normal_()
    write_run_files(tmp_path / "runs", "teacher", config, dino)
    student = load_config(None, ["method.name=distill", "method.teacher_run=teacher", "model.backbone=resnet10t",
                                 f"train.storage_path={tmp_path / 'runs'}"])
    teacher = load_teacher(student.method, student.train.storage_path, 1, [0.3], [0.35])
    assert torch.equal(teacher.center, dino.center) and teacher.temperature == 0.06
    view = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(teacher(view)[0], dino.teacher.backbone.eval()(view), atol=1e-5)
        assert torch.allclose(teacher.head(teacher(view)[0]), dino.teacher.head(dino.teacher.backbone(view)), atol=1e-5)
    with pytest.raises(ConfigError, match="method.teacher_run: no run named 'nobody'"):
        load_teacher(load_config(None, ["method.name=distill", "method.teacher_run=nobody",
                                        f"train.storage_path={tmp_path / 'runs'}"]).method, str(tmp_path / "runs"), 1)


@pytest.mark.parametrize("centering", ["sinkhorn_knopp", "ema"])
def test_a_dinov2_teacher_centres_its_targets_as_its_run_trained(centering, tmp_path):
    """Sinkhorn-Knopp training never moves the run's `center` (zero): the targets are Sinkhorn-Knopp's over the
    batch (each prototype an equal share), not a plain softmax; a run trained with DINO's centre uses it."""
    torch.manual_seed(0)
    config = load_config(None, ["method.name=dinov2", "model.backbone=vit_tiny_patch16_224", "model.patch_size=4",
                                "method.out_dim=16", "method.patch_out_dim=16", "method.head_hidden_dim=32",
                                "method.bottleneck_dim=8", f"method.centering={centering}", "method.sinkhorn_iterations=5",
                                "model.layer_scale_init=0"])  # no LayerScale: outputs that differ by image
    dinov2 = build_method(config, 1, 10)
    if centering == "ema":
        dinov2.center.normal_()
    write_run_files(tmp_path / "runs", "teacher", config, dinov2)
    student = load_config(None, ["method.name=distill", "method.teacher_run=teacher", "model.backbone=resnet10t",
                                 f"train.storage_path={tmp_path / 'runs'}"])
    teacher = load_teacher(student.method, student.train.storage_path, 1)
    views = torch.randn(32, 1, 28, 28)
    with torch.no_grad():
        scores = dinov2.teacher.head(dinov2.teacher.backbone.eval()(views)).float()
    probabilities = teacher(views)[1]
    assert torch.allclose(probabilities.sum(1), torch.ones(32), atol=1e-4)
    if centering == "sinkhorn_knopp":
        assert torch.allclose(probabilities, sinkhorn_knopp(scores, 0.07, 5), atol=1e-5)
        assert probabilities.std(0).mean() > 1e-3  # not one distribution for every image
        assert teacher.sinkhorn_iterations == 5 and torch.count_nonzero(dinov2.center) == 0
        assert probabilities.sum(0).std() < 0.5 * F.softmax(scores / 0.07, dim=-1).sum(0).std()  # equal shares
    else:
        assert torch.allclose(probabilities, F.softmax((scores - dinov2.center) / 0.07, dim=-1), atol=1e-5)
        assert teacher.sinkhorn_iterations is None


def test_a_timm_architecture_loads_its_weights_file_from_disk_and_bad_sources_say_what_is_wrong(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", num_classes=0)
    safetensors.torch.save_file(model.state_dict(), tmp_path / "resnet10t.safetensors")
    method = load_config(None, ["method.name=distill", "method.teacher_backbone=resnet10t",
                                f"method.teacher_weights={tmp_path / 'resnet10t.safetensors'}"]).method
    teacher = load_teacher(method, str(tmp_path), 1, [0.5], [0.25])
    view = torch.randn(2, 1, 28, 28)
    rgb = (view * 0.25 + 0.5).expand(-1, 3, -1, -1)
    expected = (rgb - torch.tensor(model.pretrained_cfg["mean"]).view(1, 3, 1, 1)) / torch.tensor(
        model.pretrained_cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(teacher(view)[0], model.eval()(expected), atol=1e-4)
    missing = method.model_copy(update={"teacher_weights": str(tmp_path / "absent.safetensors")})
    with pytest.raises(ConfigError, match="no weights file at .*nothing is downloaded"):
        load_teacher(missing, str(tmp_path), 1)
    with pytest.raises(ConfigError, match="does not fit resnet18"):
        load_teacher(method.model_copy(update={"teacher_backbone": "resnet18"}), str(tmp_path), 1)
    with pytest.raises(ConfigError, match="no backbone at"):
        load_teacher(method.model_copy(update={"teacher_backbone": None, "teacher_weights": str(tmp_path)}),
                     str(tmp_path), 1)
    grey = tmp_path / "grey"
    grey.mkdir()
    save_backbone(grey, small_backbone()[0], backbone_spec("resnet18", in_chans=1, image_size=28),
                  {"feature_dim": 512, "image_size": 28, "mean": [0.3], "std": [0.35]})
    with pytest.raises(ConfigError, match="the teacher takes 1-channel images and the data has 3"):
        load_teacher(method.model_copy(update={"teacher_backbone": None, "teacher_weights": str(grey)}),
                     str(tmp_path), 3)


def test_a_distillation_without_a_teacher_names_the_fields():
    with pytest.raises(ConfigError, match="method.teacher_run or method.teacher_weights"):
        load_config(None, ["method.name=distill"])


def batchnorm_statistics(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"{name}.{key}": buffer.detach().clone() for name, layer in module.named_modules()
            if isinstance(layer, _BatchNorm) for key, buffer in layer.named_buffers(recurse=False)}


@two_worker_check
def _distill_step(rank: int) -> dict:
    """One iteration of the training loop (the step, then the online probe's pass through the exported backbone)
    of a distillation into a ResNet student, each rank on its own images."""
    import ray.train.torch

    from pipelines.training.loop import probe_step
    from pipelines.training.step import TrainStep, prepare
    from ssl_models.online_probe import FirstOutput, OnlineProbe

    with tempfile.TemporaryDirectory(prefix=f"distill_rank{rank}_") as storage:  # each rank writes its own
        torch.manual_seed(0)  # the same teacher on both ranks, as both would read one run
        teacher = load_config(None, ["model.backbone=resnet10t", "model.projector_hidden_dim=32",
                                     "model.projection_dim=16", "model.predictor_hidden_dim=32"])
        write_run_files(storage, "teacher", teacher, build_method(teacher, 1, 10))
        config = load_config(None, ["method.name=distill", "method.teacher_run=teacher",
                                    f"train.storage_path={storage}", "model.backbone=resnet10t",
                                    "model.projector_hidden_dim=32", "data.batch_size=8", "train.num_workers=2",
                                    "optim.warmup_epochs=0"])
        torch.manual_seed(100 + rank)  # as the loop does: each rank seeds seed + rank, so initialisations differ
        own_init = next(build_with_teacher(config, 1, 10).student_ema.parameters()).detach().clone()
        torch.manual_seed(100 + rank)
        prepared = prepare(config, 1, 10, torch.device("cpu"), wrap=ray.train.torch.prepare_model)
    method = prepared.method
    train_step = TrainStep(config, method, prepared.optimizer, 10, torch.device("cpu"))
    probe = OnlineProbe(method.backbone.num_features, 10).start_in_sync()
    tap = FirstOutput(method.backbone)
    torch.manual_seed(200 + rank)  # different images (and labels) on each rank
    views, labels = [torch.randn(8, 1, 28, 28)], torch.randint(0, 10, (8,))
    tap.take()
    loss = train_step(views, 0)["loss"]
    student = batchnorm_statistics(method.student.backbone)  # what the EMA export copies at each step
    probe_step(probe, tap, method, views[0], labels, train_step.autocast)  # the export in train mode, on own images
    in_ddp = {id(buffer) for buffer in method.trained.buffers()}  # DDP re-broadcasts these at each forward
    return {"own_init": own_init, "loss": loss, "student_bn": student,
            "export_bn": batchnorm_statistics(method.backbone),
            "outside_ddp": {name: tensor.detach().clone()
                            for name, tensor in [*method.named_parameters(), *method.named_buffers()]
                            if id(tensor) not in in_ddp},
            "global_bn": [isinstance(layer, GlobalBatchNorm) and layer.across_workers
                          for network in (method.student.backbone, method.backbone)
                          for layer in network.modules() if isinstance(layer, _BatchNorm)]}


@pytest.mark.slow
def test_two_workers_hold_the_same_teacher_ema_student_and_its_batchnorm_statistics(two_worker_results):
    results = results_of(two_worker_results, _distill_step)
    # each rank built its own student before the start-up broadcast, and trained on its own images
    assert not torch.equal(results[0]["own_init"], results[1]["own_init"])
    assert results[0]["loss"].item() != results[1]["loss"].item()
    # the ResNet student normalises over the global batch: its running statistics, which the EMA export copies,
    # and the export's own after the online probe's pass in train mode, are the same on both ranks (with each
    # worker's own BatchNorm they differ: commit 9c0376e)
    for key in ("student_bn", "export_bn"):
        names = results[0][key].keys()
        assert any(name.endswith("running_mean") for name in names) and results[1][key].keys() == names
        assert any(results[0][key][name].abs().sum() > 0 for name in names if name.endswith("running_mean"))
        for name in names:
            assert torch.equal(results[0][key][name], results[1][key][name]), f"{key}: {name}"
    assert results[0]["global_bn"] and all(results[0]["global_bn"])
    names = results[0]["outside_ddp"].keys()
    assert any(n.startswith("teacher.") for n in names) and any(n.startswith("student_ema.") for n in names)
    for name in names:
        assert torch.equal(results[0]["outside_ddp"][name], results[1]["outside_ddp"][name]), name
