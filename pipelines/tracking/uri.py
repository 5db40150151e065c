"""Where runs go: tracking.tracking_uri, else MLFLOW_TRACKING_URI, else a SQLite store in the project folder (no
MLflow import: Ray's start need not wait for it)."""
import os

from pipelines.config.project import PROJECT_ROOT
from pipelines.config.schema import Config


def tracking_uri(config: Config) -> str:
    return (
        config.tracking.tracking_uri
        or os.environ.get("MLFLOW_TRACKING_URI")
        or f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}"
    )
