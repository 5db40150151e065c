"""Every use of a private (or deprecated) Ray API (Ray 2.60) in the project, each with the public API it waits for: a
Ray upgrade that moves one breaks it here and nowhere else (tests/test_imports.py holds the rest of the project to
that)."""
import functools
import warnings
from typing import Callable, Optional

import ray.data

# Waits for: a public hook into Ray Data's scheduling loop (2.60 documents none; DataContext's
# custom_execution_callback_classes takes subclasses of this private base).
from ray.data._internal.execution.execution_callback import ExecutionCallback

# Train V2's controller reads these from its environment (ray/train/v2/_internal/constants.py:
# ENABLE_PREEMPTION_WATCHER_ENV_VAR, HEALTH_CHECK_INTERVAL_S_ENV_VAR; the names are copied, not imported, so that
# starting Ray does not import Ray Train). Waits for: the same settings as fields of ray.train.RunConfig.
TRAIN_PREEMPTION_WATCHER = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"
TRAIN_HEALTH_CHECK_INTERVAL_S = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"


def with_execution_callback(dataset: ray.data.Dataset, callback: type[ExecutionCallback]) -> ray.data.Dataset:
    """`dataset`, executed with an instance of `callback` told of every step of Ray Data's scheduling loop."""
    context = dataset.context
    context.custom_execution_callback_classes = [*context.custom_execution_callback_classes, callback]
    return dataset


def without_actor_restarts(read: Callable[..., ray.data.Dataset]) -> Callable[..., ray.data.Dataset]:
    """`ray.data.read_datasource` whose actors (an actor pool's `compute`) Ray does not start again when they die.
    Waits for: a named max_restarts parameter (Ray 2.60 takes it only in the `ray_remote_args` it deprecates for
    2.64, and warns)."""
    @functools.wraps(read)
    def reading(*arguments, **options) -> ray.data.Dataset:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
            return read(*arguments, **options, ray_remote_args={"max_restarts": 0})
    return reading


def execution_index(data_context: Optional[ray.data.DataContext]) -> int:
    """How many times Ray Data has executed this dataset before (0 the first time), as a datasource's
    get_read_tasks sees it. Waits for: a public execution count or per-execution seed handed to
    Datasource.get_read_tasks (Ray's own file shuffling, FileShuffleConfig, reads this private counter too)."""
    return getattr(data_context, "_execution_idx", 0) if data_context is not None else 0


def session_logs_dir() -> str:
    """The log folder of the Ray session this process is connected to. Waits for: a session or log folder on the
    public ray.get_runtime_context() (Ray Train's own logging reads it the same private way)."""
    from ray._private.worker import _global_node

    return _global_node.get_logs_dir_path()
