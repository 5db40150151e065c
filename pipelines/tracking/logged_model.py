"""The pretrained backbone as an MLflow model (the UI's Models tab, the registry, `mlflow.pyfunc.load_model`).

    model = mlflow.pyfunc.load_model("models:/<model id>")   # or runs:/<run id>/backbone_model
    embeddings = model.predict(images)   # (N, H, W) or (N, H, W, C) uint8 arrays, or encoded image bytes

The model is code, not a pickle: loading rebuilds the timm network from `backbone.json` and reads
`backbone.safetensors`; images are resized and centre-cropped as evaluation does, standardised with the
pretraining data's statistics, and the pooled features come back as a float32 array (N, feature_dim).
"""
import json
from pathlib import Path
from typing import Optional

import mlflow.pyfunc
import numpy as np

from pipelines.config.project import PROJECT_ROOT
from pipelines.storage.export import META_FILE, WEIGHTS_FILE

MODEL_NAME = "backbone_model"
CODE_FILE = Path(__file__).with_name("logged_model_code.py")  # what MLflow runs to build the model
RUNTIME_PACKAGES = ("torch", "timm", "safetensors", "numpy", "albumentations", "opencv-python-headless", "pillow",
                    "pyarrow")


def as_images(model_input, channels: int) -> list[np.ndarray]:
    """HWC uint8 images from an array batch, a list of encoded images, or a DataFrame with an `image` column."""
    from pipelines.data.decode import decode_image

    if hasattr(model_input, "columns"):
        if "image" not in model_input.columns:
            raise ValueError(f"a DataFrame input needs an 'image' column of encoded images; it has {list(model_input.columns)}")
        model_input = list(model_input["image"])
    if isinstance(model_input, (list, tuple)):
        return [decode_image(bytes(data), channels) for data in model_input]
    images = np.asarray(model_input)
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise ValueError(f"images must be uint8 arrays shaped (N, H, W) or (N, H, W, C); got {images.dtype} "
                         f"{images.shape}")
    if images.ndim == 3:
        images = images[..., None]
    if images.shape[-1] != channels:
        raise ValueError(f"the backbone takes {channels}-channel images; these have {images.shape[-1]}")
    return list(images)


class BackboneEmbeddings(mlflow.pyfunc.PythonModel):
    # predict takes arrays, lists or a DataFrame column of images on purpose: no type hint for MLflow to validate
    # inputs by, and none of its warning about that on every run's console (MLflow's own switch, as its ChatModel)
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        import torch

        from pipelines.features.extract import Normalizer
        from pipelines.storage.export import load_backbone

        self.meta = json.loads(Path(context.artifacts["meta"]).read_text())
        self.backbone = load_backbone(Path(context.artifacts["weights"]).read_bytes(), self.meta)
        self.normalize = Normalizer(self.meta["mean"], self.meta["std"], torch.device("cpu"))

    def predict(self, context, model_input, params: Optional[dict] = None) -> np.ndarray:
        import torch

        from pipelines.data.augment import eval_transform
        from pipelines.data.augment_batch import to_chw
        from pipelines.features.extract import extract_features

        channels = self.meta.get("timm_kwargs", {}).get("in_chans", 3)
        transform = eval_transform(self.meta["image_size"])
        batch = np.stack([to_chw(transform(image=image)["image"]) for image in as_images(model_input, channels)])
        batch_size = int((params or {}).get("batch_size", 256))
        return extract_features(self.backbone, torch.from_numpy(batch), self.normalize, batch_size).numpy()


def pinned_requirements() -> list[str]:
    """The project's pins of what the model needs at load time."""
    pins = []
    for line in (PROJECT_ROOT / "requirements.txt").read_text().splitlines():
        name = line.split("==")[0].split("[")[0].strip().lower()
        if name in RUNTIME_PACKAGES:
            pins.append(line.strip())
    return pins


def log_backbone_model(uri: str, run_id: str, folder: str, registered_name: Optional[str] = None) -> str:
    """Logs the backbone in `folder` as the run's model `backbone_model`, and as a new version of the registered
    model `registered_name` when given; returns the model id. Evaluation results are attached to it as metrics
    later (pipelines/evaluation/transfer.py)."""
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name=MODEL_NAME, python_model=str(CODE_FILE),
            artifacts={"weights": f"{folder}/{WEIGHTS_FILE}", "meta": f"{folder}/{META_FILE}"},
            code_paths=[str(PROJECT_ROOT / "pipelines"), str(PROJECT_ROOT / "ssl_models")],
            pip_requirements=pinned_requirements(), registered_model_name=registered_name)
    return info.model_id


def model_of_run(uri: str, run_id: str) -> Optional[str]:
    """The id of the backbone model a run logged, if any."""
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.MlflowClient(uri).get_run(run_id).info.experiment_id
    models = mlflow.search_logged_models([experiment], filter_string=f"source_run_id = '{run_id}'", output_format="list")
    return next((model.model_id for model in models if model.name == MODEL_NAME), None)


def download_backbone(model_uri: str, tracking_uri: str, target: str, field: str) -> str:
    """The backbone files of an MLflow model (models:/<id>, runs:/<run id>/backbone_model) copied into `target` (a
    folder or URI the Train workers read); `field`: the setting that named it, for the messages."""
    import tempfile

    from pipelines.config.section import ConfigError
    from pipelines.storage.files import filesystem

    mlflow.set_tracking_uri(tracking_uri)
    with tempfile.TemporaryDirectory() as local:
        try:
            mlflow.artifacts.download_artifacts(model_uri, dst_path=local)
        except Exception as error:  # MLflow raises several kinds for a missing model or run
            raise ConfigError(f"{field}: MLflow has no model at '{model_uri}' ({str(error)[:200]})") from None
        fs, base = filesystem(target)
        fs.create_dir(base, recursive=True)
        for name in (WEIGHTS_FILE, META_FILE):
            found = next(Path(local).rglob(name), None)
            if found is None:
                raise ConfigError(f"{field}: '{model_uri}' holds no {name} (not a backbone model of this project)")
            with fs.open_output_stream(f"{base}/{name}") as stream:
                stream.write(found.read_bytes())
    return target
