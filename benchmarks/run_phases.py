"""Where a tiny run's time goes: one pretraining at a study's smoke budget (the tests' 640-image slice of
Fashion-MNIST, 2 steps), with the seconds of each phase of `pipelines.pretrain` printed as it ends.

    .venv/bin/python -m benchmarks.run_phases [--runs 3] [--set key=value ...]

Ray is started first, as the test session does, so the figures are what one run costs inside the suite or a
notebook (a run of one worker trains in this process: pipelines/training/session.py; `--set train.num_workers=2`
measures a Ray Train run, whose controller and workers start for each run). The training itself is 2 steps: the
rest is the fixed cost of what starts (Ray Data's reader and augmentation actor; Train's processes, each importing
torch and timm): after each run, the CPU seconds of every Ray process it used, by the name Ray gives it
(`ray::<actor class>`; `IDLE`: a pooled worker that ran tasks), the floor a run pays.
"""
import argparse
import collections
import statistics
import tempfile
import threading
import time

import ray

import pipelines.tracking.logged_model as backbone_model
import pipelines.tracking.mlflow_runs as tracking
from pipelines.cluster.ray_compat import session_logs_dir
from pipelines.cluster.start import use_one_machine_train_settings
from pipelines.config.load import load_config
from pipelines.evaluation import transfer
from pipelines.ingestion.datasets import FASHION_MNIST_DIR, ingest_fashion_mnist
from pipelines.pretraining import run as pretraining_run

PHASES = [(pretraining_run, ["init_ray", "fit", "evaluate_at_end"]), (tracking, ["start_run"]),
          (backbone_model, ["log_backbone_model"]), (transfer, ["embed_split", "evaluate_embeddings"])]
SMOKE = ["train.cpus_per_worker=0.25", "eval.every_epochs=1", "eval.baseline=false", "eval.picture_every=0",
         "eval.final_protocols=[knn,linear]", "train.epochs=1", "data.limit=512", "eval.final_bank_size=512",
         "eval.final_query_size=256"]


def timed(module, name: str) -> None:
    function = getattr(module, name)

    def wrapper(*args, **kwargs):
        started = time.time()
        result = function(*args, **kwargs)
        print(f"  {name}: {time.time() - started:.1f} s", flush=True)
        return result

    setattr(module, name, wrapper)


def controller_phases() -> list[str]:
    """The Train controller's own timing of its worker group's start (its debug lines, which it writes to the
    session's logs/train folder), for the run that ended last."""
    import glob
    import json
    import os

    logs = glob.glob(os.path.join(session_logs_dir(), "train", "ray-train-sys-controller-*.log"))
    if not logs:
        return []
    lines = []
    for line in open(max(logs, key=os.path.getmtime)):
        message = json.loads(line).get("message", "") if line.startswith("{") else line
        if message.startswith("[Worker Group Initialization]"):
            lines.append(message.split("]", 1)[1].split("\n")[0].strip())
    return lines


class RayProcesses:
    """The CPU seconds of Ray's worker processes while a run goes, sampled every 0.1 s (a process that lives
    less than that may be missed): what each used from `start` to `stop`, by its name (a pooled worker's
    name changes to its actor's when it becomes one)."""

    every = 0.1  # seconds between samples

    def __init__(self):
        self.samples, self.running = {}, False

    @staticmethod
    def sample() -> dict[int, tuple[str, float]]:
        import psutil

        found = {}
        for process in psutil.process_iter(["pid", "cmdline", "cpu_times"]):
            title = " ".join(process.info["cmdline"] or [])
            if title.startswith("ray::") and process.info["cpu_times"]:
                times = process.info["cpu_times"]
                found[process.info["pid"]] = (title.split()[0][5:].split(".")[0], times.user + times.system)
        return found

    def start(self) -> None:
        self.before = {pid: cpu for pid, (_, cpu) in self.sample().items()}
        self.samples, self.running = {}, True
        self.thread = threading.Thread(target=self.watch, daemon=True)
        self.thread.start()

    def watch(self) -> None:
        while self.running:
            self.record(self.sample())
            time.sleep(self.every)

    def record(self, sample: dict[int, tuple[str, float]]) -> None:
        self.samples.update(sample)

    def stop(self) -> dict[str, tuple[int, float]]:
        """{name: (processes, CPU seconds)}, the most CPU first."""
        self.running = False
        self.thread.join()
        used = collections.defaultdict(lambda: [0, 0.0])
        for pid, (name, cpu) in self.samples.items():
            spent = cpu - self.before.get(pid, 0.0)
            if spent > 0.05:
                used[name][0] += 1
                used[name][1] += spent
        return dict(sorted(((name, (n, cpu)) for name, (n, cpu) in used.items()), key=lambda item: -item[1][1]))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run_phases", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs one after the other (the first pays MLflow's setup)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--verbose", action="store_true", help="the workers' output too (to time their steps)")
    args = parser.parse_args()
    for module, names in PHASES:
        for name in names:
            timed(module, name)
    folder = tempfile.mkdtemp(prefix="run_phases_")
    ingest_fashion_mnist(FASHION_MNIST_DIR, f"{folder}/slice", limit=640, rows_per_shard=320)
    use_one_machine_train_settings()
    ray.init(num_cpus=2, log_to_driver=args.verbose)
    sets = [f"data.path={folder}/slice", f"train.storage_path={folder}/runs",
            f"tracking.tracking_uri=sqlite:///{folder}/mlflow.db", *SMOKE, *args.overrides]
    seconds, watch, cpu = [], RayProcesses(), collections.defaultdict(list)
    for run in range(args.runs):
        print(f"run {run + 1}:", flush=True)
        watch.start()
        started = time.time()
        pretraining_run.pretrain(load_config(None, sets), verbose=False, progress=False)
        seconds.append(time.time() - started)
        used = watch.stop()
        print(f"  in all: {seconds[-1]:.1f} s", flush=True)
        for line in controller_phases():
            print(f"    Train controller: {line}", flush=True)
        print(f"    Ray processes, CPU seconds: {sum(spent for _, spent in used.values()):.1f} in all: " + ", ".join(
            f"{name}{f' x{n}' if n > 1 else ''} {spent:.1f}" for name, (n, spent) in used.items()), flush=True)
        for name, (_, spent) in used.items():
            cpu[name].append(spent)
    print("Ray processes, median CPU seconds a run: " + ", ".join(
        f"{name} {statistics.median(values + [0.0] * (args.runs - len(values))):.1f}" for name, values in cpu.items()))
    print(f"fixed cost: {statistics.median(seconds):.1f} s (median of {args.runs} runs, 2 steps each)")


if __name__ == "__main__":
    main()
