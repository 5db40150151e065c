"""Studies: `python -m pipelines.study tune_spaces/studies/simsiam_collapse.yaml [--budget smoke|cpu]`.

A study is a sweep whose one grid axis is the study's rows (each a named set of overrides, the rows of an
ablation table; a row may switch the method, so every row logs into the study's MLflow experiment,
`study-<name>`, not its method's); it runs as any sweep does (Ray Tune, one MLflow child run per row under a parent run, resumable),
then puts on the parent run the table of our numbers beside the paper's, a plot, and the outcome of the study's
checks (the directions it expects, e.g. that an ablation collapses).
"""
import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from pipelines.config import ConfigError, build_config, read_yaml
from pipelines.dataset_store import DatasetError
from pipelines.run_registry import RunFailed
from pipelines.tune_space import ROW_AXIS, Space

# every row ends with the transfer stage, so rows compare on what papers report
STUDY_DEFAULTS = {"eval.final_protocols": ["knn", "linear"]}
DEFAULT_METRICS = {"knn": "eval/knn_top1_k20", "linear": "eval/linear_top1"}


def budget_overrides(study: dict, budget: str, where: str) -> list[str]:
    budgets = study.get("budgets") or {}
    if budget not in budgets:
        raise ConfigError(f"{where}: no budget '{budget}'; the study has {', '.join(budgets) or 'none'}")
    settings = {**STUDY_DEFAULTS, **(budgets[budget] or {})}
    return [f"{field}={json.dumps(value)}" for field, value in settings.items()]


def only_rows(raw: dict, names: list[str], where: str) -> dict:
    """The study cut to the rows `names` (`--rows`): its checks and plot lines keep only what is on those rows."""
    rows = {str(name): spec for name, spec in raw["rows"].items()}
    unknown = [name for name in names if name not in rows]
    if unknown or not names:
        raise ConfigError(f"--rows: {', '.join(unknown) or 'no row named'} is not a row of {where}; its rows: "
                          f"{', '.join(rows)}")
    cut = {**raw, "rows": {name: spec for name, spec in rows.items() if name in names}}
    if raw.get("checks"):
        cut["checks"] = [check for check in raw["checks"] if isinstance(check, dict)
                         and {str(check.get("row")), str(check.get("of"))} <= set(names)]
    lines = (raw.get("plot") or {}).get("lines")
    if isinstance(lines, dict):
        kept = {line: [row for row in on if str(row) in names] for line, on in lines.items() if isinstance(on, list)}
        cut["plot"] = {**raw["plot"], "lines": {line: on for line, on in kept.items() if on}}
        if not cut["plot"]["lines"]:
            del cut["plot"]
    return cut


def new_state(study_file: str, budget: str, overrides: Sequence[str] = (), rows: Optional[str] = None,
              name: Optional[str] = None, max_concurrent: Optional[int] = None) -> dict:
    """A new study's state: a sweep over the study file's rows (`rows`: comma-separated, a cut of them) at the
    `budget`, with `overrides` on top."""
    import yaml

    from pipelines import sweep

    where = str(study_file)
    raw = read_yaml(study_file)
    if "rows" not in raw:
        raise ConfigError(f"{where}: a study needs 'rows' (a sweep space has none: use pipelines.sweep)")
    name = name or f"{Path(where).stem}-{budget}-{time.strftime('%Y%m%d-%H%M%S')}"
    cut = only_rows(raw, rows.split(","), where) if rows else None
    state = sweep.new_state(study_file, [f"tracking.experiment=study-{Path(where).stem}"]
                            + budget_overrides(raw, budget, where) + list(overrides),
                            max_concurrent=max_concurrent, name=name)
    state["study"] = {"budget": budget, "rows": rows or "all"}
    if cut:
        state["space_text"] = yaml.safe_dump(cut, sort_keys=False)  # what the sweep, its table and a resume read
    return state


def metrics_of(study: dict) -> dict[str, str]:
    return study.get("metrics") or DEFAULT_METRICS


def shown(metric: str, value: Optional[float]) -> Optional[float]:
    """Accuracies in percent, as papers print them; other signals as logged."""
    if value is None:
        return None
    return round(100 * value, 2) if "top1" in metric else round(value, 4)


