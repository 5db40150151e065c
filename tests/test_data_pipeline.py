import torch

from pipelines.augment import view_column
from pipelines.config import load_config
from pipelines.data import training_dataset
from pipelines.dataset_store import read_info


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
