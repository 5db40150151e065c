"""The project's own import graph, imports inside functions counted: no circle, and ssl_models below pipelines
(pure PyTorch and timm: no Ray, no MLflow)."""
import ast
import re
from pathlib import Path
from typing import Optional

from pipelines.config.project import PROJECT_ROOT

PACKAGES = ("pipelines", "ssl_models")


def module_name(path: Path) -> str:
    parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(path: Path) -> set[str]:
    """Every module name an import statement of the file names, wherever the statement is."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    files = {module_name(path): path for package in PACKAGES for path in (PROJECT_ROOT / package).rglob("*.py")}
    graph = {}
    for module, path in files.items():
        targets = set()
        for name in imported_names(path):
            while name and name not in files:
                name = name.rpartition(".")[0]
            if name and name != module and name not in PACKAGES:
                targets.add(name)
        graph[module] = targets
    return graph


def find_circle(graph: dict[str, set[str]]) -> Optional[list[str]]:
    """One circle of `graph` as the modules along it (the first repeated at the end), or None."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" once every import below it is clear
    path: list[str] = []

    def visit(module: str) -> Optional[list[str]]:
        state[module] = "open"
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state and (circle := visit(target)):
                return circle
        state[module] = "done"
        path.pop()
        return None

    for module in sorted(graph):
        if module not in state and (circle := visit(module)):
            return circle
    return None


def test_find_circle_names_a_circle_and_passes_a_layered_graph():
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_circle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_project_has_no_import_circle_counting_imports_inside_functions():
    graph = import_graph()
    assert "pipelines.training.teacher" in graph["pipelines.pretraining.run"]  # imported inside `pretrain()`: counted
    circle = find_circle(graph)
    assert circle is None, "import circle: " + " -> ".join(circle)


# pipelines/ by stage, lowest first: a module imports from its own stage or those before it; the commands
# (pipelines/<command>.py) come after every stage.
STAGES = ("config", "cluster", "storage", "data", "ingestion", "features", "tracking", "training", "evaluation",
          "pretraining", "tuning")


def stage_rank(module: str) -> int:
    parts = module.split(".")
    if parts[0] != "pipelines":
        return -1
    if parts[1] in STAGES:
        return STAGES.index(parts[1])
    return len(STAGES)  # a command module


def imports_up_the_stages(graph: dict[str, set[str]]) -> list[str]:
    return [f"{module} -> {target}" for module, targets in sorted(graph.items()) for target in sorted(targets)
            if stage_rank(target) > stage_rank(module)]


def test_imports_flow_down_the_stages_of_pipelines():
    assert imports_up_the_stages({"pipelines.data.store": {"pipelines.training.step", "pipelines.config.schema"},
                                  "pipelines.pretrain": {"pipelines.tuning.sweep"}}) == [
        "pipelines.data.store -> pipelines.training.step"]
    folders = {path.name for path in (PROJECT_ROOT / "pipelines").iterdir() if path.is_dir() and path.name != "__pycache__"}
    assert folders == set(STAGES)
    assert imports_up_the_stages(import_graph()) == []


def test_each_stage_says_what_it_holds_and_no_file_of_pipelines_is_over_300_lines():
    for stage in STAGES:
        assert ast.get_docstring(ast.parse((PROJECT_ROOT / "pipelines" / stage / "__init__.py").read_text())), stage
    for path in sorted((PROJECT_ROOT / "pipelines").rglob("*.py")):
        lines = len(path.read_text().splitlines())
        assert lines <= 300, f"{path.relative_to(PROJECT_ROOT)}: {lines} lines"


def test_ssl_models_imports_nothing_from_pipelines_ray_or_mlflow():
    for path in sorted((PROJECT_ROOT / "ssl_models").rglob("*.py")):
        found = {name.split(".")[0] for name in imported_names(path)} & {"pipelines", "ray", "mlflow"}
        assert not found, f"{path.name} imports {', '.join(sorted(found))}"


