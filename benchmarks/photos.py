"""The data path at photo sizes: images per second per CPU core from stored rows to training views, in one run.

    .venv/bin/python -m benchmarks.photos      # about 25 minutes on 2 cores (5 more the first time: the photos)

Two folders made offline (benchmarks/photo_files.py): 512 web-sized JPEGs of 500x375 to 800x600, and 48 phone
photos of 4032x3024 (12 megapixels, about 2.3 MB each) in turn to 512 files; 512 so that the stores' row groups
hold 256 rows as a large folder's do (the ingest cuts a small folder into as many shards as CPUs). The phone
folder is also ingested with `--shorter-side 320`.
For BYOL's two 224-px views and DINO's 2 x 224 + 8 x 96 crops (configs/byol_resnet50_224.yaml,
configs/dino_vit_small16_224.yaml):

- transform alone: the augmentation function alone (`AugmentBatch` on the stored bytes, in this process, one
  thread, a row group's 256 images a call as in the stage), images per CPU-second, the mean of a measurement
  before the stage's and one after; on phone photos also with every image decoded in full (the crop-first decode
  off);
- transform, 2 at once: the same in two processes at once, as the stage's two actors run it, every core busy
  (this host's cores run slower together than one alone); the stage's rate as a share of it;
- stage: the whole Ray Data stage as training runs it (Parquet row groups read, decoded and augmented in two
  actors of 0.5 CPU -> a consumer here that counts the blocks), the CPU of every process involved (Ray's workers
  and actors, the raylet and GCS, and this process, which runs Ray Data's executor and the consumer) in a window
  of one execution past the actors' warm-up (their start, and their first writes into the object store's shared
  pages, which fault them in), against the images the actors augmented in that window; where its CPU goes, and
  how much of it Ray's processes spend at rest (a fixed cost per second, whatever the node's size);
- transform in the stage: the same function timed inside the stage's actors (the CPU time of each call, in the
  same seconds and processes as the stage's, so that this host's drift in speed, up to 10 % between the
  measurements before and after the stage, does not enter the ratio), and the stage's rate as a share of it;
- dataloader: a torch DataLoader with one worker process and the same function, images per CPU-second of both;
- bytes per image: the views the actors ship to a Train worker against the stored JPEG, and from these how many
  CPU cores and how much network one GPU needs at published training speeds (`--gpu-rate` overrides them).
"""
import argparse
import contextlib
import functools
import math
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np

from benchmarks.photo_files import PHONE, write_photos
from pipelines.config.load import load_config
from pipelines.config.project import PROJECT_ROOT
from pipelines.data.augment_batch import AugmentBatch, AugmentTables, augmenter as actor_augmenter
from pipelines.data.store import ROWS_PER_GROUP, read_info, read_split
from pipelines.data.stream import augment_arguments

RECIPES = {"byol": PROJECT_ROOT / "configs" / "byol_resnet50_224.yaml",
           "dino": PROJECT_ROOT / "configs" / "dino_vit_small16_224.yaml"}
# Images per second one GPU trains, as published: DINO ViT-S/16 with 2 x 224 + 8 x 96 crops, 100 epochs of
# ImageNet in 1.75 days on 8 GPUs (facebookresearch/dino README: 106 images/s per GPU, V100-era); BYOL
# ResNet-50: NVIDIA's ResNet-50 v1.5 trains 2,470 images/s on one A100 80GB with AMP (DeepLearningExamples), one
# forward and backward of one view (3 passes); BYOL's step is 8 such passes for its two views (online forward and
# backward of each, the target's forward of each): about 926 images/s.
GPU_RATES = {"byol": 2470 * 3 / 8, "dino": 1_281_167 * 100 / (1.75 * 86400 * 8)}
BATCH = ROWS_PER_GROUP  # the stage augments a row group at a time
ROWS = 2 * ROWS_PER_GROUP  # files in a folder: the ingest on 2 CPUs writes 2 shards, each one full row group
# Two augmentation actors fault the object store's shared pages in over their first ~1,500 images (110 page faults an
# image, then 25; a put of warm pages costs a third of a put of fresh ones): the stage is measured past them.
WARM_IMAGES = 1500
WINDOW_IMAGES = 3000  # the stage is measured over at least this many images
WINDOW_SECONDS = 20.0  # and about this long (Ray's processes do some of their work every 1 to 10 s)
TAIL_IMAGES = 2 * ROWS_PER_GROUP  # the execution goes on past the window's end, so that it ends with the actors busy
REST_SECONDS = 10.0
THIS = "this process (executor, consumer)"


