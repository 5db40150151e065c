"""Typed settings from a command's flags: a value pydantic refuses is named by the flag a person typed."""
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from pipelines.config.section import ConfigError

Settings = TypeVar("Settings", bound=BaseModel)


def settings_from_flags(model: type[Settings], values: dict, flags: dict[str, str]) -> Settings:
    """`model(**values)`; its first error as a ConfigError naming the flag (`--field-name`, or `flags[field]`;
    `flags[""]`: the flags a check of the whole settings is about)."""
    try:
        return model(**values)
    except ValidationError as error:
        first = error.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else ""
        flag = flags.get(field, "--" + field.replace("_", "-"))
        raise ConfigError(f"{flag}: {first['msg'].removeprefix('Value error, ')}") from None
