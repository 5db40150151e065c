"""What MLflow runs to load the backbone model ("models from code": the model is built, never unpickled)."""
from mlflow.models import set_model

from pipelines.tracking.logged_model import BackboneEmbeddings

set_model(BackboneEmbeddings())
