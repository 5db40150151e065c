"""`python -m pipelines.export`: the backbone copied for use elsewhere, as plain-timm files and as ONNX whose
embeddings onnxruntime computes within 1e-4 of PyTorch's."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from pipelines.export import main
from pipelines.storage.export import save_backbone
from ssl_models import backbone_spec, create_backbone


@pytest.fixture
def exported_backbone(tmp_path):
    """A trained-looking backbone folder as pretraining writes it: a small-stem ResNet-18 on 1-channel 28 px images."""
    torch.manual_seed(0)
    spec = backbone_spec("resnet18", 1, 28, small_stem=True)
    backbone, width = create_backbone(spec)
    for module in backbone.modules():  # BatchNorm statistics away from their initial 0 and 1
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    folder = tmp_path / "checkpoint_000001"
    folder.mkdir()
    save_backbone(folder, backbone.eval(), spec, {"feature_dim": width, "image_size": 28, "mean": [0.29],
                                                  "std": [0.35], "method": "byol"})
    return folder, backbone


@pytest.mark.slow  # the ONNX exporter traces the model: seconds
def test_onnx_export_matches_pytorch_and_the_weights_load_into_timm(exported_backbone, tmp_path, capsys):
    folder, backbone = exported_backbone
    out = tmp_path / "export"
    assert main(["--weights", str(folder), "--out", str(out), "--onnx"]) == 0
    assert "ONNX within" in capsys.readouterr().out
    assert sorted(path.name for path in out.iterdir()) == ["backbone.json", "backbone.onnx", "backbone.safetensors",
                                                           "small_stem.py"]
    meta = json.loads((out / "backbone.json").read_text())
    assert meta["onnx"]["normalised_inside"] and meta["small_stem"] and meta["timm_model"] == "resnet18_small_stem"

    import onnxruntime

    pixels = torch.randint(0, 256, (7, 1, 28, 28)).float() / 255  # a batch size the export never saw
    session = onnxruntime.InferenceSession(str(out / "backbone.onnx"), providers=["CPUExecutionProvider"])
    (embeddings,) = session.run(["embeddings"], {"images": pixels.numpy()})
    with torch.no_grad():
        expected = backbone((pixels - 0.29) / 0.35).numpy()
    assert embeddings.shape == (7, 512)
    assert np.abs(embeddings - expected).max() < 1e-4

    # docs/weights.md's plain-timm recipe, in a process that sees the export folder and not this project
    np.save(out / "pixels.npy", pixels.numpy())
    recipe = f"""
import json, sys, numpy, timm, torch, safetensors.torch
sys.path.insert(0, {str(out)!r})
import small_stem
meta = json.load(open({str(out / "backbone.json")!r}))
pixels = (torch.from_numpy(numpy.load({str(out / "pixels.npy")!r})) - 0.29) / 0.35
model = timm.create_model(meta["timm_model"], num_classes=0, **meta["timm_kwargs"])
model.load_state_dict(safetensors.torch.load_file({str(out / "backbone.safetensors")!r}))
timms = timm.create_model(meta["timm_model"], pretrained=True, num_classes=0, **meta["timm_kwargs"],
                          pretrained_cfg_overlay={{"file": {str(out / "backbone.safetensors")!r}}})
with torch.no_grad():
    numpy.save(sys.argv[1], numpy.stack([model.eval()(pixels).numpy(), timms.eval()(pixels).numpy()]))
print("ssl_models" in sys.modules)
"""
    plain = subprocess.run([sys.executable, "-c", recipe, str(tmp_path / "plain.npy")], cwd=tmp_path, text=True,
                           capture_output=True, env={**os.environ, "PYTHONPATH": ""})
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.strip() == "False"  # nothing of this project was imported
    for embeddings in np.load(tmp_path / "plain.npy"):
        assert np.abs(embeddings - expected).max() < 1e-5


def test_export_without_onnx_copies_the_files_and_a_missing_backbone_is_named(exported_backbone, tmp_path, capsys):
    folder, _ = exported_backbone
    assert main(["--weights", str(folder), "--out", str(tmp_path / "plain")]) == 0
    assert sorted(path.name for path in (tmp_path / "plain").iterdir()) == ["backbone.json", "backbone.safetensors",
                                                                            "small_stem.py"]
    assert main(["--weights", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2
    assert "--weights: no backbone at" in capsys.readouterr().err
    assert main(["--run", "never-ran", "--storage", str(tmp_path), "--out", str(tmp_path / "y")]) == 2
    assert "no run named 'never-ran'" in capsys.readouterr().err
