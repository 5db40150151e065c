"""Where a tiny run's time goes: one pretraining at a study's smoke budget (the tests' 640-image slice of
Fashion-MNIST, 2 steps), with the seconds of each phase of `pipelines.pretrain` printed as it ends.

    .venv/bin/python -m benchmarks.run_phases [--runs 3] [--set key=value ...]

Ray is started first, as the test session does, so the figures are what one Ray Train run costs inside the
suite or inside a study (each row of a study is such a run). The training itself is 2 steps: the rest is the
fixed cost of processes starting (Train controller, worker, Ray Data's coordinator and actors), each importing
torch and timm.
"""
import argparse
import statistics
import tempfile
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
    seconds = []
    for run in range(args.runs):
        print(f"run {run + 1}:", flush=True)
        started = time.time()
        pretraining_run.pretrain(load_config(None, sets), verbose=False, progress=False)
        seconds.append(time.time() - started)
        print(f"  in all: {seconds[-1]:.1f} s", flush=True)
        for line in controller_phases():
            print(f"    Train controller: {line}", flush=True)
    print(f"fixed cost: {statistics.median(seconds):.1f} s (median of {args.runs} runs, 2 steps each)")


if __name__ == "__main__":
    main()
