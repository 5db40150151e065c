"""The function each Ray Train worker of a pretraining runs, and the stream of batches both Train loops
(pretraining, fine-tuning) read. Ray imports this module to unpickle the function before it calls it, so it
imports nothing heavy: the worker asks Ray Data for its first batch at once, and Ray
Data's coordinator, reader and augmentation actor start while the worker imports the training loop (timm,
albumentations, MLflow: about 3 s on this CPU) and builds its model."""
import threading
from typing import Iterator


def stream_options(batch_size: int, shuffle_buffer: int, prefetch_batches: int, use_gpu: bool) -> dict:
    """Batches in pinned host memory: the loop copies the views and labels to the device without waiting, and keeps
    on the host what the step reads there (DINOv2's masks, whose masked positions it finds on the host)."""
    return {"batch_size": batch_size, "drop_last": True, "local_shuffle_buffer_size": shuffle_buffer or None,
            "prefetch_batches": prefetch_batches, "pin_memory": use_gpu, "device": "cpu"}


def train_worker(loop_config: dict) -> None:
    import ray.train

    batches = started_stream(ray.train.get_dataset_shard("train"), **loop_config["stream"])
    from pipelines.training.loop import train_loop
    from pipelines.training.session import WorkerSession

    train_loop(loop_config, batches, WorkerSession(loop_config["run_folder"]))


def started_stream(shard, **options) -> Iterator[dict]:
    """The shard's batches, the first asked for at once by a thread: Ray Data starts its reader and augmentation
    actors while this worker builds its model and evaluation sets, instead of at the first step."""
    batches, first = iter(shard.iter_torch_batches(**options)), {}

    def fetch():
        try:
            first["batch"] = next(batches, None)
        except BaseException as error:  # raised where the batch is asked for
            first["error"] = error

    thread = threading.Thread(target=fetch, name="first-batch", daemon=True)  # a failed setup does not wait on it
    thread.start()

    def stream():
        thread.join()
        if "error" in first:
            raise first["error"]
        if first["batch"] is not None:
            yield first["batch"]
            yield from batches
    return stream()
