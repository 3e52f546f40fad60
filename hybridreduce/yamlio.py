"""Reading the YAML files under ``configs/`` with errors that name the file, the line and the problem.

Every mapping :func:`read_yaml` returns is a :class:`Settings`: a dict that also remembers the line of each of its
keys in the file (``settings.lines["keep"] == 3``), taken from the marks PyYAML's parser puts on every node.
:func:`located` turns an :class:`~hybridreduce.errors.InputError` raised while such settings are checked into one
that starts with ``file:line:``, the line of the setting the error names in its ``field`` (the file alone when it
names none). A copy made with ``dict(settings)`` is a plain dict and forgets the lines; ``yaml.safe_dump`` writes a
:class:`Settings` as the plain mapping it is.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import InputError


class Settings(dict):
    """A YAML mapping; ``lines[key]`` is the 1-based line of ``key`` in its file."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lines: dict[Any, int] = {}


class DuplicateKey(InputError):
    """A YAML mapping states one key twice (PyYAML itself keeps the last one silently)."""


@lru_cache(maxsize=1)
def _loader():
    """PyYAML's safe loader, every mapping built as a :class:`Settings` with the lines of its keys."""
    import yaml

    class LineLoader(yaml.SafeLoader):
        pass

    def construct_settings(loader, node):
        settings = Settings()
        yield settings  # first, as PyYAML's own mapping constructor does, so that aliases may refer to it
        settings.update(loader.construct_mapping(node))
        # construct_mapping has built every key already; construct_object returns that same object.
        settings.lines = {}
        for key_node, _ in node.value:
            key = loader.construct_object(key_node)
            line = key_node.start_mark.line + 1
            if key in settings.lines:  # PyYAML keeps the last silently; a setting stated twice is ambiguous
                raise DuplicateKey(f"line {line}: {key!r} is set twice (first on line {settings.lines[key]}); "
                                   "keep one of the two")  # fmt: skip
            settings.lines[key] = line

    LineLoader.add_constructor("tag:yaml.org,2002:map", construct_settings)
    # Settings written back out (a config recorded beside a run) are plain mappings, for yaml.dump and safe_dump.
    for dumper in (yaml.Dumper, yaml.SafeDumper):
        yaml.add_representer(Settings, yaml.representer.SafeRepresenter.represent_dict, Dumper=dumper)
    return LineLoader


def read_yaml(path: str | Path, what: str, hint: str = "") -> Settings:
    """The top-level mapping of a YAML file (empty for an empty file).

    Args:
        path: the YAML file.
        what: a noun for error messages (``"training config"``).
        hint: appended to the message for a missing file (e.g. where the default lives).
    """
    import yaml

    path = Path(path)
    if path.is_dir():
        raise InputError(f"{what} {path} is a folder; give the YAML file")
    if not path.is_file():
        raise InputError(f"{what} {path} does not exist" + (f"; {hint}" if hint else ""))
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{what} {path} is not a text file (not UTF-8); give the YAML file") from None
    except OSError as exc:
        raise InputError(f"{what} {path} cannot be read ({exc.strerror}); check its permissions") from None
    try:
        data = yaml.load(text, Loader=_loader())
    except DuplicateKey as exc:
        raise InputError(f"{what} {path}:{str(exc).removeprefix('line ')}") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{what} {path} is not valid YAML: {exc}") from None
    except RecursionError:
        raise InputError(f"{what} {path} nests too deeply to be a config; write its settings flat") from None
    data = Settings() if data is None else data
    if not isinstance(data, dict):
        raise InputError(f"{what} {path} must hold a mapping of settings, got {type(data).__name__}")
    return data


def read_yaml_section(path: str | Path, section: str, what: str, empty: str | None = None) -> Settings:
    """The mapping under ``section`` in a YAML file, or the whole file when it has no such key.

    Args:
        path: the YAML file.
        section: top-level key that may wrap the settings (``scorer``, ``schedule``, ...).
        what: a noun for error messages (``"scorer config"``).
        empty: None: an empty file (or section) is an empty mapping, every setting at its default. Otherwise an
            empty one is refused, and this is the fix the message gives (``"write e.g. method: progressive"``).
    """
    data = read_yaml(path, what)
    if section in data:
        line = data.lines.get(section)
        data = Settings() if data[section] is None else data[section]
        if not isinstance(data, dict):
            raise InputError(
                f"{path}:{line}: {what} section {section!r} must hold a mapping of settings, got {type(data).__name__}"
            )
    if not data and empty is not None:
        raise InputError(f"{what} {path} holds no settings; {empty}")
    return data


@contextmanager
def located(path: str | Path, settings: Any) -> Iterator[None]:
    """Inside: an :class:`InputError` gets ``path:line:`` in front of its message (the line of its ``field`` in
    ``settings``, a :class:`Settings`; ``path:`` alone when the line is unknown)."""
    try:
        yield
    except InputError as exc:
        line = getattr(settings, "lines", {}).get(exc.field)
        where = f"{path}:{line}" if line else str(path)
        located_exc = type(exc)(f"{where}: {exc}")
        located_exc.field = exc.field
        raise located_exc from None
