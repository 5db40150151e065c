"""Ray Tune sweeps: `python -m pipelines.sweep --space tune_spaces/dino.yaml --num-samples 8 [...]`.

Each trial is a function that builds and fits a `TorchTrainer` (the Ray 2.60 pattern), so a trial
may itself be multi-worker and multi-GPU. The objective is what the training loop reports every epoch: the
online kNN accuracy, or without labels RankMe (`--objective rankme`, the embeddings' effective rank). MLflow gets one parent run per sweep and one child run per trial; the
parent ends with a table of trials, a plot of the objective against each axis and the best
configuration, which is also written out as a preset for `pipelines.pretrain`.
"""
import argparse
import json
import sys
from typing import Optional

from pipelines.config.flags import settings_from_flags
from pipelines.config.section import ConfigError
from pipelines.storage.files import DatasetError
from pipelines.storage.runs import RunFailed
from pipelines.tuning.jobs import SweepSettings, sweep
from pipelines.tuning.sweep import SweepInterrupted


def parse_args(argv) -> SweepSettings:
    parser = argparse.ArgumentParser(prog="python -m pipelines.sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", help="sweep space, e.g. tune_spaces/dino.yaml")
    parser.add_argument("--config", help="preset the trials start from (default: the space's `preset`)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a field of every trial, e.g. --set train.epochs=4 (repeatable)")
    parser.add_argument("--num-samples", type=int, default=4, help="trials to sample (with grid axes: grid repeats)")
    parser.add_argument("--search", choices=["random", "optuna"], default="random", help="optuna: TPE")
    parser.add_argument("--scheduler", choices=["fifo", "asha"], default="fifo",
                        help="asha: stop the worse half of trials at each rung (epochs)")
    parser.add_argument("--grace-epochs", type=int, default=1, help="ASHA: epochs every trial gets")
    parser.add_argument("--max-concurrent", type=int, help="at most this many trials at once "
                                                           "(default: as many as the cluster's CPUs and GPUs fit)")
    parser.add_argument("--name", help="sweep name (default: <method>-sweep-<time>)")
    parser.add_argument("--out", help="where to write the best preset (default: <storage>/<name>/best.yaml)")
    parser.add_argument("--objective", help="maximise this instead of the space's objective: knn_top1_k20 (labels) "
                        "or rankme (the embeddings' effective rank, without labels)")
    parser.add_argument("--resume", metavar="NAME", help="continue an interrupted sweep ('last': the newest); "
                                                          "finished trials are kept, not rerun")
    return settings_from_flags(SweepSettings, vars(parser.parse_args(argv)), {"overrides": "--set"})


def main(argv: Optional[list[str]] = None) -> int:
    try:
        outcome = sweep(parse_args(argv))
    except (ConfigError, DatasetError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except RunFailed as error:
        print(f"sweep failed: {error}", file=sys.stderr)
        return 1
    except SweepInterrupted as error:
        print(f"\n{error}", file=sys.stderr)
        return 130
    from pipelines.tracking.mlflow_runs import ui_command
    from pipelines.tuning.report import markdown_table

    print("\n" + markdown_table(outcome.table))
    if outcome.best:
        best = outcome.best
        print(f"\nbest trial {best['trial_id']}: {json.dumps(best['values'])} -> {best['objective']:.4f}")
        print(f"best preset: {outcome.preset}\n  python -m pipelines.pretrain --config {outcome.preset}")
    else:
        print("\nno trial finished: see the failure_reason tag of each child run")
    print(f"MLflow parent run {outcome.parent_run_id}; open the UI: {ui_command(outcome.tracking_uri)}")
    return 0 if outcome.best else 1


if __name__ == "__main__":
    sys.exit(main())
