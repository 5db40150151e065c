"""How well the label-free measure (RankMe) ranks a sweep's trials against the kNN it stands in for, on labelled data.

    .venv/bin/python -m benchmarks.label_free --samples 8 --epochs 2 --limit 4096

Runs one sweep (default: SimCLR's temperature and learning rate, tune_spaces/simclr.yaml) on Fashion-MNIST with the
kNN objective, then reads every finished trial's last-epoch kNN, RankMe, uniformity and alignment from MLflow and
prints them with the Spearman rank correlation of each label-free measure against the kNN (uniformity and
alignment sign-flipped: lower is better), and whether RankMe picks the kNN's best trial. For BENCHMARKS.md.
"""
import argparse
import tempfile
import time

from scipy.stats import spearmanr

from pipelines.config.project import PROJECT_ROOT


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default=str(PROJECT_ROOT / "tune_spaces" / "simclr.yaml"))
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--limit", type=int, default=4096, help="training images per epoch")
    parser.add_argument("--data", default=str(PROJECT_ROOT / "data" / "fashion_mnist"))
    args = parser.parse_args()

    from mlflow.tracking import MlflowClient

    from pipelines.tuning.jobs import SweepSettings, sweep
    from pipelines.tuning.trials import child_runs

    folder = tempfile.mkdtemp(prefix="label_free_")
    started = time.time()
    result = sweep(SweepSettings(space=args.space, num_samples=args.samples, name="label-free", overrides=[
        f"data.path={args.data}", f"data.limit={args.limit}", f"train.epochs={args.epochs}",
        f"train.storage_path={folder}", f"tracking.tracking_uri=sqlite:///{folder}/mlflow.db"]))
    client = MlflowClient(result.tracking_uri)
    trials = []
    for run in child_runs(client, {"parent_run_id": result.parent_run_id}):
        metrics = run.data.metrics
        if run.info.status == "FINISHED" and "rankme" in metrics:
            values = {key: run.data.params.get(key) for key in ("method.temperature", "optim.lr")}
            trials.append({"run": run.info.run_name, **values, **{key: metrics[key] for key in (
                "knn_top1_k20", "rankme", "uniformity", "alignment", "feature_std") if key in metrics}})
    trials.sort(key=lambda trial: -trial["knn_top1_k20"])
    columns = list(trials[0])
    print(f"\n{len(trials)} finished trials in {time.time() - started:.0f} s\n")
    print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for trial in trials:
        print("| " + " | ".join(f"{trial[c]:.4g}" if isinstance(trial[c], float) else str(trial[c]) for c in columns)
              + " |")
    knn = [trial["knn_top1_k20"] for trial in trials]
    print()
    for key, sign in (("rankme", 1), ("uniformity", -1), ("alignment", -1), ("feature_std", 1)):
        if all(key in trial for trial in trials):
            rho, p = spearmanr(knn, [sign * trial[key] for trial in trials])
            print(f"Spearman rho, kNN top-1 against {'-' if sign < 0 else ''}{key}: {rho:.2f} (p = {p:.2g})")
    best = max(trials, key=lambda trial: trial["rankme"])
    print(f"RankMe's best trial: {best['run']} (kNN {best['knn_top1_k20']:.4f}; the best kNN: {knn[0]:.4f})")


if __name__ == "__main__":
    main()
