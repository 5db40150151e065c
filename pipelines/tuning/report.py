"""The tables sweeps and studies print and log: a sweep's trials, best first, as Markdown padded to read as text."""
from pipelines.tuning.space import Space


def trial_table(rows: list[dict], space: Space) -> list[dict]:
    """One row per trial, best first: its name, status, sampled values, objective and epochs."""
    ordered = sorted(rows, key=lambda row: -row["objective"] if row["objective"] is not None else float("inf"))
    return [{"trial": row["trial_id"], "run": row["run_name"], "status": row["status"],
             **{axis.field: row["values"].get(axis.field) for axis in space.axes},
             space.objective: row["objective"], "epochs": row["epochs"], "best": row.get("best", False),
             **({"error": row["error"]} if "error" in row else {})}
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
