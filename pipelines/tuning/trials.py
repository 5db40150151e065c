"""Where a sweep's trials live: their storage folder, their MLflow child runs, and a field of a trial's configuration."""
from pipelines.config.schema import Config


def trial_storage(base: Config, sweep_name: str) -> str:
    return f"{base.train.storage_path.rstrip('/')}/{sweep_name}/trials"


def child_runs(client, state: dict) -> list:
    parent = state["parent_run_id"]
    return client.search_runs([client.get_run(parent).info.experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{parent}'", max_results=10000)


def tree_value(tree: dict, field: str):
    node = tree
    for key in field.split("."):
        node = node.get(key) if isinstance(node, dict) else None
    return node