def private_ray_uses(source: str) -> set[str]:
    """What `source` names of Ray's private modules and attributes: an import or a dotted name from `ray` with a
    part starting with `_`, or a `getattr` of a private name (Ray's `_execution_idx`)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Attribute):
            parts, value = [node.attr], node.value
            while isinstance(value, ast.Attribute):
                parts.append(value.attr)
                value = value.value
            names = [".".join([value.id, *reversed(parts)])] if isinstance(value, ast.Name) else []
        elif (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "getattr" and len(node.args) > 1
              and isinstance(node.args[1], ast.Constant) and re.match(r"_[a-z]", str(node.args[1].value))):
            found.add(f"getattr(..., {node.args[1].value!r})")
        found.update(name for name in names
                     if name.split(".")[0] == "ray" and any(part.startswith("_") for part in name.split(".")))
    return found


def test_private_ray_apis_are_used_only_in_the_compatibility_module():
    assert private_ray_uses("from ray._private.worker import _global_node\nimport ray.data\n"
                            "x = ray.data._internal.util\ny = getattr(context, '_execution_idx', 0)") == {
        "ray._private.worker", "ray._private.worker._global_node", "ray.data._internal", "ray.data._internal.util",
        "getattr(..., '_execution_idx')"}
    allowed = PROJECT_ROOT / "pipelines" / "cluster" / "ray_compat.py"
    assert private_ray_uses(allowed.read_text())  # what the check looks for is what the module holds
    for folder in ("pipelines", "ssl_models", "benchmarks", "tests", "scripts"):
        for path in sorted((PROJECT_ROOT / folder).rglob("*.py")):
            if path != allowed and path != Path(__file__):
                assert not private_ray_uses(path.read_text()), f"{path.relative_to(PROJECT_ROOT)}: private Ray API"


COMMANDS = ("pretrain", "evaluate", "embed", "ingest", "sweep", "study", "neighbours", "export")


def argparse_uses(source: str) -> set[str]:
    """`argparse` imported, or `parse_args` named (called or defined), anywhere in `source`."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import) and any(alias.name == "argparse" for alias in node.names) or \
                isinstance(node, ast.ImportFrom) and node.module == "argparse":
            found.add("argparse")
        elif isinstance(node, ast.Attribute) and node.attr == "parse_args" or \
                isinstance(node, ast.Name) and node.id == "parse_args" or \
                isinstance(node, ast.FunctionDef) and node.name == "parse_args" or \
                isinstance(node, ast.ImportFrom) and any(alias.name == "parse_args" for alias in node.names):
            found.add("parse_args")
    return found


def test_command_lines_are_parsed_only_in_the_command_modules():
    assert argparse_uses("import argparse\ndef f(argv):\n    return parser.parse_args(argv)") == {"argparse",
                                                                                                 "parse_args"}
    assert argparse_uses("from pipelines.pretrain import parse_args") == {"parse_args"}
    commands = {PROJECT_ROOT / "pipelines" / f"{name}.py" for name in COMMANDS}
    assert {path for path in (PROJECT_ROOT / "pipelines").glob("*.py")} == commands
    for path in sorted((PROJECT_ROOT / "pipelines").rglob("*.py")):
        if path not in commands:
            assert not argparse_uses(path.read_text()), f"{path.relative_to(PROJECT_ROOT)} parses a command line"


def test_the_tests_are_laid_out_as_the_code():
    """A folder per stage of pipelines/ that has tests, `methods` for ssl_models, `end_to_end` for whole runs;
    shared helpers in tests/helpers.py, fixtures in tests/conftest.py."""
    tests = PROJECT_ROOT / "tests"
    folders = {path.name for path in tests.iterdir() if path.is_dir() and path.name != "__pycache__"}
    assert folders <= set(STAGES) | {"methods", "end_to_end"}, folders - set(STAGES)
    assert {path.name for path in tests.glob("*.py")} == {"conftest.py", "helpers.py", "test_imports.py"}
    for path in tests.rglob("*.py"):
        assert "tests.conftest" not in imported_names(path), f"{path.relative_to(PROJECT_ROOT)}: helpers come from tests.helpers"
