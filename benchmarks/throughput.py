"""Images/second of the full pipeline against a plain PyTorch DataLoader loop and the compute-only limit.

    .venv/bin/python -m benchmarks.throughput --methods byol dino mae --limit 10240

For each method's quick preset (same model, augmentations, batch and training step in all three):
- limit: the training step alone, on views already augmented and held in memory;
- dataloader: a torch DataLoader with one worker process decoding and augmenting (the same albumentations
  recipes) feeding the step in this process;
- pipeline: `pipelines.pretrain` itself (Ray Data row groups -> augmentation actor -> Ray Train worker),
  the images/second of its second epoch (evaluation off).
Then MAE's step time at mask ratio 0.75 against 0.0 (the encoder sees only the visible patches).
Prints a Markdown table of the figures and their ratios, measured in the same run.
"""
import argparse
import time

import numpy as np
import torch

from pipelines.config.load import load_config
from pipelines.config.project import PROJECT_ROOT
from pipelines.config.schema import Config
from pipelines.data.augment_batch import AugmentBatch, view_column
from pipelines.data.store import read_info, read_rows
from pipelines.features.extract import Normalizer
from pipelines.training.step import TrainStep, prepare

CPU = torch.device("cpu")


def augmenter(config: Config, channels: int) -> AugmentBatch:
    return AugmentBatch(config.method.model_dump(mode="json"), config.data.image_size, channels,
                        config.crop_scale_min(), config.data.remove_augmentations)


def views_of(batch: dict, num_views: int, normalize: Normalizer) -> list[torch.Tensor]:
    return [normalize(torch.as_tensor(batch[view_column(v)])) for v in range(num_views)]


def timed_steps(config: Config, channels: int, batches, steps_per_epoch: int, normalize: Normalizer,
                device: torch.device = CPU) -> float:
    """Images per second of the training step over `batches` (an iterable of augmented numpy batches),
    the first two steps (warm-up) not counted."""
    torch.manual_seed(0)
    prepared = prepare(config, channels, steps_per_epoch, device)
    step = TrainStep(config, prepared.method, prepared.optimizer, steps_per_epoch, device)
    images, started = 0, None
    for index, batch in enumerate(batches):
        if index == 2:
            started = time.perf_counter()
        loss = step(views_of(batch, prepared.method.num_views, normalize), index)["loss"]
        if index >= 2:
            images += config.data.batch_size
    loss.item()  # the GPU's queue drained
    return images / (time.perf_counter() - started)


def compute_limit(config: Config, encoded: list[bytes], channels: int, normalize: Normalizer, steps: int,
                  device: torch.device = CPU) -> float:
    """The step alone: one augmented batch (copied onto the device once) stepped `steps` times."""
    batch = augmenter(config, channels)({"image": np.array(encoded[:config.data.batch_size], dtype=object)})
    held = {key: torch.as_tensor(value).to(device) for key, value in batch.items() if key.startswith("view_")}
    return timed_steps(config, channels, [held] * (steps + 2), steps + 2, normalize, device)


class EncodedImages(torch.utils.data.Dataset):
    def __init__(self, encoded: list[bytes]):
        self.encoded = encoded

    def __len__(self) -> int:
        return len(self.encoded)

    def __getitem__(self, index: int) -> bytes:
        return self.encoded[index]


class AugmentCollate:
    """A DataLoader's collate_fn: the augmentation `make(*arguments)` builds, on a batch of encoded images."""

    def __init__(self, make, *arguments):
        self.make, self.arguments, self.augment = make, arguments, None

    def __call__(self, encoded: list[bytes]) -> dict:
        if self.augment is None:  # built in the worker process
            self.augment = self.make(*self.arguments)
        return self.augment({"image": np.array(encoded, dtype=object)})


