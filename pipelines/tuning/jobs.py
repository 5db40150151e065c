"""A sweep and a study as a notebook runs them (`python -m pipelines.sweep` and `pipelines.study` parse their flags
into these): typed settings in, a typed result out."""
from dataclasses import dataclass
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from pipelines.tuning.study import check_study_file
from pipelines.tuning.study import new_state as new_study_state
from pipelines.tuning.study import resumed_state as resumed_study_state
from pipelines.tuning.study_report import report
from pipelines.tuning.sweep import new_state, resumed_state, run_sweep, space_from_state


class SweepSettings(BaseModel):
    """A new sweep (`space`, a file of tune_spaces/) or the resume of one (`resume`: its name, or 'last')."""
    model_config = ConfigDict(extra="forbid")

    space: Optional[str] = None
    config: Optional[str] = Field(None, description="preset the trials start from (default: the space's `preset`)")
    overrides: list[str] = Field([], description="key=value on every trial, as pretrain's --set")
    num_samples: int = Field(4, ge=1, description="trials to sample (with grid axes: grid repeats)")
    search: Literal["random", "optuna"] = "random"
    scheduler: Literal["fifo", "asha"] = "fifo"
    grace_epochs: int = Field(1, ge=1, description="ASHA: epochs every trial gets")
    max_concurrent: Optional[int] = Field(None, ge=1, description="default: as many as the cluster fits")
    name: Optional[str] = None
    out: Optional[str] = Field(None, description="the best preset's file (default: <storage>/<name>/best.yaml)")
    resume: Optional[str] = None
    objective: Optional[str] = Field(None, description="what trials maximise instead of the space's objective, e.g. "
                                     "rankme on a dataset without labels")


@dataclass
class SweepResult:
    name: str
    parent_run_id: str
    tracking_uri: str
    rows: list[dict]  # each trial: its id, run name, status, sampled values, objective
    table: list[dict]  # the trials best first, as printed and logged (trials.md)
    best: Optional[dict]  # the best finished trial; None when none finished
    preset: Optional[str]  # the best trial's configuration as a preset file for pretrain


def sweep(settings: SweepSettings) -> SweepResult:
    """Runs (or resumes) a sweep; raises sweep.SweepInterrupted when Ctrl-C or a crash stops it (resumable)."""
    state = resumed_state(settings.resume, settings.overrides) if settings.resume else new_state(
        settings.space, settings.overrides, settings.config, settings.search, settings.scheduler,
        settings.num_samples, settings.grace_epochs, settings.max_concurrent, settings.name, settings.out,
        settings.objective)
    return SweepResult(**run_sweep(state, resume=bool(settings.resume)))


class StudySettings(BaseModel):
    """A new study (`study`, a file of tune_spaces/studies/) or the resume of one (`resume`: its name)."""
    model_config = ConfigDict(extra="forbid")

    study: Optional[str] = None
    budget: str = Field("cpu", description="one of the study's budgets: smoke (CI, minutes) or cpu (the documented run)")
    overrides: list[str] = Field([], description="key=value on every row")
    rows: Optional[list[str]] = Field(None, min_length=1, description="only these rows (default: all); checks and "
                                      "plot lines keep the ones on them")
    max_concurrent: Optional[int] = Field(None, ge=1)
    name: Optional[str] = None
    resume: Optional[str] = None


@dataclass
class StudyResult:
    sweep: SweepResult
    table: list[dict]  # a line per row (and per reference run): ours beside the paper's
    checks: list[dict]  # each check of the study file: its text and whether it passed
    markdown: str  # the table as printed and logged (study/study_table.md)
    title: str
    budget: str

    @property
    def passed(self) -> bool:
        return all(check["passed"] for check in self.checks)


def study(settings: StudySettings) -> StudyResult:
    """Runs (or resumes) a study: its rows as a sweep, then its table, checks and plot on the parent run."""
    if settings.resume:
        state = resumed_study_state(settings.resume, settings.overrides)
    elif settings.study:
        state = new_study_state(settings.study, settings.budget, settings.overrides,
                                ",".join(settings.rows) if settings.rows else None, settings.name,
                                settings.max_concurrent)
    else:
        raise ValueError("give a study file (tune_spaces/studies/*.yaml) or the name of one to resume")
    space = space_from_state(state)
    check_study_file(space)
    outcome = run_sweep(state, resume=bool(settings.resume))
    result = report(outcome, space, state)
    return StudyResult(SweepResult(**outcome), result["table"], result["checks"], result["markdown"],
                       space.study.get("title", ""), state["study"]["budget"])
