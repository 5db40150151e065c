"""Where the project lives, and whether this is Ray's copy of it under `ray job submit`."""
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # pipelines/config/project.py
# under `ray job submit` the project is Ray's unpacked copy of the working directory, deleted after the job
IN_RAY_JOB_COPY = "runtime_resources" in PROJECT_ROOT.parts
