"""An exported backbone as ONNX, for inference outside Python and PyTorch (onnxruntime, TensorRT, OpenVINO):
the input is `images`, float32 N x C x H x W in [0, 1] (pixels / 255), the normalisation the backbone was trained
with is inside the graph, the output is `embeddings`, N x features; the batch size is free. The export is checked
against PyTorch with onnxruntime on a batch of another size before it is kept."""
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipelines.storage.export import load_backbone

ONNX_FILE = "backbone.onnx"
TOLERANCE = 1e-4  # the largest difference from PyTorch's embeddings the export may have


class NormalisedBackbone(nn.Module):
    """(images - mean) / std, then the backbone: what the ONNX graph computes."""

    def __init__(self, backbone: nn.Module, mean, std):
        super().__init__()
        self.backbone = backbone
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone((images - self.mean) / self.std)


@dataclass
class OnnxExport:
    path: str
    max_difference: float  # largest |onnxruntime - PyTorch| over a check batch
    input_shape: tuple  # (batch, C, H, W), batch free


def export_onnx(meta: dict, weights: bytes, out: str, check_batch: int = 5) -> OnnxExport:
    """`out`/backbone.onnx of the backbone `meta` (backbone.json) and `weights` (backbone.safetensors' bytes)
    describe. Raises ValueError, and keeps nothing, when onnxruntime's embeddings differ from PyTorch's by more
    than TOLERANCE."""
    channels = meta.get("timm_kwargs", {}).get("in_chans", 3)
    size = meta.get("image_size") or 224
    mean, std = meta.get("mean") or [0.5] * channels, meta.get("std") or [0.5] * channels
    model = NormalisedBackbone(load_backbone(weights, meta), mean, std).eval()
    path = Path(out) / ONNX_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(model, (torch.rand(2, channels, size, size),), str(path), input_names=["images"],
                      output_names=["embeddings"], dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True,
                      external_data=False, verbose=False)  # one file: the weights inside (up to 2 GB)
    difference = onnx_difference(model, path, torch.rand(check_batch, channels, size, size))
    if difference > TOLERANCE:
        path.unlink()
        raise ValueError(f"the ONNX export differs from PyTorch by {difference:.2g} (> {TOLERANCE}): not kept")
    return OnnxExport(str(path), difference, ("batch", channels, size, size))


def onnx_difference(model: nn.Module, path: Path, images: torch.Tensor) -> float:
    """The largest difference between onnxruntime's embeddings of `images` and `model`'s."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (ran,) = session.run(["embeddings"], {"images": images.numpy()})
    with torch.no_grad():
        expected = model(images).numpy()
    return float(np.abs(ran - expected).max())
