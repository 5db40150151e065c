"""What a sweep leaves on its parent MLflow run: the table of trials and the objective against each axis."""
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

from pipelines.tune_space import Space  # noqa: E402


def trial_table(rows: list[dict], space: Space) -> list[dict]:
    """One row per trial, best first: its name, status, sampled values, objective and epochs."""
    ordered = sorted(rows, key=lambda row: -row["objective"] if row["objective"] is not None else float("inf"))
    return [{"trial": row["trial_id"], "run": row["run_name"], "status": row["status"],
             **{axis.field: row["values"].get(axis.field) for axis in space.axes},
             space.objective: row["objective"], "epochs": row["epochs"], "best": row.get("best", False)}
            for row in ordered]


def markdown_table(table: list[dict]) -> str:
    """A Markdown table of `table`'s lines (columns in order of first appearance), padded to read as text too:
    the sweep's trials and the study's rows, printed and logged."""
    if not table:
        return "(no rows)"
    columns = list(dict.fromkeys(key for line in table for key in line))
    cells = [[_cell(line.get(column)) for column in columns] for line in table]
    widths = [max(len(column), *(len(row[i]) for row in cells)) for i, column in enumerate(columns)]
    rows = [columns, ["-" * width for width in widths], *cells]
    return "\n".join("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in rows)


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
    return "-" if value is None else str(value)


def objective_plot(rows: list[dict], space: Space):
    """One panel per axis: every finished trial's objective against the axis value (mean line for grids
    and choices), the best trial in red. The model is the mask-ratio curve of the MAE paper."""
    done = [row for row in rows if row["objective"] is not None]
    figure, panels = plt.subplots(1, len(space.axes), figsize=(4.2 * len(space.axes), 3.4), squeeze=False)
    for panel, axis in zip(panels[0], space.axes):
        points = [(row["values"].get(axis.field), row["objective"], row.get("best", False)) for row in done]
        if axis.numeric:
            xs = [float(x) for x, _, _ in points]
        else:
            labels = [str(v) for v in axis.values]
            xs = [labels.index(str(x)) for x, _, _ in points]
            panel.set_xticks(range(len(labels)), labels)
        stopped = [row["status"] == "STOPPED" for row in done]
        for early, label, face in ((False, "all epochs", "tab:blue"), (True, "stopped early", "none")):
            chosen = [(x, y) for x, (_, y, _), s in zip(xs, points, stopped) if s == early]
            if chosen:
                panel.scatter(*zip(*chosen), facecolors=face, edgecolors="tab:blue", zorder=2, label=label)
        if axis.distribution in ("grid", "choice"):
            means = defaultdict(list)
            for x, (_, y, _) in zip(xs, points):
                means[x].append(y)
            line = sorted((x, sum(ys) / len(ys)) for x, ys in means.items())
            panel.plot([x for x, _ in line], [y for _, y in line], color="tab:blue", alpha=0.6)
        best = [(x, y) for x, (_, y, is_best) in zip(xs, points) if is_best]
        if best:
            panel.scatter(*zip(*best), color="tab:red", s=80, zorder=3, label="best")
        panel.legend(loc="best", fontsize="small")
        if axis.distribution == "loguniform":
            panel.set_xscale("log")
            panel.xaxis.set_minor_formatter(NullFormatter())
        panel.set_xlabel(axis.field)
        panel.set_ylabel(space.objective)
        panel.grid(alpha=0.3)
    figure.suptitle(f"{space.method}: {space.objective} (last epoch) per trial, {len(done)} trials")
    figure.tight_layout()
    return figure
