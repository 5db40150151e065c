"""Sweep spaces (`tune_spaces/*.yaml`): read, checked against the configuration, turned into Ray Tune's.

A space names the method, the preset it starts from, the metric to maximise and the axes: a dotted
configuration field each, with a distribution (`uniform`, `loguniform`, `choice`, `grid`).
"""
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from pipelines.config import PROJECT_ROOT, Config, ConfigError, apply_override, build_config, parse_override, read_yaml

DISTRIBUTIONS = {"uniform": ("low", "high"), "loguniform": ("low", "high"), "choice": ("values",), "grid": ("values",)}
TOP_LEVEL = ("method", "preset", "objective", "axes")


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


def check_axis_values(where: str, base: dict, axis: Axis) -> None:
    """Every value the axis can take must make a valid configuration; the error names the axis."""
    import copy

    for value in axis.examples():
        tree = copy.deepcopy(base)
        try:
            apply_override(tree, axis.field.split("."), value)
            build_config(tree)
        except ConfigError as error:
            detail = str(error).removeprefix("invalid configuration:\n").strip()
            raise ConfigError(f"{where}: axes.{axis.field} = {value!r} is not valid: {detail}") from None


def objective_names(config: Config) -> list[str]:
    return [f"knn_top1_k{k}" for k in config.eval.knn_k]


def load_space(path: str | Path, base_tree: Optional[dict] = None, overrides: list[str] = ()) -> tuple[Space, dict]:
    """The space and the configuration tree trials start from: its preset (unless `base_tree` is given),
    then `overrides` (`key=value`)."""
    where = str(path)
    tree = read_yaml(path)
    for key in tree:
        if key not in TOP_LEVEL:
            raise ConfigError(f"{where}: unknown key '{key}'; allowed: {', '.join(TOP_LEVEL)}")
    for key in ("method", "objective", "axes"):
        if key not in tree:
            raise ConfigError(f"{where}: '{key}' is missing")
    if not isinstance(tree["axes"], dict) or not tree["axes"]:
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
    axes = [_axis(where, name, spec) for name, spec in tree["axes"].items()]
    for axis in axes:
        check_axis_values(where, base_tree, axis)
    return Space(where, tree["method"], preset, tree["objective"], axes), base_tree
