from pathlib import Path

import pytest

from pipelines.build import head_arguments, method_arguments
from pipelines.config import PROJECT_ROOT, load_config
from pipelines.tune_space import load_space

PRESETS = sorted((PROJECT_ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("preset", PRESETS, ids=lambda path: Path(path).stem)
def test_every_preset_is_valid(preset):
    config = load_config(preset)
    head_arguments(config)
    method_arguments(config, steps_per_epoch=10)
    assert Path(preset).stem.startswith(config.method.name)


SPACES = sorted((PROJECT_ROOT / "tune_spaces").glob("*.yaml"))


@pytest.mark.parametrize("space", SPACES, ids=lambda path: Path(path).stem)
def test_every_tune_space_names_real_fields_with_valid_values(space):
    loaded, base = load_space(space)  # checks every value each axis can take against the configuration
    assert loaded.method == Path(space).stem and loaded.objective == "knn_top1_k20"
    assert loaded.axes and base["method"]["name"] == loaded.method
