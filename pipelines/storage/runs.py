"""The runs a storage path holds: each run's run.json (its configuration and MLflow run), its last checkpoint, and
the names commands take (`--run`, `--resume`); a run's failure as one line."""
import json
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipelines.config.project import LocalOrURI
from pipelines.config.schema import Config
from pipelines.config.section import ConfigError
from pipelines.storage.files import DatasetError, file_exists, filesystem, latest_checkpoint, newest_folder_with

RUN_FILE = "run.json"


class RunFailed(RuntimeError):
    """Training failed; the MLflow run is marked FAILED with this reason."""


def read_run_file(storage_path: str, name: str) -> dict:
    fs, base = filesystem(f"{storage_path.rstrip('/')}/{name}")
    try:
        with fs.open_input_stream(f"{base}/{RUN_FILE}") as stream:
            return json.loads(stream.read())
    except (FileNotFoundError, OSError):
        raise ConfigError(f"no run named '{name}' under {storage_path} (nothing to resume)") from None


def run_exists(storage_path: str, name: str) -> bool:
    return file_exists(f"{storage_path.rstrip('/')}/{name}/{RUN_FILE}")


def last_run_name(storage_path: str) -> str:
    name = newest_folder_with(storage_path, RUN_FILE)
    if name is None:
        raise ConfigError(f"no run to resume under {storage_path}")
    return name


def failure_reason(error: BaseException) -> str:
    failures = getattr(error, "worker_failures", None)
    if failures:
        rank, cause = sorted(failures.items())[0]
        cause = getattr(cause, "cause", None) or cause
        return f"worker {rank}: {type(cause).__name__}: {str(cause).strip().splitlines()[-1] if str(cause).strip() else ''}"
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[-1] if text else ''}"


def run_weights(storage_path: str, run_name: str) -> str:
    """The last checkpoint of a pretraining run (by name) under `storage_path`."""
    checkpoint = latest_checkpoint(f"{storage_path.rstrip('/')}/{run_name}")
    if checkpoint is None:
        raise DatasetError(f"no run named '{run_name}' with a checkpoint under {storage_path}")
    return checkpoint


class RunOrWeights(BaseModel):
    """A backbone a command reads: `run` (a pretraining run's name) or `weights` (an export or a checkpoint
    folder), one of them."""
    model_config = ConfigDict(extra="forbid")

    run: Optional[str] = Field(None, description="a pretraining run's name: its last checkpoint")
    weights: Optional[LocalOrURI] = Field(None, description="a folder or URI with backbone.safetensors + backbone.json")
    storage: Optional[LocalOrURI] = Field(None, description="where the run's checkpoints are (default: train.storage_path)")

    @model_validator(mode="after")
    def _one_backbone(self) -> "RunOrWeights":
        if (self.run is None) == (self.weights is None):
            raise ValueError("give the backbone as run or as weights (one of them)")
        return self


def resolve_source(weights: Optional[str], run: Optional[str], storage: Optional[str],
                   data: Optional[str], record: Optional[dict] = None) -> tuple[str, str]:
    """(weights folder, dataset) from `--weights` or a run's name (its last checkpoint and its data.path;
    `record`: its run.json, when read already)."""
    if run:
        storage = storage or Config().train.storage_path
        config = (record or read_run_file(storage, run))["config"]
        return run_weights(storage, run), data or config["data"]["path"]
    if not data:
        raise ConfigError("--data is required with --weights (the ingested dataset to evaluate on)")
    return weights, data
