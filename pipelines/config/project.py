"""Where the project lives, and whether this is Ray's copy of it under `ray job submit`."""
import os
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # pipelines/config/project.py
# under `ray job submit` the project is Ray's unpacked copy of the working directory, deleted after the job
IN_RAY_JOB_COPY = "runtime_resources" in PROJECT_ROOT.parts


def absolute_if_local(path: str) -> str:
    """A local path made absolute (from the current folder, as a notebook or a shell means it): Ray's workers and
    Train's storage run elsewhere. URIs (s3://, file://) as they are."""
    return path if "://" in path else os.path.abspath(os.path.expanduser(path))


LocalOrURI = Annotated[str, AfterValidator(absolute_if_local)]  # a setting naming a folder or a URI
