"""Reading the YAML files under ``configs/`` with errors that name the file and the problem."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import InputError


def read_yaml(path: str | Path, what: str, hint: str = "") -> dict[str, Any]:
    """The top-level mapping of a YAML file (``{}`` for an empty file).

    Args:
        path: the YAML file.
        what: a noun for error messages (``"training config"``).
        hint: appended to the message for a missing file (e.g. where the default lives).
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} {path} does not exist" + (f"; {hint}" if hint else ""))
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise InputError(f"{what} {path} is not valid YAML: {exc}") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise InputError(f"{what} {path} must hold a mapping of settings, got {type(data).__name__}")
    return data


def read_yaml_section(path: str | Path, section: str, what: str) -> dict[str, Any]:
    """The mapping under ``section`` in a YAML file, or the whole file when it has no such key.

    Args:
        path: the YAML file.
        section: top-level key that may wrap the settings (``scorer``, ``schedule``, ...).
        what: a noun for error messages (``"scorer config"``).
    """
    data = read_yaml(path, what)
    if section in data:
        data = data[section] or {}
    if not isinstance(data, dict):
        raise InputError(f"{what} {path} must hold a mapping of settings, got {type(data).__name__}")
    return data
