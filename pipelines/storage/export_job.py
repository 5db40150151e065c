"""`python -m pipelines.export`'s job: a run's (or a checkpoint's) backbone copied to a folder of its own, as
safetensors + json and, with `onnx`, as ONNX checked against PyTorch."""
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from pydantic import Field

from pipelines.config.project import LocalOrURI
from pipelines.config.schema import Config
from pipelines.storage.export import META_FILE, WEIGHTS_FILE, read_export
from pipelines.storage.runs import RunOrWeights, run_weights
from ssl_models import BackboneSpec, small_stem

SMALL_STEM_FILE = "small_stem.py"


class ExportSettings(RunOrWeights):
    """What `python -m pipelines.export` takes, each field its flag."""
    out: LocalOrURI = Field(description="a local folder for the export")
    onnx: bool = Field(False, description="also backbone.onnx, its embeddings checked against PyTorch's")


@dataclass
class ExportResult:
    folder: str
    files: list[str]
    onnx_difference: Optional[float]  # the largest |onnxruntime - PyTorch| on a check batch


def export(settings: ExportSettings) -> ExportResult:
    """Writes `out`/backbone.safetensors and backbone.json (and backbone.onnx; small_stem.py for a small-stem ResNet):
    what docs/weights.md loads. backbone.json's `timm_model` is the name to give `timm.create_model`."""
    folder = settings.weights or run_weights(settings.storage or Config().train.storage_path, settings.run)
    meta, weights = read_export(folder, "--weights" if settings.weights else "--run",
                                "a run's checkpoint folder, or an export")
    out = Path(settings.out)
    difference = None
    if settings.onnx:
        from pipelines.storage.onnx_export import ONNX_FILE, export_onnx

        difference = export_onnx(meta, weights, str(out)).max_difference
        meta = {**meta, "onnx": {"file": ONNX_FILE, "input": "images: float32 N x C x H x W, pixels / 255",
                                 "output": "embeddings: N x feature_dim", "normalised_inside": True}}
    meta = {**meta, "timm_model": BackboneSpec.from_meta(meta).timm_model}  # checkpoints before it was written
    out.mkdir(parents=True, exist_ok=True)
    if meta.get("small_stem"):  # timm has no such ResNet: the file that registers it goes with the weights
        (out / SMALL_STEM_FILE).write_text(Path(small_stem.__file__).read_text())
    (out / WEIGHTS_FILE).write_bytes(weights)
    (out / META_FILE).write_text(json.dumps(meta, indent=2))
    return ExportResult(str(out), sorted(path.name for path in out.iterdir()), difference)
