"""What a sweep trial costs beyond its training: the sweep of issue 31 (BYOL's space, 8 trials of one epoch on
5,000 Fashion-MNIST images), its wall time against the trials' own epochs, and where the rest goes.

    .venv/bin/python -m benchmarks.sweep_overhead [--trials 8] [--limit 5000] [--set key=value ...]

Ray is started first (its start is printed apart, once a sweep's cost). Each trial's MLflow run gives its start,
its epoch's end (the epoch metric's time) and length (`epoch_seconds`: from the worker's loop start, so Ray
Data's start is in it), and its end; so a trial splits into: before its epoch (Train's controller and worker
group, the model), the epoch, after it (the final evaluation, the logged model), and the gap to the next trial
(Tune). The last line: overhead per trial = (sweep wall time x trials at once - the trials' epochs) / trials.
"""
import argparse
import statistics
import tempfile
import time

from pipelines.config.project import PROJECT_ROOT


def phases(client, run) -> dict:
    """Seconds of a trial's MLflow run before its epoch began, of the epoch, and after it ended."""
    epoch_end = client.get_metric_history(run.info.run_id, "epoch_seconds")[-1]
    start, end = run.info.start_time / 1000, run.info.end_time / 1000
    epoch_start = epoch_end.timestamp / 1000 - epoch_end.value
    return {"start": start, "end": end, "before": epoch_start - start, "epoch": epoch_end.value,
            "after": end - epoch_end.timestamp / 1000}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sweep_overhead", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default=str(PROJECT_ROOT / "tune_spaces" / "byol.yaml"))
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--limit", type=int, default=5000, help="training images per epoch")
    parser.add_argument("--data", default=str(PROJECT_ROOT / "data" / "fashion_mnist"))
    parser.add_argument("--scheduler", default="fifo", choices=["fifo", "asha"],
                        help="asha: no trial actor is reused (what ASHA sweeps do)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    from mlflow.tracking import MlflowClient

    from pipelines.cluster.start import start_ray
    from pipelines.tuning.jobs import SweepSettings, sweep
    from pipelines.tuning.trials import child_runs

    folder = tempfile.mkdtemp(prefix="sweep_overhead_")
    started = time.time()
    start_ray()
    print(f"Ray started in {time.time() - started:.1f} s", flush=True)
    started = time.time()
    result = sweep(SweepSettings(
        space=args.space, num_samples=args.trials, name="overhead", scheduler=args.scheduler, overrides=[
            f"data.path={args.data}", f"data.limit={args.limit}", "train.epochs=1", f"train.storage_path={folder}",
            f"tracking.tracking_uri=sqlite:///{folder}/mlflow.db", *args.overrides]))
    wall = time.time() - started
    client = MlflowClient(result.tracking_uri)
    trials = sorted((phases(client, run) for run in child_runs(client, {"parent_run_id": result.parent_run_id})),
                    key=lambda trial: trial["start"])
    gaps = [later["start"] - earlier["end"] for earlier, later in zip(trials, trials[1:])]
    print("trial  before epoch  epoch  after epoch  gap to the next (s)")
    for number, trial in enumerate(trials, 1):
        gap = f"{gaps[number - 1]:.1f}" if number <= len(gaps) else "-"
        print(f"{number:5d}  {trial['before']:12.1f}  {trial['epoch']:5.1f}  {trial['after']:11.1f}  {gap}")
    epochs = sum(trial["epoch"] for trial in trials)
    at_once = int(client.get_run(result.parent_run_id).data.params["sweep.concurrency"])
    print(f"medians: before {statistics.median(t['before'] for t in trials):.1f} s, epoch "
          f"{statistics.median(t['epoch'] for t in trials):.1f} s, after "
          f"{statistics.median(t['after'] for t in trials):.1f} s, gap {statistics.median(gaps or [0]):.1f} s")
    print(f"sweep: {len(trials)} trials, {at_once} at a time, in {wall:.1f} s, their epochs {epochs:.1f} s; "
          f"overhead per trial: {(wall * at_once - epochs) / len(trials):.1f} s")


if __name__ == "__main__":
    main()
