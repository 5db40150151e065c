"""The backbone's MLflow model class (its loading and embedding end to end: tests/end_to_end/test_pretrain.py)."""
import importlib.util
import warnings

from pipelines.config.project import PROJECT_ROOT


def test_defining_the_backbone_model_prints_no_mlflow_warning_about_type_hints():
    """MLflow warns, when a PythonModel subclass is defined, that its `predict` has no type hint; every run printed
    it when it logged its model. The module is run afresh, MLflow's once-only record of the warning cleared."""
    path = PROJECT_ROOT / "pipelines" / "tracking" / "logged_model.py"
    spec = importlib.util.spec_from_file_location("logged_model_afresh", path)
    module = importlib.util.module_from_spec(spec)
    warnings.onceregistry.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        spec.loader.exec_module(module)
    assert [str(w.message) for w in caught if "type hint" in str(w.message)] == []
