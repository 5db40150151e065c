import gc
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.config.load import load_config
from pipelines.config.project import PROJECT_ROOT
from pipelines.data.augment_batch import view_column
from pipelines.data.store import read_info
from pipelines.data.stream import training_dataset

pytestmark = pytest.mark.slow  # Ray Data jobs


def test_ray_data_yields_two_differently_augmented_views(ray_session, fmnist_slice):
    config = load_config(None, [f"data.path={fmnist_slice}", "data.limit=128"])
    info = read_info(fmnist_slice)
    dataset = training_dataset(config, info)
    batch = next(iter(dataset.iter_torch_batches(batch_size=32)))
    v0, v1 = batch[view_column(0)], batch[view_column(1)]
    assert v0.shape == v1.shape == (32, 1, 28, 28)
    assert v0.dtype == torch.uint8
    assert not torch.equal(v0, v1)
    # each epoch augments anew
    again = next(iter(dataset.iter_torch_batches(batch_size=32)))
    assert not torch.equal(again[view_column(0)], v0)
    assert set(batch) == {view_column(0), view_column(1), "label"}  # labels ride along for the batch-mix signal
    assert batch["label"].shape == (32,) and 0 <= int(batch["label"].min()) and int(batch["label"].max()) < 10


def test_the_augmentation_actors_read_their_row_groups_and_data_limit_shares_a_task_between_groups(
        ray_session, fmnist_slice):
    """One operator: the read tasks run in the actor pool and augment what they read (no read task in a worker
    process of its own, no image bytes through the object store). `data.limit=300` leaves a few rows in each row
    group, read together: the tasks hold about 256 rows each, not one task per group."""
    config = load_config(None, [f"data.path={fmnist_slice}", "data.limit=300", "train.epochs=2"])
    dataset = training_dataset(config, read_info(fmnist_slice), restarts=False)
    labels = np.concatenate([batch["label"] for batch in dataset.iter_batches(batch_size=64)])
    assert len(labels) == 600 and np.bincount(labels, minlength=10).min() > 0
    operators = [line for line in dataset.stats().splitlines() if line.startswith("Operator")]
    assert len(operators) == 1 and "ReadAugmentedRowGroups: 3 tasks executed" in operators[0], operators