def study_table(client, space: Space, rows: list[dict]) -> list[dict]:
    """One line per study row, in the study's order: the paper's numbers, ours, the run."""
    by_row = {row["values"].get(ROW_AXIS): row for row in rows}
    table = []
    for name, spec in space.study["rows"].items():
        spec, run = spec or {}, by_row.get(str(name))
        measured = client.get_run(run["run_id"]).data.metrics if run else {}
        line = {"row": str(name)}
        line.update({f"paper {key}": value for key, value in (spec.get("paper") or {}).items()})
        line.update({f"ours {label}": shown(metric, measured.get(metric))
                     for label, metric in metrics_of(space.study).items()})
        line.update({"status": run["status"] if run else "MISSING", "run": run["run_name"] if run else None})
        table.append(line)
    return table


def reference_runs(space: Space, base) -> dict[str, str]:
    """`references: {label: dotted field}`: finished runs shown beside the rows (a distillation's teacher), each
    named by a field of the study's configuration."""
    named = {}
    for label, field in (space.study.get("references") or {}).items():
        value = base
        for part in str(field).split("."):
            value = getattr(value, part, None)
        if not isinstance(value, str):
            raise ConfigError(f"{space.path}: references.{label}: '{field}' names no run in the configuration")
        named[str(label)] = value
    return named


def reference_lines(space: Space, base) -> list[dict]:
    """Table lines of the reference runs: their logged metrics, as the rows'."""
    from mlflow.tracking import MlflowClient

    from pipelines.run_registry import read_run_file

    lines = []
    for label, name in reference_runs(space, base).items():
        record = read_run_file(base.train.storage_path, name)
        measured = MlflowClient(record["tracking_uri"]).get_run(record["mlflow_run_id"]).data.metrics
        lines.append({"row": label, **{f"ours {key}": shown(metric, measured.get(metric))
                                       for key, metric in metrics_of(space.study).items()},
                      "status": "reference", "run": name})
    return lines


def inference_speed(storage_path: str, run_name: str, image_size: int, channels: int, batch: int = 256,
                    repeats: int = 5) -> float:
    """Images per second of a run's exported backbone, forward only, on this process's CPU threads (best of
    `repeats`): what deploying it costs, measured alike for every row and reference."""
    import torch

    from pipelines.run_registry import run_weights
    from pipelines.export import META_FILE, WEIGHTS_FILE, load_backbone
    from pipelines.storage import read_bytes

    folder = run_weights(storage_path, run_name)
    backbone = load_backbone(read_bytes(f"{folder}/{WEIGHTS_FILE}"), json.loads(read_bytes(f"{folder}/{META_FILE}")))
    images = torch.randn(batch, channels, image_size, image_size)
    best = float("inf")
    with torch.inference_mode():
        backbone(images[:8])
        for _ in range(repeats):
            start = time.perf_counter()
            backbone(images)
            best = min(best, time.perf_counter() - start)
    return round(batch / best, 1)


def check_outcomes(space: Space, table: list[dict]) -> list[dict]:
    """The study's checks: `{row, metric, below|above: factor, of: other row}` holds when ours[row][metric] is
    below (above) factor x ours[other][metric]."""
    ours = {line["row"]: line for line in table}
    outcomes = []
    for check in space.study.get("checks") or []:
        column = f"ours {check['metric']}"
        value, reference = ours[check["row"]].get(column), ours[check["of"]].get(column)
        direction = "below" if "below" in check else "above"
        bound = None if reference is None else check[direction] * reference
        passed = value is not None and bound is not None and (value < bound if direction == "below" else value > bound)
        outcomes.append({**check, "value": value, "bound": bound, "passed": passed,
                         "text": f"{check['row']}: {check['metric']} {value} {direction} {check[direction]} x "
                                 f"{check['of']} ({reference})"})
    return outcomes


