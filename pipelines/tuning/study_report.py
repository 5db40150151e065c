"""A study's report: its table of rows from MLflow beside the papers' numbers, the checks of their outcomes, inference speed."""
import copy
import json
import time
from pathlib import Path
from typing import Optional

from pipelines.config.load import build_config
from pipelines.config.section import ConfigError
from pipelines.tuning.plots import study_plot
from pipelines.tuning.space import ROW_AXIS, Space, metrics_of


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
        measured = client.get_run(run["run_id"]).data.metrics if run and run["run_id"] else {}
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

    from pipelines.storage.runs import read_run_file

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

    from pipelines.storage.export import META_FILE, WEIGHTS_FILE, load_backbone
    from pipelines.storage.files import read_bytes
    from pipelines.storage.runs import run_weights

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


def report(outcome: dict, space: Space, state: dict) -> dict:
    """The study's table, plot and checks on the parent run."""
    from mlflow.tracking import MlflowClient

    from pipelines.tracking.mlflow_runs import log_figure
    from pipelines.tuning.report import markdown_table

    client, parent = MlflowClient(outcome["tracking_uri"]), outcome["parent_run_id"]
    base = build_config(copy.deepcopy(state["base"]))
    table = study_table(client, space, outcome["rows"]) + reference_lines(space, base)
    if space.study.get("inference_speed"):
        from pipelines.data.store import read_info
        from pipelines.tuning.trials import trial_storage

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
