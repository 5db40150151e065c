"""What every part of the configuration shares: its base class and the error a user's mistake raises."""
from pydantic import BaseModel, ConfigDict


class ConfigError(ValueError):
    """A user mistake in the configuration: printed as a message, never as a traceback."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
