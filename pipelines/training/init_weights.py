"""Where `model.init` starts the backbone from: a timm weights file on disk for model.backbone (nothing downloaded at
run time), an earlier run (`run:NAME`, its last checkpoint), a folder with backbone.safetensors + backbone.json, or
an MLflow model (downloaded once on the driver into train.storage_path/inits/, as a distillation teacher is).

Only the backbone starts from the weights; the heads start random. Momentum targets and self-distillation teachers
are copies of the backbone, so they start from the same weights."""
import logging
import re
from pathlib import Path
from typing import Callable, Optional

import safetensors.torch
from torch import nn

from pipelines.config.schema import Config
from pipelines.config.section import ConfigError
from pipelines.storage.export import read_export
from pipelines.storage.files import DatasetError
from ssl_models import BackboneSpec, create_backbone

RUN_PREFIX = "run:"
MLFLOW_SCHEMES = ("models:/", "runs:/")  # an MLflow model, as distillation's teacher_weights takes one too
WEIGHTS_FILE_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".npz")


def describe(spec: BackboneSpec) -> str:
    extras = [name for name, on in (("small stem", spec.small_stem), (f"{spec.norm} norm", spec.norm != "batch")) if on]
    channels = spec.timm_kwargs.get("in_chans", 3)
    return f"{spec.timm_name} ({', '.join([f'{channels} channels', *extras])})"


def timm_weights(create: Callable[[], nn.Module], path: str, field: str, target: str) -> nn.Module:
    """`create()`, a timm model asked to load the weights file `path`, checked: timm loads without the classifier
    non-strictly and only logs a layer the file lacks (left random), so what it reports is an error here naming the
    file (`field`: the setting that named it) and the architecture (`target`)."""
    if not Path(path).is_file():
        raise ConfigError(f"{field}: no weights file at '{path}' (a timm architecture's weights must be on disk: "
                          "nothing is downloaded at run time)")
    heard = TimmLoadReport()
    logger = logging.getLogger("timm.models._builder")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(heard)
    try:
        model = create()
    except (RuntimeError, KeyError, ValueError) as error:
        heard.problems.insert(0, str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__)
    finally:
        logger.removeHandler(heard)
        logger.setLevel(level)
    if heard.problems:
        raise ConfigError(f"{field}: '{path}' does not fit {target}: {heard.problems[0][:300]}")
    return model


def from_weights_file(spec: BackboneSpec, path: str) -> tuple[nn.Module, int]:
    """timm's own loading: the classifier dropped, the first layer adapted to the data's channels, a ViT's position
    embedding (and patch embedding) resampled to this image and patch size."""
    backbone = timm_weights(lambda: create_backbone(spec, pretrained=True, pretrained_cfg_overlay={"file": path})[0],
                            path, "model.init", f"model.backbone {describe(spec)}")
    return backbone, backbone.num_features


class TimmLoadReport(logging.Handler):
    """What timm says while it loads a weights file: keys missing or left over, a first layer it could not adapt."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.problems: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith(("Missing keys", "Unexpected keys", "Unable to convert")):
            self.problems.append(message)


def from_export(spec: BackboneSpec, folder: str, init: str) -> tuple[nn.Module, int]:
    """An exported backbone of the same architecture, loaded whole (a checkpoint, an export, an MLflow model's files)."""
    meta, weights = read_export(folder, "model.init",
                                f"a timm weights file ends in {', '.join(WEIGHTS_FILE_SUFFIXES)}")
    theirs = BackboneSpec.from_meta(meta)
    backbone, width = create_backbone(spec)
    try:
        if (theirs.timm_name, theirs.small_stem, theirs.norm) != (spec.timm_name, spec.small_stem, spec.norm):
            raise RuntimeError("another architecture")
        backbone.load_state_dict(safetensors.torch.load(weights))
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[-1].strip()[:300]
        raise ConfigError(f"model.init: '{init}' holds a {describe(theirs)} backbone; model.backbone is "
                          f"{describe(spec)} ({reason})") from None
    return backbone, width


def initial_backbone(spec: BackboneSpec, init: Optional[str], storage_path: str) -> tuple[nn.Module, int]:
    """The backbone `spec` describes, with the weights `init` names (None: timm's random initialisation)."""
    if init is None:
        return create_backbone(spec)
    if init.startswith(MLFLOW_SCHEMES):
        raise ConfigError(f"model.init: '{init}' is downloaded by pretrain() before training (resolve_init)")
    if init.endswith(WEIGHTS_FILE_SUFFIXES):
        return from_weights_file(spec, init)
    return from_export(spec, run_folder(init, storage_path), init)


def run_folder(init: str, storage_path: str) -> str:
    """The folder `init` names: a run's last checkpoint for `run:NAME`, else the folder itself."""
    if not init.startswith(RUN_PREFIX):
        return init
    from pipelines.storage.runs import run_weights

    try:
        return run_weights(storage_path, init.removeprefix(RUN_PREFIX))
    except DatasetError:
        raise ConfigError(f"model.init: no run named '{init.removeprefix(RUN_PREFIX)}' with a checkpoint under "
                          f"{storage_path}") from None


def resolve_init(config: Config, tracking_uri: str) -> None:
    """On the driver, before Ray: `model.init` made a folder every worker reads (a run's checkpoint by its path, an
    MLflow model downloaded into train.storage_path/inits/), so that a sweep's trials, whose runs live elsewhere,
    find it too."""
    init = config.model.init
    if init is None or init.endswith(WEIGHTS_FILE_SUFFIXES):
        return
    if init.startswith(MLFLOW_SCHEMES):
        from pipelines.tracking.logged_model import download_backbone

        target = f"{config.train.storage_path.rstrip('/')}/inits/{re.sub(r'[^A-Za-z0-9_.-]+', '_', init)}"
        config.model.init = download_backbone(init, tracking_uri, target, "model.init")
    else:
        config.model.init = run_folder(init, config.train.storage_path)
