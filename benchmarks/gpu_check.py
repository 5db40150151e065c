"""What the first GPU machine checks (benchmarks/gpu_check.sh runs it after the CUDA tests):

1. each 224-pixel preset (configs/*_224.yaml) takes 3 steps at its own per-GPU batch in bf16; printed: the
   seconds of the last 2, images/s, peak GPU memory;
2. DINO ViT-S/16 and BYOL ResNet-50 at 224 px: images/s of the training step alone (augmented views held on the
   GPU) against `pipelines.pretrain` on JPEG photos (Ray Data decoding and augmenting on the machine's CPUs,
   the second epoch's rate), on the same GPU in the same run.

    python -m benchmarks.gpu_check [--images 4096] [--dry-run]

Offline: the photos are crops of scikit-image's own pictures, the distillation teacher a randomly initialised
DINOv2 ViT-S/14 saved here, nothing is downloaded. `--dry-run` runs the same code on this CPU at sizes a CPU
affords (64-px images, batch 4, fp32), to check the script before a GPU's minutes are spent on it.
"""
import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.throughput import augmenter, compute_limit, pipeline
from pipelines.config.load import load_config
from pipelines.config.project import PROJECT_ROOT
from pipelines.data.augment_batch import MASKS, view_column
from pipelines.data.store import read_info, read_rows
from pipelines.features.extract import Normalizer
from pipelines.training.step import TrainStep, prepare

PRESETS = sorted(path.stem for path in (PROJECT_ROOT / "configs").glob("*_224.yaml"))
THROUGHPUT_PRESETS = ["dino_vit_small16_224", "byol_resnet50_224"]
# What a CPU affords of each preset (the dry run, and tests/training/test_photo_presets.py); the backbone, heads,
# optimizer and schedules stay the preset's.
# and of the pipeline's CPUs on a 2-core machine
CPU_SIZED_RUN = ["train.cpus_per_worker=0.25", "data.augment_actors=1", "data.augment_cpus=0.5"]
CPU_SIZED = {"default": ["data.image_size=64", "data.batch_size=4"],
             "dino": ["data.image_size=64", "data.batch_size=4", "method.num_local_crops=2",
                      "method.local_crop_size=32"],
             "dinov2": ["data.image_size=56", "data.batch_size=4", "method.num_local_crops=2",
                        "method.local_crop_size=28"],
             "distill": ["data.image_size=64", "data.batch_size=4", "method.teacher_image_size=56"]}


def cpu_sized(method: str) -> list[str]:
    return CPU_SIZED.get(method, CPU_SIZED["default"])


def photo_folder(root: Path, count: int, seed: int = 0) -> Path:
    """`count` JPEGs of 300-640 px on their longer side, random crops of scikit-image's photographs."""
    import cv2
    from skimage import data as pictures

    rng = np.random.default_rng(seed)
    sources = [getattr(pictures, name)() for name in ("astronaut", "chelsea", "coffee", "rocket")]
    root.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        source = sources[index % len(sources)]
        height, width = source.shape[:2]
        crop_h, crop_w = rng.integers(height // 2, height + 1), rng.integers(width // 2, width + 1)
        top, left = rng.integers(0, height - crop_h + 1), rng.integers(0, width - crop_w + 1)
        crop = source[top:top + crop_h, left:left + crop_w]
        scale = rng.uniform(300, 640) / max(crop.shape[:2])
        resized = cv2.resize(crop, (max(1, round(crop_w * scale)), max(1, round(crop_h * scale))))
        cv2.imwrite(str(root / f"photo{index:05d}.jpg"), cv2.cvtColor(resized, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, 90])
    return root


def teacher_weights(folder: Path, image_size: int) -> Path:
    """A vit_small_patch14_dinov2 weights file, randomly initialised, where the distillation preset expects
    DINOv2's released one."""
    import timm
    from safetensors.torch import save_file

    path = folder / "vit_small_patch14_dinov2.safetensors"
    model = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, img_size=image_size)
    save_file({key: value.contiguous() for key, value in model.state_dict().items()}, str(path))
    return path


