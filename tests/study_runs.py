"""Studies run through `study()` at the smoke budget on the real Fashion-MNIST slice, as CI affords them,
and what they leave in MLflow."""
import yaml
from mlflow.tracking import MlflowClient

from pipelines.config.project import PROJECT_ROOT
from pipelines.tuning.jobs import StudySettings, study
from pipelines.tuning.space import ROW_AXIS
from tests.conftest import mlflow_store


def smoke_overrides(data: str, tmp_path) -> list[str]:
    """A study at its smoke budget on the real Fashion-MNIST slice, its runs under `tmp_path`, as CI affords it."""
    return [f"data.path={data}", f"train.storage_path={tmp_path / 'runs'}",
            f"tracking.tracking_uri={mlflow_store(tmp_path)}",
            "train.cpus_per_worker=0.25"]  # one row (0.25 + 0.5 augmentation + reads) fits the 2-CPU session


def smoke_sets(data: str, tmp_path) -> list[str]:
    """`smoke_overrides` as the command's flags."""
    return [part for text in smoke_overrides(data, tmp_path) for part in ("--set", text)]


def study_results(stem: str, name: str, tmp_path):
    """The MLflow client, parent run, child runs by row and the table the parent holds of a study run."""
    client = MlflowClient(mlflow_store(tmp_path))
    experiment = client.get_experiment_by_name(f"study-{stem}").experiment_id  # rows may switch methods
    parent = client.search_runs([experiment], filter_string=f"attributes.run_name = '{name}'")[0]
    children = client.search_runs([experiment], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    table = yaml.safe_load(open(client.download_artifacts(parent.info.run_id, "study/study_table.json", str(tmp_path))))
    return client, parent, {run.data.tags[ROW_AXIS]: run for run in children}, table


def run_smoke(stem: str, name: str, data: str, tmp_path, overrides: list[str] = (), rows: list[str] = None):
    """The study at its smoke budget, as a notebook runs it: its StudyResult and `study_results`."""
    result = study(StudySettings(study=str(PROJECT_ROOT / "tune_spaces" / "studies" / f"{stem}.yaml"), budget="smoke",
                                 name=name, rows=rows, overrides=smoke_overrides(data, tmp_path) + list(overrides)))
    return result, *study_results(stem, name, tmp_path)