def config_for(recipe: str, store: str):
    return load_config(RECIPES[recipe], [f"data.path={store}", "data.augment_actors=1", "data.augment_actors_max=1",
                                         "train.num_workers=1", "train.epochs=1"])


def augmenter(recipe: str, store: str, crop_first: bool = True) -> AugmentBatch:
    augment = AugmentBatch(**augment_arguments(config_for(recipe, store), read_info(store)))
    augment.crop_first.applies = crop_first
    return augment


def stored_images(store: str) -> list[bytes]:
    return read_split(store, "train", ("image",)).column("image").to_pylist()


def transform_rate(recipe: str, store: str, crop_first: bool = True, rounds: int = 2) -> tuple[float, int]:
    """(images per CPU-second of the augmentation function alone, bytes of views per image)."""
    augment, images = warm_augmenter(recipe, store, crop_first)
    started = time.process_time()
    count, out = augment_all(augment, images, rounds)
    view_bytes = sum(value[0].nbytes for key, value in out.items() if key.startswith("view_"))
    return count / (time.process_time() - started), view_bytes


def warm_augmenter(recipe: str, store: str, crop_first: bool = True) -> tuple[AugmentBatch, list[bytes]]:
    augment, images = augmenter(recipe, store, crop_first), stored_images(store)
    augment({"image": np.array(images[:2], dtype=object)})
    return augment, images


def augment_all(augment: AugmentBatch, images: list[bytes], rounds: int) -> tuple[int, dict[str, np.ndarray]]:
    """(images augmented, the last call's output): `images` `rounds` times, BATCH a call."""
    count = 0
    for _ in range(rounds):
        for start in range(0, len(images), BATCH):
            out = augment({"image": np.array(images[start:start + BATCH], dtype=object)})
            count += len(out["view_0"])
    return count, out


def together_rate(recipe: str, store: str, processes: int = 2, rounds: int = 1) -> float:
    """Images per CPU-second of the augmentation function in `processes` processes at once, one thread each, as the
    stage's actors run it: with every core busy, as in the stage (this host's cores are slower together than one
    alone, by 0-20 % from minute to minute)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(processes), context.Queue()
    workers = [context.Process(target=timed_transform, args=(recipe, store, rounds, start, results))
               for _ in range(processes)]
    for worker in workers:
        worker.start()
    made = [results.get() for _ in workers]
    for worker in workers:
        worker.join()
    return sum(count for count, _ in made) / sum(cpu for _, cpu in made)


def timed_transform(recipe: str, store: str, rounds: int, start, results) -> None:
    """together_rate's process: (images, CPU seconds) of the function on the store's images, into `results`, timed
    from when every process is ready (`start`)."""
    cv2.setNumThreads(1)
    augment, images = warm_augmenter(recipe, store)
    start.wait()
    started = time.process_time()
    count, _ = augment_all(augment, images, rounds)
    results.put((count, time.process_time() - started))


class RayCpu:
    """CPU seconds of Ray's processes on this machine (workers, actors, raylet, GCS) from its start, by kind, to
    `now` or `stop`, sampled every 0.2 s so that a process ending between is counted to its last sample; the
    sampling's own CPU time (in this process) is kept in `own`."""

    def __init__(self):
        import threading

        self.before, self.last, self.sampling, self.asked, self.running = self.sample(), {}, 0.0, 0.0, True
        self.thread = threading.Thread(target=self.watch, daemon=True)
        self.thread.start()

    @staticmethod
    def sample() -> dict[int, tuple[str, float]]:
        import os

        import psutil

        found = {}
        for process in psutil.process_iter(["pid", "cmdline", "cpu_times"]):
            words = process.info["cmdline"] or [""]
            kind = ("actor" if "MapWorker" in words[0] else "tasks and idle workers") if words[0].startswith("ray::") \
                else "raylet, GCS" if any("raylet" in word or "gcs_server" in word for word in words[:1]) else None
            if kind and process.info["pid"] != os.getpid() and process.info["cpu_times"]:
                found[process.info["pid"]] = (kind, process.info["cpu_times"].user + process.info["cpu_times"].system)
        return found

    @property
    def own(self) -> float:
        return self.sampling + self.asked

    def watch(self) -> None:
        while self.running:
            started = time.thread_time()
            self.last.update(self.sample())
            self.sampling += time.thread_time() - started
            time.sleep(0.2)

    def now(self) -> dict[str, float]:
        started = time.thread_time()
        used = {}
        for pid, (kind, cpu) in {**self.last, **self.sample()}.items():
            used[kind] = used.get(kind, 0.0) + cpu - self.before.get(pid, (kind, 0.0))[1]
        self.asked += time.thread_time() - started
        return used

    def stop(self) -> dict[str, float]:
        self.running = False
        self.thread.join()
        return self.now()