def preset_steps(name: str, encoded: list[bytes], sets: list[str], device: torch.device, steps: int = 3) -> dict:
    """`steps` training steps of the preset on one batch of the photos: seconds of the steps after the first,
    images/s, peak memory."""
    config = load_config(PROJECT_ROOT / "configs" / f"{name}.yaml", sets)
    batch_size = config.data.batch_size
    torch.manual_seed(0)
    prepared = prepare(config, 3, 10, device)
    train_step = TrainStep(config, prepared.method, prepared.optimizer, 10, device)
    batch = augmenter(config, 3)({"image": np.array((encoded * batch_size)[:batch_size], dtype=object)})
    normalize = Normalizer([0.5] * 3, [0.25] * 3, device)  # the photos' statistics do not change a step's time
    views = [normalize(torch.from_numpy(batch[view_column(v)])) for v in range(prepared.method.num_views)]
    inputs = {"masks": torch.from_numpy(batch[MASKS])} if MASKS in batch else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = []
    for index in range(steps):
        started = time.perf_counter()
        loss = train_step(views, index, inputs)["loss"].item()  # .item() waits for the GPU
        seconds.append(time.perf_counter() - started)
        if not np.isfinite(loss):
            raise FloatingPointError(f"{name}: loss {loss} at step {index}")
    timed = sum(seconds[1:])
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {"preset": name, "batch": batch_size, "precision": train_step.precision, "first_s": seconds[0],
            "step_s": timed / (steps - 1), "images_per_s": batch_size * (steps - 1) / timed, "memory_gib": memory}


def throughput(name: str, data: str, images: int, sets: list[str], device: torch.device) -> dict:
    """Images/s of the step alone (views in memory) and of the whole pipeline, for one preset on the photos."""
    config = load_config(PROJECT_ROOT / "configs" / f"{name}.yaml",
                         [f"data.path={data}", f"data.limit={images}", *sets])
    info = read_info(data)
    encoded = read_rows(data, "train", range(min(images, config.data.batch_size)), ("image",)).column("image")
    normalize = Normalizer(info.mean, info.std, device)
    limit = compute_limit(config, encoded.to_pylist(), info.channels, normalize, 10, device)
    through = pipeline(config)
    return {"preset": name, "batch": config.data.batch_size, "limit": limit, "pipeline": through}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4096, help="photos for the throughput runs")
    parser.add_argument("--dry-run", action="store_true", help="on this CPU at CPU sizes, fp32")
    parser.add_argument("--presets", nargs="*", default=PRESETS)
    args = parser.parse_args(argv)
    device = torch.device("cpu" if args.dry_run else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA GPU here: --dry-run runs the check on the CPU")
    precision = "train.precision=fp32" if args.dry_run else "train.precision=bf16"
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    images = 64 if args.dry_run else args.images
    folder = photo_folder(work / "photos", images)
    encoded = [path.read_bytes() for path in sorted(folder.glob("*.jpg"))[:64]]
    print(f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU (dry run)'}; torch "
          f"{torch.__version__}; {images} photos in {work}", flush=True)

    rows = []
    for name in args.presets:
        method = load_config(PROJECT_ROOT / "configs" / f"{name}.yaml").method.name
        sets = [precision, *(cpu_sized(method) if args.dry_run else [])]
        if method == "distill":
            sets.append(f"method.teacher_weights={teacher_weights(work, 56 if args.dry_run else 224)}")
        rows.append(preset_steps(name, encoded, sets, device))
        row = rows[-1]
        print(f"{name}: batch {row['batch']} {row['precision']}, first step {row['first_s']:.2f} s, then "
              f"{row['step_s']:.3f} s a step ({row['images_per_s']:.0f} img/s), peak {row['memory_gib']:.1f} GiB",
              flush=True)
    print("\n| preset | batch | precision | s/step | img/s | peak GiB |\n|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['preset']} | {row['batch']} | {row['precision']} | {row['step_s']:.3f} | "
              f"{row['images_per_s']:.0f} | {row['memory_gib']:.1f} |")

    from pipelines.ingestion.folder import ingest_folder

    data = str(work / "shards")
    ingest_folder(str(folder), data)
    speeds = []
    for name in THROUGHPUT_PRESETS:
        method = load_config(PROJECT_ROOT / "configs" / f"{name}.yaml").method.name
        sets = [precision, f"train.storage_path={work / 'runs'}", f"tracking.tracking_uri=sqlite:///{work}/mlflow.db",
                *(cpu_sized(method) + CPU_SIZED_RUN if args.dry_run else [])]
        speeds.append(throughput(name, data, images, sets, device))
        print(f"{name}: step alone {speeds[-1]['limit']:.0f} img/s, pipeline {speeds[-1]['pipeline']:.0f} img/s",
              flush=True)
    print("\n| preset | batch | step alone (img/s) | pipeline (img/s) | pipeline / step |\n|---|---|---|---|---|")
    for row in speeds:
        print(f"| {row['preset']} | {row['batch']} | {row['limit']:.0f} | {row['pipeline']:.0f} | "
              f"{row['pipeline'] / row['limit']:.2f} |")


if __name__ == "__main__":
    main()
