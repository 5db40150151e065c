import random
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.storage.checkpoint import load_training_state, rng_state, save_training_state, worker_checkpoint_folder
from ssl_models import MoCo
from tests.helpers import tiny_method


def test_state_round_trip_restores_queue_centre_optimizer_and_rng(tmp_path):
    torch.manual_seed(0)
    moco = tiny_method("moco")
    dino = tiny_method("dino", head_hidden_dim=16, num_local_crops=0)
    moco.enqueue(torch.randn(5, 8))
    dino.update_center(torch.randn(4, 16))
    for method in (moco, dino):
        optimizer = torch.optim.AdamW(method.trained.parameters(), lr=0.1)
        views = [torch.randn(4, 3, 4, 4), torch.randn(4, 3, 4, 4)]
        method.training_step(views, 0)["loss"].backward()
        optimizer.step()
        folder = tmp_path / type(method).__name__
        folder.mkdir()
        save_training_state(folder, method, optimizer, step=7, epoch=1, metrics={"init_knn_top1_k20": 0.3})
        expected_random = (torch.rand(3), np.random.rand(3), random.random())

        torch.manual_seed(123)
        fresh = tiny_method("moco") if isinstance(method, MoCo) else tiny_method("dino", head_hidden_dim=16,
                                                                                  num_local_crops=0)
        fresh_optimizer = torch.optim.AdamW(fresh.trained.parameters(), lr=0.1)
        restored = load_training_state(folder, fresh, fresh_optimizer)
        assert restored["step"] == 7 and restored["epoch"] == 1
        for key, value in method.state_dict().items():
            assert torch.equal(fresh.state_dict()[key], value), key
        assert fresh_optimizer.state_dict()["state"].keys() == optimizer.state_dict()["state"].keys()
        assert torch.equal(torch.rand(3), expected_random[0])
        assert np.array_equal(np.random.rand(3), expected_random[1]) and random.random() == expected_random[2]
    assert moco.queue_pointer.item() == 5 + 4  # enqueue + one training step


def test_each_rank_resumes_its_own_random_stream(tmp_path):
    method = tiny_method("moco")
    optimizer = torch.optim.AdamW(method.trained.parameters(), lr=0.1)
    states = []
    for seed in (1, 2):  # what two ranks would have gathered
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        states.append(rng_state())
    save_training_state(tmp_path, method, optimizer, step=3, epoch=1, metrics={}, rng_states=states)
    expected = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        expected.append(torch.rand(4))
    for rank in (1, 0):
        assert load_training_state(tmp_path, tiny_method("moco"), optimizer, rank)["rng_restored"]
        assert torch.equal(torch.rand(4), expected[rank])
    assert not load_training_state(tmp_path, tiny_method("moco"), optimizer, rank=2)["rng_restored"]


@pytest.mark.filterwarnings("ignore:.*meta parameter")
def test_a_checkpoint_loads_into_a_method_on_another_device(tmp_path):
    """The state file is read on the CPU and load_state_dict places each tensor: the RNG state, which must stay
    on the CPU, never lands on the accelerator (loading with map_location=device broke every GPU restart).
    `meta` stands in for the accelerator here; tests/training/test_gpu.py repeats this on CUDA."""
    method = tiny_method("moco")
    optimizer = torch.optim.AdamW(method.trained.parameters(), lr=0.1)
    method.training_step([torch.randn(4, 3, 4, 4), torch.randn(4, 3, 4, 4)], 0)["loss"].backward()
    optimizer.step()
    save_training_state(tmp_path, method, optimizer, step=1, epoch=1, metrics={})
    elsewhere = tiny_method("moco").to("meta")
    moved_optimizer = torch.optim.AdamW(elsewhere.trained.parameters(), lr=0.1)
    restored = load_training_state(tmp_path, elsewhere, moved_optimizer)
    assert restored["step"] == 1 and restored["rng_restored"]
    assert all(p.device.type == "meta" for p in elsewhere.parameters())


