from pathlib import Path

import pytest

from pipelines.build import head_arguments, method_arguments
from pipelines.config import PROJECT_ROOT, load_config

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
    import yaml

    tree = yaml.safe_load(Path(space).read_text())
    preset = PROJECT_ROOT / "configs" / f"{Path(space).stem}_fmnist_quick.yaml"
    for field, axis in tree["axes"].items():
        values = axis.get("values") or [axis["low"], axis["high"]]
        for value in values:
            load_config(preset, [f"{field}={value}"])