class TimedAugmentTables(AugmentTables):
    """The stream's AugmentTables, each actor adding its augmentation calls (the function the transform-only rate
    times: the monotonic clock at their start and end, their CPU time, their images) to a file of its own in
    `folder`: which images were made when, and the transform inside the stage timed in the same seconds."""

    def __init__(self, arguments: dict, folder: str):
        super().__init__(arguments)
        self.folder = folder

    def augment(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        augment = actor_augmenter(self.arguments)  # built once an actor, not timed
        started, cpu = time.monotonic(), time.thread_time()
        out = augment(batch)
        with open(Path(self.folder) / str(os.getpid()), "a") as record:
            record.write(f"{started} {time.monotonic()} {time.thread_time() - cpu} {len(out['view_0'])}\n")
        return out


@contextlib.contextmanager
def augmentation_timed() -> Iterator[Callable[[], list[tuple[float, float, float, int]]]]:
    """Within it the stream's actors time their augmentation (TimedAugmentTables); yields a function that gives
    every actor's calls so far (start, end, CPU seconds, images)."""
    import pipelines.data.stream as stream

    original = stream.AugmentTables
    with tempfile.TemporaryDirectory() as folder:
        stream.AugmentTables = functools.partial(TimedAugmentTables, folder=folder)
        try:
            yield lambda: [(float(start), float(end), float(cpu), int(images)) for path in Path(folder).iterdir()
                           for start, end, cpu, images in (line.split() for line in path.read_text().splitlines())]
        finally:
            stream.AugmentTables = original


def within(calls: list[tuple[float, float, float, int]], start: float, end: float) -> tuple[float, float]:
    """(images, CPU seconds) of the augmentation calls between the monotonic times `start` and `end`, a call across
    either edge counted by the share of its time inside."""
    images = cpu = 0.0
    for began, ended, used, made in calls:
        share = max(0.0, min(ended, end) - max(began, start)) / max(ended - began, 1e-9)
        images, cpu = images + share * made, cpu + share * used
    return images, cpu


def stage_rate(recipe: str, store: str, expected: float,
               actors: int = 2) -> tuple[float, float, dict[str, float], float]:
    """(images per CPU-second of the whole Ray Data stage, and of the augmentation inside its actors; the CPU seconds
    by kind of process in the window, the window's wall seconds), after a first execution that warms the disk cache
    and imports. In one execution of the stage as training runs it, from the consumer's WARM_IMAGES-th image (past
    the actors' start and warm-up) to at least WINDOW_IMAGES more and about WINDOW_SECONDS at the `expected` images
    per second a core: every process's CPU seconds in that window against the images the actors augmented in it.
    The pool: `actors` augmentation actors of 1/`actors` CPU each (the presets start with 2)."""
    from pipelines.data.stream import training_dataset

    config = config_for(recipe, store)
    config.data.augment_actors = config.data.augment_actors_max = actors
    config.data.augment_cpus = 1 / actors
    info = read_info(store)
    for block in training_dataset(config, info).iter_batches(batch_size=None, batch_format="pyarrow"):
        pass
    window = max(WINDOW_IMAGES, round(WINDOW_SECONDS * actors * expected))
    config.train.epochs = math.ceil((WARM_IMAGES + window + TAIL_IMAGES) / info.splits["train"])
    with augmentation_timed() as calls:
        watch, count, marks, started = RayCpu(), 0, [], time.process_time()
        for block in training_dataset(config, info).iter_batches(batch_size=None, batch_format="pyarrow"):
            count += len(block)
            if len(marks) < 2 and count >= WARM_IMAGES + window * len(marks):
                marks.append((time.monotonic(), watch.now(), time.process_time() - started - watch.own))
        watch.stop()
        made = calls()
    (start, before, here_before), (end, after, here_after) = marks
    used = {kind: cpu - before.get(kind, 0.0) for kind, cpu in after.items()}
    used[THIS] = here_after - here_before
    images, cpu = within(made, start, end)
    return images / sum(used.values()), images / cpu, used, end - start


def at_rest(seconds: float = REST_SECONDS) -> float:
    """CPU cores Ray's processes use with no work (the raylet, the GCS, Ray Data's helper actors, the dashboard's
    agent), watched for `seconds` after the stages have run."""
    watch = RayCpu()
    time.sleep(seconds)
    return sum(watch.stop().values()) / seconds


def dataloader_rate(recipe: str, store: str, rounds: int = 2) -> float:
    """Images per CPU-second of a DataLoader with one worker process running the same function."""
    import torch

    from benchmarks.throughput import AugmentCollate, EncodedImages

    images = stored_images(store) * rounds
    loader = torch.utils.data.DataLoader(EncodedImages(images), batch_size=BATCH, num_workers=1,
                                         collate_fn=AugmentCollate(one_thread_augmenter, recipe, store),
                                         prefetch_factor=4)
    children, started, count = resource.getrusage(resource.RUSAGE_CHILDREN), time.process_time(), 0
    for batch in loader:
        count += len(batch["view_0"])
    del loader  # its worker ends, and its CPU time reaches RUSAGE_CHILDREN
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    child = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
    return count / (time.process_time() - started + child)


def one_thread_augmenter(recipe: str, store: str) -> AugmentBatch:
    """`augmenter` with OpenCV on one thread, as in the augmentation actors (built in a DataLoader's worker)."""
    cv2.setNumThreads(1)
    return augmenter(recipe, store)


def ingested(folder: Path, out: Path, shorter_side=None) -> str:
    from pipelines.ingestion.folder import ingest_folder

    if not (out / "dataset.json").exists():
        ingest_folder(folder, str(out), shorter_side=shorter_side)
    return str(out)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.photos", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "ssl-photos-benchmark"),
                        help="where the folders and stores are made (kept: a second run reuses them)")
    parser.add_argument("--web", type=int, default=ROWS, help="web-sized photos")
    parser.add_argument("--phone", type=int, default=48, help="12-megapixel photos")
    parser.add_argument("--phone-rows", type=int, default=ROWS,
                        help="files in the phone folder, the photos in turn (hard links after the first of each)")
    parser.add_argument("--shorter-side", type=int, default=320, help="the phone photos' stored copy (px)")
    parser.add_argument("--gpu-rate", nargs=2, action="append", metavar=("RECIPE", "IMAGES_PER_S"), default=[],
                        help="images/s one GPU trains for a recipe, instead of the published figure")
    args = parser.parse_args()
    import ray

    from pipelines.cluster.start import start_ray

    cv2.setNumThreads(1)
    work = Path(args.work)
    web, phone = work / f"web{args.web}", work / f"phone{args.phone}"
    for folder, count, smallest, largest in ((web, args.web, (375, 500), (600, 800)),
                                             (phone, args.phone, PHONE, PHONE)):
        if not folder.exists():
            print(f"making {count} photos in {folder}", flush=True)
            write_photos(folder, count, smallest, largest)
    phones = work / f"phone{args.phone}x{args.phone_rows}"
    phones.mkdir(exist_ok=True)
    originals = sorted(phone.glob("photo?????.jpg"))
    for index in range(args.phone_rows):
        linked = phones / f"photo{index:05d}.jpg"
        if not linked.exists():
            linked.hardlink_to(originals[index % len(originals)])
    start_ray(num_cpus=2)
    stores = {"web 500x375-800x600": ingested(web, work / f"{web.name}_store"),
              "phone 4032x3024": ingested(phones, work / f"{phones.name}_store"),
              f"phone, stored at {args.shorter_side} px": ingested(phones, work / f"{phones.name}_{args.shorter_side}",
                                                                   args.shorter_side)}
    gpu_rates = {**GPU_RATES, **{name: float(rate) for name, rate in args.gpu_rate}}
    print("\n| recipe | photos | stored bytes | transform alone | transform, 2 at once | stage | stage / 2 at once | "
          "transform in the stage | stage / in the stage | DataLoader | view bytes |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    results, shares = {}, []
    for recipe in RECIPES:
        for label, store in stores.items():
            jpeg_bytes = float(np.mean([len(data) for data in stored_images(store)]))
            before, view_bytes = transform_rate(recipe, store)
            together = together_rate(recipe, store)
            stage, inside, used, wall = stage_rate(recipe, store, together)
            transform = (before + transform_rate(recipe, store)[0]) / 2  # before and after: the host's speed drifts
            together = (together + together_rate(recipe, store)) / 2
            loader = dataloader_rate(recipe, store)
            results[recipe, label] = (stage, jpeg_bytes, view_bytes)
            print(f"| {recipe} | {label} | {jpeg_bytes / 1e3:.0f} KB | {transform:.0f} | {together:.0f} | "
                  f"{stage:.0f} | {stage / together:.0%} | {inside:.0f} | {stage / inside:.0%} | {loader:.0f} | "
                  f"{view_bytes / 1e3:.0f} KB |", flush=True)
            shares.append((recipe, label, used, wall))
            if label.startswith("phone 4032"):
                full, _ = transform_rate(recipe, store, crop_first=False, rounds=1)
                print(f"| {recipe} | {label}, decoded in full | | {full:.0f} | | | | | | | |", flush=True)
    rest = at_rest()
    print(f"\nWhere the stage's CPU goes (in the window), and the "
          f"share of it that Ray's processes spend at rest ({rest:.3f} of a core, watched {REST_SECONDS:.0f} s "
          f"after the stages):")
    for recipe, label, used, wall in shares:
        total = sum(used.values())
        print(f"  {recipe}, {label}: " + ", ".join(f"{kind} {cpu / total:.0%}" for kind, cpu in
                                                   sorted(used.items(), key=lambda item: -item[1]))
              + f"; at rest {rest * wall / total:.1%}")
    print("\nOne GPU's needs at its published training speed (augmentation on CPU nodes ships the views; on the GPU "
          "node's own cores, the JPEGs):")
    print("| recipe | photos | GPU img/s | CPU cores | network, views | network, JPEGs |")
    print("|---|---|---|---|---|---|")
    for (recipe, label), (stage, jpeg_bytes, view_bytes) in results.items():
        rate = gpu_rates[recipe]
        print(f"| {recipe} | {label} | {rate:.0f} | {rate / stage:.1f} | {rate * view_bytes * 8 / 1e9:.2f} Gbit/s | "
              f"{rate * jpeg_bytes * 8 / 1e9:.2f} Gbit/s |")
    ray.shutdown()


if __name__ == "__main__":
    main()