def test_each_worker_reads_a_downloaded_checkpoint_from_a_folder_of_its_own(tmp_path):
    """Two workers of one node restoring from object storage (here a pyarrow filesystem that is not the local
    one): Ray's `as_directory` hands both one folder, which the later one downloads into again while the
    earlier one reads it."""
    import pyarrow.fs
    from ray.train import Checkpoint

    stored = tmp_path / "bucket" / "checkpoint_000001"
    stored.mkdir(parents=True)
    (stored / "training_state.pt").write_bytes(b"x" * 1_000_000)
    checkpoint = Checkpoint("checkpoint_000001", filesystem=pyarrow.fs.SubTreeFileSystem(
        str(tmp_path / "bucket"), pyarrow.fs.LocalFileSystem()))
    with worker_checkpoint_folder(checkpoint) as first:
        with worker_checkpoint_folder(checkpoint) as second:
            assert first != second and (Path(second) / "training_state.pt").stat().st_size == 1_000_000
        assert (Path(first) / "training_state.pt").read_bytes() == b"x" * 1_000_000
    assert not Path(first).exists() and not Path(second).exists()
    with worker_checkpoint_folder(Checkpoint(str(stored))) as folder:  # local storage: read where it is
        assert folder == str(stored)
    with worker_checkpoint_folder(None) as folder:
        assert folder is None


def test_a_trial_stores_its_checkpoint_where_ray_train_would_keeps_the_last_and_resumes_from_it(tmp_path):
    """A sweep trial of one worker (pipelines/training/session.py) writes its checkpoints into the run's folder named
    as Ray Train names them, after any of Train's, keeps only the newest, and resumes from the newest."""
    from pipelines.storage.files import latest_checkpoint, store_checkpoint
    from pipelines.training.session import ProcessSession, unrecorded_checkpoint

    run = tmp_path / "runs" / "trial-1"
    trains = run / "checkpoint_2000-01-01_00-00-00.000001"  # one Ray Train wrote, and recorded
    trains.mkdir(parents=True)
    (run / "checkpoint_manager_snapshot.json").write_text("{}")
    assert ProcessSession(str(run), use_gpu=False).checkpoint.path == str(trains)
    (run / "checkpoint_manager_snapshot.json").unlink()
    assert ProcessSession(str(run), use_gpu=False).checkpoint is None  # no record, no mark: maybe half-uploaded
    local = tmp_path / "local"
    local.mkdir()
    (local / "state.pt").write_bytes(b"state")
    stored = store_checkpoint(str(run), str(local))
    assert latest_checkpoint(str(run)) == stored and (Path(stored) / "state.pt").read_bytes() == b"state"
    assert [path.name for path in run.iterdir()] == [Path(stored).name] and (Path(stored) / ".stored").is_file()
    session = ProcessSession(str(run), use_gpu=False)
    assert session.checkpoint.path == stored and session.device == torch.device("cpu")
    assert (session.rank, session.world_size, session.local_world_size) == (0, 1, 1)
    assert ProcessSession(str(tmp_path / "runs" / "new"), use_gpu=False).checkpoint is None
    # a trial's actor ended while it stored its next checkpoint: the copy has no mark, the one before it is resumed
    halfway = run / "checkpoint_2999-01-01_00-00-00.000001"
    halfway.mkdir()
    assert ProcessSession(str(run), use_gpu=False).checkpoint.path == stored
    assert unrecorded_checkpoint(str(run)).path == stored
    halfway.rmdir()
    # a Ray Train run resuming it starts from it, unless Train has a record of its own checkpoints
    assert unrecorded_checkpoint(str(run)).path == stored
    (run / "checkpoint_manager_snapshot.json").write_text("{}")
    assert unrecorded_checkpoint(str(run)) is None
    (run / "checkpoint_manager_snapshot.json").unlink()
    (Path(stored) / ".stored").unlink()  # not known to be whole: an upload of Train's may have stopped halfway
    assert unrecorded_checkpoint(str(run)) is None


@pytest.mark.slow
def test_a_trials_checkpoint_goes_to_object_storage_too(s3_server, tmp_path, monkeypatch):
    """The same on S3 (moto): stored under the run's prefix, the older one removed, found again by the next session."""
    from pipelines.storage.files import latest_checkpoint, store_checkpoint
    from pipelines.training.session import ProcessSession

    for key, value in s3_server["env"].items():
        if key.startswith(("AWS_", "MLFLOW_S3")):
            monkeypatch.setenv(key, value)
    local = tmp_path / "local"
    local.mkdir()
    (local / "state.pt").write_bytes(b"first")
    first = store_checkpoint("s3://test/runs/trial-1", str(local))
    (local / "state.pt").write_bytes(b"second")
    second = store_checkpoint("s3://test/runs/trial-1", str(local))
    assert first != second and latest_checkpoint("s3://test/runs/trial-1") == second
    with s3_server["fs"].open_input_stream(second.removeprefix("s3://") + "/state.pt") as stream:
        assert stream.read() == b"second"
    assert not s3_server["fs"].get_file_info(first.removeprefix("s3://") + "/state.pt").is_file
    assert ProcessSession("s3://test/runs/trial-1", use_gpu=False).checkpoint.path == second.removeprefix("s3://")
