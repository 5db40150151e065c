"""Sweep spaces (`tune_spaces/*.yaml`): read, checked against the configuration, turned into Ray Tune's.

A space names the method, the preset it starts from, the metric to maximise and the axes: a dotted
configuration field each, with a distribution (`uniform`, `loguniform`, `choice`, `grid`). A study
(`tune_spaces/studies/*.yaml`, `pipelines.study`) is a space with `rows`: named sets of overrides, run as
one more grid axis, `study.row`; its other keys (the paper's numbers, budgets, checks) are kept in `study`.
"""
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from pipelines.config.load import apply_override, build_config, parse_override, read_yaml
from pipelines.config.project import PROJECT_ROOT
from pipelines.config.schema import Config
from pipelines.config.section import ConfigError

DISTRIBUTIONS = {"uniform": ("low", "high"), "loguniform": ("low", "high"), "choice": ("values",), "grid": ("values",)}
TOP_LEVEL = ("method", "preset", "objective", "axes")
STUDY_KEYS = ("rows", "title", "source", "metrics", "budgets", "checks", "plot", "references", "inference_speed")
ROW_AXIS = "study.row"


@dataclass
class Axis:
    field: str
    distribution: str
    low: Optional[float] = None
    high: Optional[float] = None
    values: list = field(default_factory=list)

    @property
    def numeric(self) -> bool:
        return self.distribution in ("uniform", "loguniform") or all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in self.values)

    def examples(self) -> list:
        return self.values if self.values else [self.low, self.high]

    def to_tune(self):
        from ray import tune

        if self.distribution == "uniform":
            return tune.uniform(self.low, self.high)
        if self.distribution == "loguniform":
            return tune.loguniform(self.low, self.high)
        if self.distribution == "choice":
            return tune.choice(self.values)
        return tune.grid_search(self.values)


@dataclass
class Space:
    path: str
    method: str
    preset: str
    objective: str
    axes: list[Axis]
    rows: dict[str, dict] = field(default_factory=dict)  # study row -> {dotted field: value}
    study: dict = field(default_factory=dict)

    def param_space(self) -> dict[str, Any]:
        return {axis.field: axis.to_tune() for axis in self.axes}

    @property
    def has_grid(self) -> bool:
        return any(axis.distribution == "grid" for axis in self.axes)


def _axis(where: str, name: str, spec: Any) -> Axis:
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: axes.{name} must be a mapping with a distribution")
    kind = spec.get("distribution")
    if kind not in DISTRIBUTIONS:
        raise ConfigError(f"{where}: axes.{name}.distribution must be one of {', '.join(DISTRIBUTIONS)} (got {kind!r})")
    allowed = ("distribution", *DISTRIBUTIONS[kind])
    for key in spec:
        if key not in allowed:
            raise ConfigError(f"{where}: axes.{name}.{key} is not a key of a {kind} axis; allowed: {', '.join(allowed)}")
    for key in DISTRIBUTIONS[kind]:
        if key not in spec:
            raise ConfigError(f"{where}: axes.{name} ({kind}) needs '{key}'")
    if kind in ("choice", "grid"):
        values = spec["values"]
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: axes.{name}.values must be a non-empty list")
        return Axis(name, kind, values=values)
    low, high = spec["low"], spec["high"]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)):
        raise ConfigError(f"{where}: axes.{name}: low and high must be numbers (got {low!r}, {high!r})")
    if low >= high:
        raise ConfigError(f"{where}: axes.{name}: low ({low}) must be below high ({high})")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{where}: axes.{name}: a loguniform axis needs low > 0 (got {low})")
    return Axis(name, kind, float(low), float(high))


def apply_values(tree: dict, sampled: dict, rows: dict[str, dict]) -> dict:
    """`tree` with a trial's values set in place: each a dotted field, or the study row whose overrides apply."""
    for name, value in sampled.items():
        for field_name, field_value in (rows[value].items() if name == ROW_AXIS else [(name, value)]):
            apply_override(tree, field_name.split("."), field_value)
    return tree