def test_a_stream_whose_actors_are_not_restarted_puts_no_error_on_the_console_of_the_process_that_made_them(
        ray_session, fmnist_slice):
    """A run that trains in its driver makes Ray Data's actors there. For actors it may restart, Ray's core worker
    tells that process's console once, at error level, that their constructor's arguments are in the object store.
    Each stream in a fresh process that joins the session's Ray."""
    script = ("import sys, ray\n"
              "from pipelines.config.load import load_config\n"
              "from pipelines.data.store import read_info\n"
              "from pipelines.data.stream import training_dataset\n"
              "ray.init(address=sys.argv[1])\n"
              f"config = load_config(None, ['data.path={fmnist_slice}', 'data.limit=128'])\n"
              "stream = training_dataset(config, read_info(config.data.path), restarts=sys.argv[2] == 'yes')\n"
              "assert len(next(iter(stream.iter_batches(batch_size=32)))['view_0']) == 32\n")

    def console(restarts: str) -> str:
        done = subprocess.run([sys.executable, "-c", script, ray_session.get_runtime_context().gcs_address, restarts],
                              cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stderr

    assert "constructor arguments in the object store" in console("yes")  # Ray's default: restarted
    assert "core_worker" not in console("no")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_the_stream_does_not_spin_a_core_while_training_holds_it_back(ray_session, fmnist_slice):
    """With a Train worker holding part of the CPUs, Ray Data's scheduling loop (in the split coordinator) spins
    once augmentation is ahead and nothing runs (Ray 2.60): over a long run that took a core from training
    (BYOL: 49 images/s instead of 200). Here an actor holds the CPUs a Train worker would."""
    from pipelines.data.stream import ahead_bytes, ingest_options

    config = load_config(None, [f"data.path={fmnist_slice}", "data.limit=512", "train.epochs=200"])
    info = read_info(fmnist_slice)
    assert ahead_bytes(config, info) == 64 * 2**20  # 8 batches of 2 views of 28x28: below the floor

    @ray_session.remote(num_cpus=config.train.cpus_per_worker)
    class TrainWorkerStandIn:
        def ready(self):
            return True

    worker = TrainWorkerStandIn.remote()
    ray_session.get(worker.ready.remote())
    dataset = training_dataset(config, info)
    options = ingest_options(config, info)  # as the run gives Train, which leaves its workers' CPUs out
    options.exclude_resources = options.exclude_resources.copy(cpu=config.train.cpus_per_worker)
    dataset.context.execution_options = options
    batches = iter(dataset.streaming_split(1, equal=True)[0].iter_batches(batch_size=256, prefetch_batches=2))
    for _ in range(16):  # a slow consumer: augmentation gets ahead and is held back
        next(batches)
        time.sleep(0.5)
    coordinator = next(pid for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
                       if b"SplitCoordinator" in Path(f"/proc/{pid}/cmdline").read_bytes())
    started, cpu = time.perf_counter(), cpu_seconds(coordinator)
    for _ in range(10):
        next(batches)
        time.sleep(0.5)
    busy = (cpu_seconds(coordinator) - cpu) / (time.perf_counter() - started)
    ray_session.kill(worker)
    del batches, dataset
    gc.collect()
    assert busy < 0.3, f"the split coordinator used {busy:.0%} of a core while the consumer held it back"



@pytest.mark.slow
def test_an_augmentation_actor_builds_its_views_without_importing_torch_timm_or_mlflow():
    """Every run starts a Ray Data augmentation actor in a fresh process: albumentations' PyTorch transforms
    alone cost it 1.5 s of CPU and 450 MB (the worker needs torch; this actor does not)."""
    import subprocess
    import sys

    from pipelines.config.project import PROJECT_ROOT

    dinov2 = load_config(None, ["method.name=dinov2", "model.backbone=vit_tiny_patch16_224", "model.patch_size=4"])
    code = ("import sys, cv2, numpy as np; from pipelines.data.augment_batch import AugmentBatch; "
            "AugmentBatch({'name': 'byol'}, 28, 3, 0.2); "
            f"stage = AugmentBatch({dinov2.method.model_dump(mode='json')!r}, 28, 3, 0.2, (), (7, 7)); "
            "image = cv2.imencode('.png', np.full((28, 28, 3), 128, np.uint8))[1].tobytes(); "
            "masks = stage({'image': [image] * 8})['masks']; "  # DINOv2's masks drawn there too
            "print(masks.shape, sorted(m for m in ('torch', 'timm', 'mlflow') if m in sys.modules))")
    found = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "(8, 2, 49) []", found.stdout + found.stderr


def test_the_augmentation_stage_draws_dinov2s_masks_as_dinov2_draws_them_for_a_batch():
    import cv2

    from pipelines.data.augment_batch import AugmentBatch
    from pipelines.data.store import DatasetInfo
    from pipelines.data.stream import augment_arguments

    config = load_config(None, ["method.name=dinov2", "model.backbone=vit_tiny_patch16_224", "model.patch_size=4",
                                "method.num_local_crops=2", "method.local_crop_size=12"])
    arguments = augment_arguments(config, DatasetInfo("grey", 1, {"train": 100}))
    assert arguments["mask_grid"] == (7, 7)  # 28 px in patches of 4
    assert augment_arguments(load_config(None, []), DatasetInfo("grey", 1, {"train": 100}))["mask_grid"] is None
    image = cv2.imencode(".png", np.random.default_rng(0).integers(0, 255, (28, 28), dtype=np.uint8))[1].tobytes()
    masks = AugmentBatch(**arguments)({"image": np.array([image] * 100, dtype=object)})["masks"]
    assert masks.shape == (100, 2, 49) and set(np.unique(masks)) == {0, 1}
    crops = masks.reshape(200, 49).astype(bool)
    masked = crops.sum(1)
    assert (masked > 0).sum() == 100  # int(200 crops x mask_probability 0.5) masked
    ratios = np.sort(masked[masked > 0]) / 49
    assert ratios.min() >= 0.1 - 1 / 49 and ratios.max() <= 0.5  # between mask_ratio_min and max (whole patches)
    assert abs(ratios.mean() - 0.3) < 0.03  # stratified over [0.1, 0.5]
