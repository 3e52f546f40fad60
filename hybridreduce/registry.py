"""Read-only name → entry tables (methods, SSM kinds): a name registered twice is an error, never a silent
replacement (as in lm-eval's registry)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import TypeVar

T = TypeVar("T")


def frozen_registry(entries: Iterable[T], what: str) -> Mapping[str, T]:
    """``entry.name`` → entry, read-only.

    Raises:
        ValueError: two entries share a name (``what`` names the kind of entry in the message).
    """
    table: dict[str, T] = {}
    for entry in entries:
        if entry.name in table:
            raise ValueError(f"{what} {entry.name!r} is registered twice")
        table[entry.name] = entry
    return MappingProxyType(table)