def check_axis_values(where: str, base: dict, axis: Axis, rows: dict[str, dict]) -> None:
    """Every value the axis can take must make a valid configuration; the error names the axis."""
    import copy

    for value in axis.examples():
        try:
            build_config(apply_values(copy.deepcopy(base), {axis.field: value}, rows))
        except ConfigError as error:
            detail = str(error).removeprefix("invalid configuration:\n").strip()
            what = f"rows.{value}" if axis.field == ROW_AXIS else f"axes.{axis.field} = {value!r}"
            raise ConfigError(f"{where}: {what} is not valid: {detail}") from None


def _rows(where: str, rows) -> dict[str, dict]:
    if not isinstance(rows, dict) or not rows:
        raise ConfigError(f"{where}: 'rows' must map at least one row name to its settings")
    parsed = {}
    for name, spec in rows.items():
        spec = spec or {}
        if not isinstance(spec, dict) or set(spec) - {"set", "paper"}:
            raise ConfigError(f"{where}: rows.{name} takes 'set' (dotted field: value) and 'paper' (metric: number)")
        if not isinstance(spec.get("set", {}), dict):
            raise ConfigError(f"{where}: rows.{name}.set must map dotted configuration fields to values")
        parsed[str(name)] = dict(spec.get("set") or {})
    return parsed


def objective_names(config: Config) -> list[str]:
    """What a trial reports each epoch that a sweep may maximise: the online kNN (labels), RankMe (none)."""
    return [f"knn_top1_k{k}" for k in config.eval.knn_k] + ["rankme"]


def load_space(path: str | Path, base_tree: Optional[dict] = None, overrides: list[str] = ()) -> tuple[Space, dict]:
    """The space and the configuration tree trials start from: its preset (unless `base_tree` is given),
    then `overrides` (`key=value`)."""
    where = str(path)
    tree = read_yaml(path)
    allowed = TOP_LEVEL + STUDY_KEYS if "rows" in tree else TOP_LEVEL
    for key in tree:
        if key not in allowed:
            raise ConfigError(f"{where}: unknown key '{key}'; allowed: {', '.join(allowed)}")
    for key in ("method", "objective") if "rows" in tree else ("method", "objective", "axes"):
        if key not in tree:
            raise ConfigError(f"{where}: '{key}' is missing")
    rows = _rows(where, tree["rows"]) if "rows" in tree else {}
    if not isinstance(tree.get("axes", {}), dict) or not (tree.get("axes") or rows):
        raise ConfigError(f"{where}: 'axes' must map at least one configuration field to a distribution")
    preset = tree.get("preset") or f"configs/{tree['method']}_fmnist_quick.yaml"
    if base_tree is None:
        base_tree = read_yaml(PROJECT_ROOT / preset if not Path(preset).is_absolute() else preset)
    for text in overrides:
        apply_override(base_tree, *parse_override(text))
    base_tree.setdefault("method", {})
    if base_tree["method"].get("name", "byol") != tree["method"]:
        raise ConfigError(f"{where}: the space is for method '{tree['method']}' but the configuration trains "
                          f"'{base_tree['method'].get('name', 'byol')}'")
    base_tree["method"]["name"] = tree["method"]
    config = build_config(dict(base_tree))
    if tree["objective"] not in objective_names(config):
        raise ConfigError(f"{where}: objective '{tree['objective']}' is not reported; the training loop reports "
                          f"{', '.join(objective_names(config))} (eval.knn_k), never the SSL loss")
    if config.eval.every_epochs != 1:  # Ray Tune refuses a trial's report without the objective
        raise ConfigError(f"{where}: eval.every_epochs={config.eval.every_epochs}, but a trial reports its objective "
                          f"{tree['objective']} to Ray Tune every epoch: the online evaluation must run every epoch (1)")
    axes = [Axis(ROW_AXIS, "grid", values=list(rows))] if rows else []
    axes += [_axis(where, name, spec) for name, spec in (tree.get("axes") or {}).items()]
    for axis in axes:
        check_axis_values(where, base_tree, axis, rows)
    study = {key: tree[key] for key in STUDY_KEYS if key in tree}
    return Space(where, tree["method"], preset, tree["objective"], axes, rows, study), base_tree


DEFAULT_METRICS = {"knn": "eval/knn_top1_k20", "linear": "eval/linear_top1"}


def metrics_of(study: dict) -> dict[str, str]:
    """A study's metrics by label: its `metrics`, else the kNN and linear probe top-1."""
    return study.get("metrics") or DEFAULT_METRICS
