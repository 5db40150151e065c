import inspect
from pathlib import Path

import pytest
import yaml

from pipelines.config.load import load_config
from pipelines.config.methods import PAPER_OPTIM
from pipelines.config.project import PROJECT_ROOT, absolute_if_local
from pipelines.training.methods import head_arguments, method_arguments
from pipelines.tuning.space import load_space
from ssl_models import METHODS

PRESETS = sorted((PROJECT_ROOT / "configs").glob("*.yaml"))
HEADS = ("projector_hidden_dim", "projection_dim", "projector_layers", "predictor_hidden_dim")


@pytest.mark.parametrize("preset", PRESETS, ids=lambda path: Path(path).stem)
def test_every_preset_is_valid(preset):
    written, config = yaml.safe_load(Path(preset).read_text()), load_config(preset)
    loaded, name = config.model_dump(mode="json"), written["method"]["name"]
    assert config.method.name == name and Path(preset).stem.startswith(f"{name}_")
    for section, values in written.items():
        for key, value in values.items():
            if (section, key) == ("data", "path"):  # a folder relative to where the command runs
                value = absolute_if_local(value)
            assert loaded[section][key] == value, f"{section}.{key}"
    for key, value in PAPER_OPTIM.get(name, {}).items():  # the paper's optimizer where the preset sets none
        assert loaded["optim"][key] == written.get("optim", {}).get(key, value), f"optim.{key}"
    model = written.get("model", {})
    assert head_arguments(config) == {key: model[key] for key in HEADS if key in model}
    arguments, accepted = method_arguments(config, steps_per_epoch=10), inspect.signature(METHODS[name]).parameters
    expected = {}
    for key, value in config.method.model_dump(exclude={"name"}).items():
        if key.endswith("_epochs"):
            if value is None:  # DINOv2's teacher temperature warm-up unset: 30 % of the run
                assert key == "teacher_temperature_warmup_epochs" and name == "dinov2"
                value = 0.3 * config.train.epochs
            key, value = key.removesuffix("_epochs") + "_steps", round(value * 10)
        if key in accepted:
            expected[key] = value
    assert arguments == expected


SPACES = sorted((PROJECT_ROOT / "tune_spaces").glob("*.yaml"))


@pytest.mark.parametrize("space", SPACES, ids=lambda path: Path(path).stem)
def test_every_tune_space_names_real_fields_with_valid_values(space):
    loaded, base = load_space(space)  # checks every value each axis can take against the configuration
    assert loaded.method == Path(space).stem and loaded.objective == "knn_top1_k20"
    assert loaded.axes and base["method"]["name"] == loaded.method