def dataloader_loop(config: Config, encoded: list[bytes], channels: int, normalize: Normalizer) -> float:
    loader = torch.utils.data.DataLoader(EncodedImages(encoded), batch_size=config.data.batch_size, shuffle=True,
                                         drop_last=True, num_workers=1, collate_fn=AugmentCollate(augmenter, config, channels),
                                         prefetch_factor=4, persistent_workers=False)
    return timed_steps(config, channels, loader, len(encoded) // config.data.batch_size, normalize)


def pipeline(config: Config) -> float:
    from pipelines.pretraining.run import pretrain

    run = config.model_copy(deep=True)
    run.train.epochs = 2
    run.eval.every_epochs, run.eval.baseline, run.eval.picture_every = 0, False, 0
    run.eval.final_protocols = []
    run.tracking.experiment = f"benchmark-throughput-{config.method.name}"
    return pretrain(run).metrics["images_per_second"]


def mae_mask_timing(config: Config, encoded: list[bytes], channels: int, normalize: Normalizer,
                    steps: int) -> dict[float, float]:
    """Seconds per MAE step at mask ratio 0.75 and 0.0, same batch, same model."""
    batch = augmenter(config, channels)({"image": np.array(encoded[:config.data.batch_size], dtype=object)})
    torch.manual_seed(0)
    prepared = prepare(config, channels, steps, CPU)
    step = TrainStep(config, prepared.method, prepared.optimizer, steps, CPU)
    views = views_of(batch, 1, normalize)
    seconds = {}
    for ratio in (0.75, 0.0):
        prepared.method.mask_ratio = ratio
        step(views, 0)
        started = time.perf_counter()
        for index in range(steps):
            step(views, index)
        seconds[ratio] = (time.perf_counter() - started) / steps
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="*", default=["byol", "dino", "mae"])
    parser.add_argument("--limit", type=int, default=10240, help="training images per epoch")
    parser.add_argument("--limit-steps", type=int, default=20, help="steps timed for the compute-only limit")
    parser.add_argument("--data", default=str(PROJECT_ROOT / "data" / "fashion_mnist"))
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the step (the Train worker's)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    info = read_info(args.data)
    encoded = read_rows(args.data, "train", range(args.limit), ("image",)).column("image").to_pylist()
    normalize = Normalizer(info.mean, info.std, CPU)
    rows = []
    for method in args.methods:
        config = load_config(PROJECT_ROOT / "configs" / f"{method}_fmnist_quick.yaml",
                             [f"data.path={args.data}", f"data.limit={args.limit}", f"train.torch_threads={args.threads}"])
        limit = compute_limit(config, encoded, info.channels, normalize, args.limit_steps)
        print(f"{method}: compute-only limit {limit:.0f} img/s", flush=True)
        loader = dataloader_loop(config, encoded, info.channels, normalize)
        print(f"{method}: plain DataLoader loop {loader:.0f} img/s", flush=True)
        through = pipeline(config)
        print(f"{method}: pipeline {through:.0f} img/s", flush=True)
        rows.append((method, config.model.backbone, limit, loader, through))
    print("\n| method | backbone | limit (img/s) | DataLoader | pipeline | pipeline / DataLoader | pipeline / limit |"
          "\n|---|---|---|---|---|---|---|")
    for method, backbone, limit, loader, through in rows:
        print(f"| {method} | {backbone} | {limit:.0f} | {loader:.0f} | {through:.0f} | {through / loader:.2f} "
              f"| {through / limit:.2f} |")
    if "mae" in args.methods:
        config = load_config(PROJECT_ROOT / "configs" / "mae_fmnist_quick.yaml", [f"data.path={args.data}"])
        seconds = mae_mask_timing(config, encoded, info.channels, normalize, 5)
        print(f"\nMAE step at mask 0.75: {seconds[0.75] * 1000:.0f} ms; at mask 0.0: {seconds[0.0] * 1000:.0f} ms "
              f"(ratio {seconds[0.75] / seconds[0.0]:.2f})")


if __name__ == "__main__":
    main()
