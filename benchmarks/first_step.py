"""How long from typing `python -m pipelines.pretrain` to the first training step: the README's quick preset in a
fresh process (Ray started by the command, as a user's first run), one short epoch, each console line printed with
the seconds since the command started.

    .venv/bin/python -m benchmarks.first_step [--set key=value ...]

The progress line shows the latest step at most once a second, so its first line is within a second of the first
step's end. Ends with `first progress line: N s`.
"""
import argparse
import re
import subprocess
import sys
import tempfile
import time

from pipelines.config.project import PROJECT_ROOT

QUICK = ["train.epochs=1", "data.limit=2560", "train.log_every=1", "eval.final_protocols=[]", "eval.baseline=false"]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.first_step", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(PROJECT_ROOT / "configs" / "simclr_fmnist_quick.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="first_step_")
    sets = [*QUICK, f"train.storage_path={folder}/runs", f"tracking.tracking_uri=sqlite:///{folder}/mlflow.db",
            *args.overrides]
    command = [sys.executable, "-m", "pipelines.pretrain", "--config", args.config,
               *[part for text in sets for part in ("--set", text)]]
    started, first_step = time.time(), None
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                               cwd=PROJECT_ROOT)
    for line in process.stdout:
        seconds = time.time() - started
        if first_step is None and re.search(r"step \d+/\d+", line):
            first_step = seconds
        if not line.startswith("Downloading artifacts"):
            print(f"{seconds:6.1f} s  {line.rstrip()[:140]}", flush=True)
    if process.wait() != 0:
        sys.exit(f"the pretraining failed (exit {process.returncode})")
    print(f"first progress line: {first_step:.1f} s; the whole command {time.time() - started:.1f} s")


if __name__ == "__main__":
    main()
