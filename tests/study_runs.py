"""Studies run through their command at the smoke budget on the real Fashion-MNIST slice, as CI affords them,
and what they leave in MLflow."""
import yaml
from mlflow.tracking import MlflowClient

from pipelines import study
from pipelines.config.project import PROJECT_ROOT
from pipelines.tuning.space import ROW_AXIS
from tests.conftest import mlflow_store


def smoke_sets(data: str, tmp_path) -> list[str]:
    """A study at its smoke budget on the real Fashion-MNIST slice, its runs under `tmp_path`, as CI affords it."""
    sets = [f"data.path={data}", f"train.storage_path={tmp_path / 'runs'}",
            f"tracking.tracking_uri={mlflow_store(tmp_path)}",
            "train.cpus_per_worker=0.25"]  # one row (0.25 + 0.5 augmentation + reads) fits the 2-CPU session
    return [part for text in sets for part in ("--set", text)]


def study_results(stem: str, name: str, tmp_path):
    """The MLflow client, parent run, child runs by row and the table the parent holds of a study run."""
    client = MlflowClient(mlflow_store(tmp_path))
    experiment = client.get_experiment_by_name(f"study-{stem}").experiment_id  # rows may switch methods
    parent = client.search_runs([experiment], filter_string=f"attributes.run_name = '{name}'")[0]
    children = client.search_runs([experiment], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    table = yaml.safe_load(open(client.download_artifacts(parent.info.run_id, "study/study_table.json", str(tmp_path))))
    return client, parent, {run.data.tags[ROW_AXIS]: run for run in children}, table


def run_smoke(stem: str, name: str, data: str, tmp_path, capsys, sets: list[str] = (), rows: str = ""):
    """The study at its smoke budget through its command: exit code, printed output and `study_results`."""
    code = study.main([str(PROJECT_ROOT / "tune_spaces" / "studies" / f"{stem}.yaml"), "--budget", "smoke",
                       "--name", name, *(["--rows", rows] if rows else []), *smoke_sets(data, tmp_path),
                       *[part for text in sets for part in ("--set", text)]])
    return code, capsys.readouterr().out, *study_results(stem, name, tmp_path)
