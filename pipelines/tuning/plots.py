"""The figures of sweeps and studies (matplotlib, logged with tracking.mlflow_runs.log_figure): a sweep's objective
against each axis, a study's rows beside the papers'."""
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

from pipelines.tuning.space import Space, metrics_of


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
