"""Studies: `python -m pipelines.study tune_spaces/studies/simsiam_collapse.yaml [--budget smoke|cpu]`.

A study is a sweep whose one grid axis is the study's rows (each a named set of overrides, the rows of an
ablation table; a row may switch the method, so every row logs into the study's MLflow experiment,
`study-<name>`, not its method's); it runs as any sweep does (Ray Tune, one MLflow child run per row under a parent run, resumable),
then puts on the parent run the table of our numbers beside the paper's, a plot, and the outcome of the study's
checks (the directions it expects, e.g. that an ablation collapses).
"""
import argparse
import sys
from typing import Optional

from pipelines.config.flags import settings_from_flags
from pipelines.config.section import ConfigError
from pipelines.storage.files import DatasetError
from pipelines.storage.runs import RunFailed
from pipelines.tuning.jobs import StudySettings, study
from pipelines.tuning.sweep import SweepInterrupted


def parse_args(argv) -> StudySettings:
    parser = argparse.ArgumentParser(prog="python -m pipelines.study", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", nargs="?", help="study file, e.g. tune_spaces/studies/simsiam_collapse.yaml")
    parser.add_argument("--budget", default="cpu", help="one of the study's budgets: smoke (CI, minutes) or cpu "
                                                        "(the documented CPU run); default cpu")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a field of every row, e.g. --set train.epochs=4 (repeatable)")
    parser.add_argument("--rows", metavar="ROW,ROW", help="run only these rows (comma-separated; default all); "
                                                          "checks and plot lines keep the ones on them")
    parser.add_argument("--max-concurrent", type=int, help="at most this many rows at once")
    parser.add_argument("--name", help="study run name (default: <study>-<budget>-<time>)")
    parser.add_argument("--resume", metavar="NAME", help="continue an interrupted study; finished rows are kept")
    args = parser.parse_args(argv)
    if not args.study and not args.resume:
        parser.error("give a study file (tune_spaces/studies/*.yaml) or --resume NAME")
    if args.resume and args.rows:
        parser.error("--rows picks the rows of a new study; a resumed study runs the rows it began with")
    rows = [row.strip() for row in args.rows.split(",") if row.strip()] if args.rows else None
    return settings_from_flags(StudySettings, {**vars(args), "rows": rows}, {"overrides": "--set"})


def main(argv: Optional[list[str]] = None) -> int:
    try:
        result = study(parse_args(argv))
    except (ConfigError, DatasetError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except RunFailed as error:
        print(f"study failed: {error}", file=sys.stderr)
        return 1
    except SweepInterrupted as error:
        print(f"\n{error}", file=sys.stderr)
        return 130
    from pipelines.tracking.mlflow_runs import ui_command

    print(f"\n{result.title} ({result.budget} budget)\n\n{result.markdown}\n")
    for check in result.checks:
        print(f"check {'passed' if check['passed'] else 'FAILED'}: {check['text']}")
    print(f"MLflow parent run {result.sweep.parent_run_id}; open the UI: {ui_command(result.sweep.tracking_uri)}")
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
