"""A backbone for use elsewhere: safetensors + json (plain timm, docs/weights.md) and, with --onnx, ONNX.

    python -m pipelines.export --run NAME --out exports/NAME --onnx
    python -m pipelines.export --weights runs/NAME/checkpoint_000009 --out exports/NAME

The ONNX graph takes `images`, float32 N x C x H x W scaled to [0, 1] (pixels / 255) at the training size, with
the training normalisation inside, and returns `embeddings`, N x features; any batch size. It is checked with
onnxruntime against PyTorch (within 1e-4) before it is kept.
"""
import argparse
import sys
from typing import Optional

from pipelines.config.flags import settings_from_flags
from pipelines.config.section import ConfigError
from pipelines.storage.export_job import ExportSettings, export
from pipelines.storage.files import DatasetError


def parse_args(argv) -> ExportSettings:
    parser = argparse.ArgumentParser(prog="python -m pipelines.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", help="a pretraining run's name: its last checkpoint")
    source.add_argument("--weights", help="a folder or URI holding backbone.safetensors and backbone.json")
    parser.add_argument("--storage", help="where the run's checkpoints are (default: train.storage_path)")
    parser.add_argument("--out", required=True, help="a local folder for the export")
    parser.add_argument("--onnx", action="store_true", help="also backbone.onnx, checked with onnxruntime")
    return settings_from_flags(ExportSettings, vars(parser.parse_args(argv)), {})


def main(argv: Optional[list[str]] = None) -> int:
    try:
        result = export(parse_args(argv))
    except (ConfigError, DatasetError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    checked = f"; ONNX within {result.onnx_difference:.1g} of PyTorch" if result.onnx_difference is not None else ""
    print(f"exported {', '.join(result.files)} to {result.folder}{checked}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
