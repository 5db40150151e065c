"""Studies (`python -m pipelines.study`): a study file as a sweep's state.

A study is a sweep whose one grid axis is the study's rows (each a named set of overrides, the rows of an
ablation table; a row may switch the method, so every row logs into the study's MLflow experiment,
`study-<name>`, not its method's); it runs as any sweep does (Ray Tune, one MLflow child run per row under a
parent run, resumable), then tuning.study_report puts on the parent run the table of our numbers beside the
paper's, a plot, and the outcome of the study's checks (the directions it expects, e.g. that an ablation collapses).
"""
import json
import time
from pathlib import Path
from typing import Optional, Sequence

from pipelines.config.load import read_yaml
from pipelines.config.section import ConfigError
from pipelines.tuning.space import Space, metrics_of

# every row ends with the transfer stage, so rows compare on what papers report
STUDY_DEFAULTS = {"eval.final_protocols": ["knn", "linear"]}


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

    from pipelines.tuning import sweep

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


def resumed_state(name: str, overrides: Sequence[str] = ()) -> dict:
    from pipelines.tuning import sweep

    state = sweep.resumed_state(name, overrides)
    if "study" not in state:
        raise ConfigError(f"'{state['name']}' is a sweep, not a study: resume it with pipelines.sweep")
    return state
