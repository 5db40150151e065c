"""Self-supervised pretraining on Ray: `python -m pipelines.pretrain [--config PRESET] [--set key=value ...]`.

Locally it starts a Ray instance and writes to an MLflow store in the project folder; under
`ray job submit` (or with RAY_ADDRESS set) it joins that cluster. `--resume NAME` continues a
run from its last checkpoint, in the same MLflow run.
"""
import argparse
import sys
from typing import Optional

from pipelines.config.load import apply_override, build_config, load_config, parse_override
from pipelines.config.schema import Config
from pipelines.config.section import ConfigError
from pipelines.pretraining.run import pretrain, summary
from pipelines.storage.files import DatasetError
from pipelines.storage.runs import RunFailed, last_run_name, read_run_file


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m pipelines.pretrain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML preset (see configs/)")
    parser.add_argument("--method", help="shortcut for --set method.name=...")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any field, e.g. --set optim.lr=1e-3 (repeatable)")
    parser.add_argument("--resume", metavar="RUN_NAME", help="continue a run from its last checkpoint ('last': the newest)")
    parser.add_argument("--verbose", action="store_true", help="show Ray's and every worker's output here (else "
                        "they stay in Ray's log files and one progress line shows the run)")
    return parser.parse_args(argv)


def resolve_config(args) -> tuple[Config, Optional[str]]:
    overrides = list(args.overrides) + ([f"method.name={args.method}"] if args.method else [])
    if not args.resume:
        return load_config(args.config, overrides), None
    base = load_config(args.config, overrides)  # where to look: storage_path may be overridden
    name = last_run_name(base.train.storage_path) if args.resume == "last" else args.resume
    tree = read_run_file(base.train.storage_path, name)["config"]
    for text in overrides:
        apply_override(tree, *parse_override(text))
    return build_config(tree), name


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    config = resume = None
    try:
        config, resume = resolve_config(args)
        outcome = pretrain(config, resume, verbose=args.verbose)
    except (ConfigError, DatasetError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except RunFailed as error:
        print(f"run failed: {error} (the MLflow run is marked FAILED with this reason, and its artifact failure.txt "
              "holds the traceback)", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, SystemExit):  # Ray Train answers Ctrl+C with sys.exit(0): say so, exit as Ctrl+C does
        name = resume or (config and config.tracking.run_name) or "last"
        print(f"\ninterrupted (the MLflow run is marked KILLED); continue it with: python -m pipelines.pretrain "
              f"--resume {name}", file=sys.stderr)
        return 130
    print("\n" + summary(outcome))
    return 0


if __name__ == "__main__":
    sys.exit(main())
