"""The pretraining's training: a TorchTrainer (workers, storage, the data stream) or, for a run of one worker, the loop
in this process; and the backbone as rank 0 initialises it (the random-init baseline)."""
import tempfile
from dataclasses import asdict
from pathlib import Path

from pipelines.config.schema import Config


def random_init_backbone(config: Config, info, spe: int, teacher=None) -> str:
    """The backbone as rank 0 initialises it (same seed), exported to a temporary folder for the baseline
    (`teacher`: a distillation's, loaded once by the driver's check)."""
    from pipelines.training.loop import export_backbone, seed_everything
    from pipelines.training.methods import build_method

    seed_everything(config.train.seed)
    folder = tempfile.mkdtemp(prefix="random_init_")
    method = build_method(config, info.channels, spe, (info.mean, info.std), teacher)
    export_backbone(Path(folder), method.backbone, config, info, 0, 0)
    return folder


def fit(config: Config, info, spe: int, run_name: str, run_id: str, uri: str, trial: bool = False,
        progress: bool = True):
    """Trains the run: in this process where it can (`checks.trains_here`: one worker, a sweep trial or a one-machine
    Ray; pipelines/training/session.py), else in a TorchTrainer of `train.num_workers` workers; a Tune trial's
    (`trial`) reports each epoch to Tune."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig

    from pipelines.data.stream import ingest_config, training_dataset
    from pipelines.training import driver as train_driver
    from pipelines.training.checks import trains_here, uses_gpu
    from pipelines.training.worker import stream_options, train_worker

    use_gpu = uses_gpu(config)
    stream = stream_options(config.data.batch_size, config.data.shuffle_buffer, config.data.prefetch_batches, use_gpu)
    run_folder = f"{config.train.storage_path.rstrip('/')}/{run_name}"
    loop_config = {"config": config.model_dump(mode="json"), "dataset": asdict(info), "steps_per_epoch": spe,
                   "mlflow_run_id": run_id, "tracking_uri": uri, "stream": stream, "run_folder": run_folder}
    if trains_here(config, trial):
        # actors made in this process that Ray may restart put an error line on its console (their constructor's
        # arguments are in the object store); a run here retries nothing (train.max_failures=0), Tune retries a trial
        return fit_here(config, info, loop_config, training_dataset(config, info, restarts=False), use_gpu, trial,
                        progress)
    callbacks = []
    if trial:
        from ray.tune.integration.ray_train import TuneReportCallback

        callbacks.append(TuneReportCallback())
    return train_driver.fit(
        train_worker, loop_config, progress,
        scaling_config=ScalingConfig(num_workers=config.train.num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": config.train.cpus_per_worker},
                                     placement_strategy=config.train.placement_strategy),
        run_config=RunConfig(name=run_name, storage_path=config.train.storage_path,
                             checkpoint_config=CheckpointConfig(num_to_keep=1),
                             failure_config=FailureConfig(max_failures=config.train.max_failures),
                             callbacks=callbacks),
        datasets={"train": training_dataset(config, info)},
        dataset_config=ingest_config(config, info),
    )


def fit_here(config: Config, info, loop_config: dict, dataset, use_gpu: bool, trial: bool, progress: bool):
    """The loop in this process, on the dataset's stream as Train would give its one worker, under the progress
    line (a driver's)."""
    from pipelines.data.stream import ingest_options
    from pipelines.tracking.progress import BoardHere, progress_line
    from pipelines.training.loop import train_loop
    from pipelines.training.session import ProcessResult, ProcessSession
    from pipelines.training.worker import started_stream

    dataset.set_name("train")
    dataset.context.execution_options = ingest_options(config, info)
    dataset.context.enable_progress_bars = False  # the run's own progress line, or a trial's log
    session = ProcessSession(loop_config["run_folder"], use_gpu, trial)
    board = BoardHere() if progress and not trial else None
    with progress_line(board):
        train_loop({**loop_config, "progress_board": board}, started_stream(dataset, **loop_config["stream"]), session)
    return ProcessResult(session.metrics, session.checkpoint)