def check_study_file(space: Space) -> None:
    """What the loader of spaces does not know: checks and plot name rows, metrics and fields that exist."""
    where, study, labels = space.path, space.study, set(metrics_of(space.study))
    for index, check in enumerate(study.get("checks") or []):
        directions = [key for key in ("below", "above") if key in check]
        if set(check) - {"row", "metric", "of", "below", "above"} or len(directions) != 1 or \
                not {"row", "metric", "of"} <= set(check):
            raise ConfigError(f"{where}: checks[{index}] takes row, metric, of and one of below/above")
        for key in ("row", "of"):
            if str(check[key]) not in space.rows:
                raise ConfigError(f"{where}: checks[{index}].{key} '{check[key]}' is not a row")
        if check["metric"] not in labels:
            raise ConfigError(f"{where}: checks[{index}].metric '{check['metric']}' is not one of the study's "
                              f"metrics ({', '.join(sorted(labels))})")
    references = study.get("references") or {}
    if not isinstance(references, dict) or not all(isinstance(field, str) for field in references.values()):
        raise ConfigError(f"{where}: references maps a label to the dotted field naming a finished run, e.g. "
                          "teacher: method.teacher_run")
    plot = study.get("plot") or {}
    lines = plot.get("lines", {})
    if set(plot) - {"x", "lines"} or (plot and "x" not in plot) or not isinstance(lines, dict) or \
            not all(isinstance(rows, list) for rows in lines.values()):
        raise ConfigError(f"{where}: plot takes x (a dotted field the rows set) and optionally lines (a name for "
                          "each line: the rows on it), e.g. lines: {BYOL: [byol_256, byol_128]}")
    for row in [str(row) for rows in lines.values() for row in rows]:
        if row not in space.rows:
            raise ConfigError(f"{where}: plot.lines names '{row}', which is not a row")
        if plot["x"] not in space.rows[row]:
            raise ConfigError(f"{where}: plot.x '{plot['x']}' must be set by every row on a line ('{row}' does not)")
    if plot and not lines and any(plot["x"] not in overrides for overrides in space.rows.values()):
        raise ConfigError(f"{where}: plot.x '{plot['x']}' must be set by every row")


def plot_lines(space: Space) -> dict[str, list[str]]:
    """The rows drawn as lines against `plot.x`: the named `plot.lines`, else all rows as one line if `plot.x`."""
    plot = space.study.get("plot") or {}
    if "lines" in plot:
        return {str(name): [str(row) for row in rows] for name, rows in plot["lines"].items()}
    return {"": list(space.rows)} if plot.get("x") else {}


def draw_lines(panel, space: Space, table: list[dict], label: str, series: list[tuple[str, str]]) -> None:
    x_field, by_row = space.study["plot"]["x"], {line["row"]: line for line in table}
    for name, rows in plot_lines(space).items():
        for source, legend in series:
            points = [(space.rows[row][x_field], by_row[row].get(f"{source} {label}")) for row in rows]
            points = [(x, v) for x, v in points if v is not None]
            if points:
                panel.plot(*zip(*points), marker="o", label=f"{name} {source}" if name else legend)
    panel.set_xlabel(x_field)


def draw_bars(panel, table: list[dict], label: str, series: list[tuple[str, str]]) -> None:
    width = 0.8 / len(series)
    for index, (source, legend) in enumerate(series):
        points = [(x, v) for x, v in enumerate(line.get(f"{source} {label}") for line in table) if v is not None]
        if points:
            panel.bar([x + (index - (len(series) - 1) / 2) * width for x, _ in points], [v for _, v in points],
                      width, label=legend)
    panel.set_xticks(range(len(table)), [line["row"] for line in table], rotation=30, ha="right")
    panel.set_ylim(top=panel.get_ylim()[1] * 1.2)  # room for the legend above the bars
    panel.set_xlabel("row")


