"""The project side by side with its peers, one after the other on one machine: the quick BYOL preset against
lightly's documented BYOL recipe, the quick SimCLR preset against LightlyTrain's SimCLR. Same data (Fashion-MNIST's
60,000 training images at 28 pixels), epochs, batch (256), backbone (ResNet-18), one data worker, and the same kNN
(the project's code: k=20, T=0.07, the whole train split as the bank, the whole test split as the queries); the
project's random-init and raw-pixel evaluations off, as the peers do neither.

    .venv/bin/python -m benchmarks.peers [--pairs byol,simclr] [--epochs 2] [--limit N]

Each peer runs in a virtual environment of its own (scripts/peer_venvs.sh makes them under $PEERS_HOME, else
~/.cache/ssl-pretrain-peers, outside the project's folder; called here when missing). Per run: the steady rate
(the last epoch's images/s; LightlyTrain: its images over its `train` call), training (the project: its epochs,
from the first's start to the last's end, online evaluation between them included; lightly: its epochs;
LightlyTrain: its `train` call, Lightning's set-up and the export included), the whole command (Ray, imports,
final evaluation; not LightlyTrain's writing of its PNG folder, as the project's ingest is not counted either),
and kNN top-1. Ends with the ratios, the project over the peer: training, command, and the kNN difference in
points.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from pipelines.config.project import PROJECT_ROOT

PEERS = Path(os.environ.get("PEERS_HOME", Path.home() / ".cache" / "ssl-pretrain-peers"))
RESULT = "PEER_RESULT "  # the line benchmarks/peer_recipes/common.py prints
PAIRS = {"byol": ("configs/byol_fmnist_quick.yaml", "lightly", "lightly_byol", "lightly 1.6 BYOL (documented)"),
         "simclr": ("configs/simclr_fmnist_quick.yaml", "lightly-train", "lightly_train_simclr",
                    "LightlyTrain 0.18 SimCLR")}


@dataclass
class Outcome:
    name: str
    images_per_second: float
    training_seconds: float
    command_seconds: float
    knn_top1: float


def run_lines(command: list[str], prefix: str) -> list[str]:
    """Runs a command from the project's root, showing its lines as they come (prefixed, with the seconds since it
    started); its output's lines."""
    process = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               bufsize=1)
    lines, started = [], time.time()
    for line in process.stdout:
        lines.append(line)
        print(f"  {prefix} {time.time() - started:5.0f} s | {line.rstrip()[-150:]}", flush=True)
    if process.wait() != 0:
        sys.exit(f"{prefix} failed (exit {process.returncode}); its last lines:\n{''.join(lines[-20:])}")
    return lines


def project_run(name: str, preset: str, epochs: int, limit: int | None, folder: Path) -> Outcome:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{folder}/mlflow.db"
    sets = [f"train.epochs={epochs}", "eval.baseline=false", "eval.pixel_baseline=false",
            f"train.storage_path={folder}/runs", f"tracking.tracking_uri={uri}"]
    sets += [f"data.limit={limit}"] if limit else []
    started = time.time()
    lines = run_lines([sys.executable, "-m", "pipelines.pretrain", "--config", str(PROJECT_ROOT / preset),
                       *[part for text in sets for part in ("--set", text)]], name)
    command = time.time() - started
    client = MlflowClient(uri)
    run = client.get_run(next(match[1] for line in lines if (match := re.search(r"MLflow run id: (\w+)", line))))
    epochs_seen = client.get_metric_history(run.info.run_id, "epoch_seconds")
    rates = client.get_metric_history(run.info.run_id, "images_per_second")
    first, last = min(epochs_seen, key=lambda m: m.step), max(epochs_seen, key=lambda m: m.step)
    training = (last.timestamp - first.timestamp) / 1000 + first.value
    return Outcome(name, max(rates, key=lambda m: m.step).value, training, command,
                   run.data.metrics["eval/knn_top1_k20"])


def peer_run(name: str, venv: str, recipe: str, epochs: int, limit: int | None, folder: Path) -> Outcome:
    command = [str(PEERS / venv / "bin" / "python"), "-m", f"benchmarks.peer_recipes.{recipe}", "--epochs",
               str(epochs), "--out", str(folder / recipe)] + (["--limit", str(limit)] if limit else [])
    started = time.time()
    lines = run_lines(command, name)
    result = json.loads(next(line for line in reversed(lines) if line.startswith(RESULT))[len(RESULT):])
    wall = time.time() - started - result.get("prepare_seconds", 0)
    last_epoch = result["epoch_seconds"][-1] if result["epoch_seconds"] else result["training_seconds"] / epochs
    return Outcome(name, result["images_per_epoch"] / last_epoch, result["training_seconds"], wall,
                   result["knn_top1_k20"])


def table(outcomes: list[Outcome]) -> str:
    rows = ["| run | steady images/s | training s | whole command s | kNN k=20 |", "|---|---|---|---|---|"]
    rows += [f"| {o.name} | {o.images_per_second:.0f} | {o.training_seconds:.0f} | {o.command_seconds:.0f} | "
             f"{100 * o.knn_top1:.2f} % |" for o in outcomes]
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", default="byol,simclr", help=f"comma-separated, of {', '.join(PAIRS)}")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None, help="training images (default: all 60,000)")
    args = parser.parse_args()
    pairs = [pair.strip() for pair in args.pairs.split(",")]
    if unknown := [pair for pair in pairs if pair not in PAIRS]:
        parser.error(f"--pairs: unknown {unknown}; choose from {list(PAIRS)}")
    subprocess.run([str(PROJECT_ROOT / "scripts" / "fashion_mnist.sh")], check=True)
    subprocess.run([str(PROJECT_ROOT / "scripts" / "peer_venvs.sh"), str(PEERS)], check=True)
    folder = Path(tempfile.mkdtemp(prefix="peers_"))
    outcomes, ratios = [], []
    for pair in pairs:
        preset, venv, recipe, peer_name = PAIRS[pair]
        ours = project_run(f"project {Path(preset).stem}", preset, args.epochs, args.limit, folder / pair)
        theirs = peer_run(peer_name, venv, recipe, args.epochs, args.limit, folder)
        outcomes += [ours, theirs]
        ratios.append(f"{pair}: training {ours.training_seconds / theirs.training_seconds:.2f}x, whole command "
                      f"{ours.command_seconds / theirs.command_seconds:.2f}x, kNN "
                      f"{100 * (ours.knn_top1 - theirs.knn_top1):+.2f} points (the project over {peer_name})")
    print(table(outcomes))
    print("\n".join(ratios))


if __name__ == "__main__":
    main()
