"""Where files live: local folders or object storage (s3://, gs://, ...), through one pyarrow filesystem.

Object storage is configured the way its own tools are: for S3, `AWS_ENDPOINT_URL` (a non-AWS server),
`AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` (or an instance role) and `AWS_DEFAULT_REGION`; MLflow's
artifact client also reads `MLFLOW_S3_ENDPOINT_URL`."""
from typing import Optional

import pyarrow as pa
import pyarrow.fs as pafs


class DatasetError(ValueError):
    """A dataset or run that is missing, empty or unusable: a user mistake, printed as a message."""


def filesystem(root: str) -> tuple[pafs.FileSystem, str]:
    try:
        return pafs.FileSystem.from_uri(root)
    except (pa.ArrowInvalid, ValueError):
        return pafs.LocalFileSystem(), root


def write_text(root: str, name: str, text: str) -> None:
    fs, base = filesystem(root)
    fs.create_dir(base, recursive=True)
    with fs.open_output_stream(f"{base}/{name}") as stream:
        stream.write(text.encode())


def file_exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type == pafs.FileType.File


def newest_folder_with(root: str, file_name: str) -> Optional[str]:
    """The name of the folder directly under `root` whose `file_name` changed last (None if none has it)."""
    fs, base = filesystem(root)
    folders = [info.base_name for info in fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
               if info.type == pafs.FileType.Directory]
    found = [(info.mtime, folder) for folder, info in
             zip(folders, fs.get_file_info([f"{base}/{folder}/{file_name}" for folder in folders]))
             if info.type == pafs.FileType.File]
    return max(found)[1] if found else None


def checkpoint_folders(run_folder: str) -> list[str]:
    """The `checkpoint_*` folders under a run's folder (a path or URI), oldest first."""
    fs, base = filesystem(run_folder)
    names = sorted(info.base_name for info in fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
                   if info.type == pafs.FileType.Directory and info.base_name.startswith("checkpoint_"))
    return [f"{run_folder.rstrip('/')}/{name}" for name in names]


def latest_checkpoint(run_folder: str) -> Optional[str]:
    """The newest `checkpoint_*` folder Ray Train wrote under a run's folder (a path or URI), or None."""
    folders = checkpoint_folders(run_folder)
    return folders[-1] if folders else None


STORED_MARK = ".stored"


def store_checkpoint(run_folder: str, folder: str) -> str:
    """Copies a checkpoint folder into the run's folder under the name Ray Train gives one (`checkpoint_<time>`,
    so `latest_checkpoint` finds it among Train's), marks it whole (`STORED_MARK`), then removes the run's older
    ones; where it now is."""
    import datetime

    fs, base = filesystem(run_folder)
    name = f"checkpoint_{datetime.datetime.now().strftime('%Y-%m-%d_%H-%M-%S.%f')}"
    fs.create_dir(f"{base}/{name}", recursive=True)
    pafs.copy_files(folder, f"{base}/{name}", source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    with fs.open_output_stream(f"{base}/{name}/{STORED_MARK}"):  # written last: the copy is whole
        pass
    stored = f"{run_folder.rstrip('/')}/{name}"
    for older in checkpoint_folders(run_folder):
        if older < stored:
            remove_folder(older)
    return stored


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    with fs.open_input_stream(path) as stream:
        return stream.read()


def remove_folder(uri: str) -> None:
    """Removes a folder (or prefix) and all it holds; nothing where there is none."""
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_dir(path)
