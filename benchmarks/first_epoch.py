"""The first epoch beside the second, window by window: is there a ramp, and where does it come from?

    .venv/bin/python -m benchmarks.first_epoch [--limit 20000] [--window 10] [--config PRESET] [--set key=value ...]

`make run`'s preset (a fresh Ray started by the run, as the command does) for 2 epochs on the first `--limit` training
images, every step logged (`train.log_every=1`). From MLflow: when each step ended (its metrics' time stamps), how long
the loop waited for its batch (`train/data_seconds`) and how long the step took (`train/step_seconds`); from the
process table, sampled every 0.5 s, the cores each process used in that window (the augmentation actor, Ray Data's
coordinator, and the Train worker or this process, where a run of one worker trains). Ends with `first epoch / second: R`.
"""
import argparse
import collections
import os
import tempfile
import time

import psutil

from benchmarks.run_phases import RayProcesses
from pipelines.config.load import load_config
from pipelines.config.project import PROJECT_ROOT
from pipelines.pretraining.run import pretrain

SHOWN = {"AugmentedRowGroups": "augment", "SplitCoordinator": "coordinator", "RayTrainWorker": "train worker",
         "driver": "driver (trains one worker)"}


class Timeline(RayProcesses):
    """Every Ray process's CPU seconds so far, every 0.5 s, with the time."""
    every = 0.5

    def __init__(self):
        super().__init__()
        self.points = []

    def record(self, sample: dict[int, tuple[str, float]]) -> None:
        own = psutil.Process().cpu_times()  # a run of one worker trains in this process (pipelines/training/session.py)
        self.points.append((time.time(), {**sample, os.getpid(): ("driver", own.user + own.system)}))

    def cores(self, start: float, end: float) -> dict[str, float]:
        """{process name: cores used} between two times (the nearest samples); `SHOWN`'s names match any process
        whose name holds them (Ray Data names its actors after the operator: MapWorker(ReadAugmentedRowGroups))."""
        def at(moment):
            return min(self.points, key=lambda point: abs(point[0] - moment))

        (t0, before), (t1, after) = at(start), at(end)
        used = collections.defaultdict(float)
        for pid, (name, cpu) in after.items():
            shown = next((key for key in SHOWN if key in name), name)
            used[shown] += cpu - before.get(pid, (name, 0.0))[1]
        return {name: spent / max(t1 - t0, 1e-9) for name, spent in used.items()}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.first_epoch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(PROJECT_ROOT / "configs" / "simclr_fmnist_quick.yaml"))
    parser.add_argument("--limit", type=int, default=20_000, help="training images (data.limit)")
    parser.add_argument("--window", type=int, default=10, help="steps per row")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    from mlflow.tracking import MlflowClient

    folder = tempfile.mkdtemp(prefix="first_epoch_")
    sets = [f"data.limit={args.limit}", "train.epochs=2", "train.log_every=1", "eval.baseline=false",
            "eval.final_protocols=[]", f"train.storage_path={folder}/runs",
            f"tracking.tracking_uri=sqlite:///{folder}/mlflow.db", *args.overrides]
    config = load_config(args.config, sets)
    batch = config.data.batch_size
    timeline = Timeline()
    timeline.start()
    started = time.time()
    result = pretrain(load_config(args.config, sets), verbose=False, progress=False)
    timeline.stop()
    client = MlflowClient(result.tracking_uri)

    def history(key):
        return {metric.step: metric for metric in client.get_metric_history(result.run_id, key)}

    ended, waits, steps, epochs = (history(key) for key in ("train/loss", "train/data_seconds", "train/step_seconds",
                                                             "epoch_seconds"))
    bounds = sorted(epochs)  # the last step of each epoch
    if config.train.log_every != 1:  # the table needs every step's metrics
        first, second = (epochs[last].value for last in bounds[:2])
        print(f"epochs: {first:.1f} s and {second:.1f} s; first epoch / second: {first / second:.3f} "
              f"(train.log_every={config.train.log_every}: no table by step)")
        return
    print(f"{'epoch':>5} {'steps':>9} {'s':>6} {'img/s':>6} {'wait s':>7} {'step s':>7} "
          + " ".join(f"{label + ' cores':>18}" for label in SHOWN.values()))
    for epoch, last in enumerate(bounds, 1):
        first = last - (bounds[0] if epoch == 1 else last - bounds[epoch - 2]) + 1
        epoch_start = epochs[last].timestamp / 1000 - epochs[last].value
        for low in range(first, last + 1, args.window):
            high = min(low + args.window - 1, last)
            begin = ended[low - 1].timestamp / 1000 if low > first else epoch_start
            seconds = ended[high].timestamp / 1000 - begin
            cores = timeline.cores(begin, ended[high].timestamp / 1000)
            wait = sum(waits[s].value for s in range(low, high + 1))
            step = sum(steps[s].value for s in range(low, high + 1))
            print(f"{epoch:>5} {f'{low}-{high}':>9} {seconds:>6.1f} {(high - low + 1) * batch / seconds:>6.0f} "
                  f"{wait:>7.1f} {step:>7.1f} " + " ".join(f"{cores.get(name, 0.0):>18.2f}" for name in SHOWN))
    first, second = (epochs[last].value for last in bounds[:2])
    print(f"run start to the first epoch's clock: {epochs[bounds[0]].timestamp / 1000 - first - started:.1f} s")
    print(f"epochs: {first:.1f} s and {second:.1f} s; first epoch / second: {first / second:.3f}")


if __name__ == "__main__":
    main()
