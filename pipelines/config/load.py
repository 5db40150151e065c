"""The configuration from YAML presets and `--set a.b=value` overrides, validated once, its errors named by field."""
from pathlib import Path
from typing import Any, Optional

import yaml
from pydantic import BaseModel, ValidationError

from pipelines.config.methods import DINO_RESNET, METHOD_CONFIGS, PAPER_OPTIM
from pipelines.config.schema import Config, ModelConfig
from pipelines.config.section import ConfigError


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got '{text}'")
    key, raw = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else None


def apply_override(tree: dict, keys: list[str], value: Any) -> None:
    node = tree
    for i, key in enumerate(keys[:-1]):
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"'{'.'.join(keys[: i + 1])}' is a value, not a section")
    node[keys[-1]] = value


def section_fields(path: tuple) -> list[str]:
    if path and path[0] == "method":
        return list(METHOD_CONFIGS[path[1]].model_fields) if len(path) > 1 else []
    model = Config
    for part in path:
        annotation = model.model_fields[part].annotation if part in model.model_fields else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def format_validation_error(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        loc = item["loc"]
        shown = ("method", *loc[2:]) if loc[:1] == ("method",) and len(loc) > 1 and loc[1] in METHOD_CONFIGS else loc
        field = ".".join(str(part) for part in shown) or "config"
        if item["type"] == "extra_forbidden":
            where = f" for method {loc[1]}" if shown is not loc else ""
            lines.append(f"  {field}: unknown field{where}; allowed: {', '.join(section_fields(loc[:-1]))}")
            continue
        got = f" (got {item['input']!r})" if item["type"] != "missing" and not isinstance(item["input"], dict) else ""
        message = item["msg"].removeprefix("Value error, ")
        if message.split(".")[0] in Config.model_fields:  # a validator's message naming its field already
            lines.append(f"  {message}")
            continue
        lines.append(f"  {field}: {item['msg']}{got}")
    return "invalid configuration:\n" + "\n".join(lines)


def set_defaults(tree: dict, section: str, values: dict) -> None:
    """`values` into `tree[section]` where the tree sets none (a preset or an override wins)."""
    if isinstance(tree.setdefault(section, {}), dict):
        for key, value in values.items():
            tree[section].setdefault(key, value)


# Settings that are gone, still in the configurations runs logged before them (a resumed run reads its own) and in
# the presets studies wrote: dropped. Training reads in its augmentation actors (no read tasks to size) since d132bc2.
RETIRED = {"data": ("read_cpus", "read_tasks")}


def build_config(tree: dict) -> Config:
    for section, names in RETIRED.items():
        for name in names:
            if isinstance(tree.get(section), dict):
                tree[section].pop(name, None)
    if isinstance(tree.get("method"), dict):
        tree["method"].setdefault("name", "byol")
    method = tree["method"].get("name") if isinstance(tree.get("method"), dict) else "byol"
    if method == "dino":
        from ssl_models.backbones import is_vit

        model, optim = tree.get("model"), tree.get("optim")
        if not is_vit(model.get("backbone", ModelConfig().backbone) if isinstance(model, dict) else ModelConfig().backbone):
            set_defaults(tree, "method", DINO_RESNET["method"])
            if not isinstance(optim, dict) or optim.get("name", "sgd") == "sgd":  # AdamW asked for: the ViT recipe's
                set_defaults(tree, "optim", DINO_RESNET["optim"])
    set_defaults(tree, "optim", PAPER_OPTIM.get(method, {}))
    try:
        return Config.model_validate(tree)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error)) from None


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {error}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections")
    return tree


def load_config(path: Optional[str | Path] = None, overrides: list[str] = ()) -> Config:
    """Defaults, then the YAML preset, then each `key=value` override, validated once at the end."""
    tree = read_yaml(path) if path else {}
    for text in overrides:
        apply_override(tree, *parse_override(text))
    return build_config(tree)


def config_yaml(config: Config) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