def study_plot(space: Space, table: list[dict]):
    """Paper and ours: lines against `plot.x` where the paper has a curve, and bars for every row unless all
    rows are on lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [label for label in metrics_of(space.study) if any(line.get(f"ours {label}") is not None for line in table)]
    labels = labels or list(metrics_of(space.study))
    on_lines = {row for rows in plot_lines(space).values() for row in rows}
    kinds = (["lines"] if on_lines else []) + (["bars"] if len(on_lines) < len(table) else [])
    width = max(5.0, 0.45 * len(table)) if "bars" in kinds else 5.0
    figure, panels = plt.subplots(len(kinds), len(labels), figsize=(width * len(labels), 3.8 * len(kinds)),
                                  squeeze=False)
    for kind, panel_row in zip(kinds, panels):
        for panel, label in zip(panel_row, labels):
            series = [("ours", "ours (Fashion-MNIST)")]
            if any(f"paper {label}" in line for line in table):
                series.append(("paper", "paper (ImageNet)"))
            if kind == "lines":
                draw_lines(panel, space, table, label, series)
            else:
                draw_bars(panel, table, label, series)
            panel.set_ylabel(label + (" top-1 (%)" if "top1" in metrics_of(space.study)[label] else ""))
            panel.grid(alpha=0.3)
            panel.legend(fontsize="small", loc="best" if kind == "lines" else "upper left", ncol=2)
    figure.suptitle(space.study.get("title", Path(space.path).stem))
    figure.tight_layout()
    return figure


def report(outcome: dict, space: Space, state: dict) -> dict:
    """The study's table, plot and checks on the parent run."""
    from mlflow.tracking import MlflowClient

    from pipelines.sweep_report import markdown_table
    from pipelines.tracking import log_figure

    client, parent = MlflowClient(outcome["tracking_uri"]), outcome["parent_run_id"]
    base = build_config(copy.deepcopy(state["base"]))
    table = study_table(client, space, outcome["rows"]) + reference_lines(space, base)
    if space.study.get("inference_speed"):
        from pipelines.dataset_store import read_info
        from pipelines.sweep import trial_storage

        channels, rows_storage = read_info(base.data.path).channels, trial_storage(base, state["name"])
        for line in table:
            if line["run"] and line["status"] in ("TERMINATED", "reference", "FINISHED"):
                storage = base.train.storage_path if line["status"] == "reference" else rows_storage
                line["ours inference images/s"] = inference_speed(storage, line["run"], base.data.image_size, channels)
    checks = check_outcomes(space, table)
    study = space.study
    for key, value in {"study": Path(space.path).stem, "study.title": study.get("title", ""),
                       "study.source": study.get("source", ""), "study.budget": state["study"]["budget"],
                       "study.rows": state["study"].get("rows", "all"),
                       "study.checks": "passed" if all(c["passed"] for c in checks) else "failed"}.items():
        client.set_tag(parent, key, str(value)[:5000])
    text = markdown_table(table)
    client.log_dict(parent, {"table": table, "checks": checks}, "study/study_table.json")
    client.log_text(parent, f"{study.get('title', '')}\n\n{text}\n\nsource: {study.get('source', '')}\n",
                    "study/study_table.md")
    log_figure(client, parent, study_plot(space, table), "study/study.png")
    return {"table": table, "checks": checks, "markdown": text}


def resumed_state(name: str, overrides: Sequence[str] = ()) -> dict:
    from pipelines import sweep

    state = sweep.resumed_state(name, overrides)
    if "study" not in state:
        raise ConfigError(f"'{state['name']}' is a sweep, not a study: resume it with pipelines.sweep")
    return state


def parse_args(argv):
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
    return args


def main(argv: Optional[list[str]] = None) -> int:
    from pipelines import sweep

    args = parse_args(argv)
    try:
        state = resumed_state(args.resume, args.overrides) if args.resume else new_state(
            args.study, args.budget, args.overrides, args.rows, args.name, args.max_concurrent)
        space = sweep.space_from_state(state)
        check_study_file(space)
        outcome = sweep.sweep(state, resume=bool(args.resume))
        result = report(outcome, space, state)
    except (ConfigError, DatasetError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except RunFailed as error:
        print(f"study failed: {error}", file=sys.stderr)
        return 1
    except sweep.SweepInterrupted as error:
        print(f"\n{error}", file=sys.stderr)
        return 130
    from pipelines.tracking import ui_command

    print(f"\n{space.study.get('title', '')} ({state['study']['budget']} budget)\n\n{result['markdown']}\n")
    for check in result["checks"]:
        print(f"check {'passed' if check['passed'] else 'FAILED'}: {check['text']}")
    print(f"MLflow parent run {outcome['parent_run_id']}; open the UI: {ui_command(outcome['tracking_uri'])}")
    return 0 if all(check["passed"] for check in result["checks"]) else 1


if __name__ == "__main__":
    sys.exit(main())
