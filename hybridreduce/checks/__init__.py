"""The invariant checks of ``hybridreduce verify``, each written once and registered by name.

:mod:`.common` holds the result row, the target (device, dtype) and its tolerances, the :class:`Subject` a check
runs on and the registry :data:`INVARIANTS`; :mod:`.scoring` registers the scoring checks and :mod:`.reduction`
those of the engine, in that order (the order ``verify`` prints). :mod:`hybridreduce.verify` runs them.
"""

# Importing a module registers its checks; this order is the order `verify` runs and prints them.
# isort: off
from . import scoring  # noqa: F401
from . import reduction  # noqa: F401

# isort: on
from .common import (
    DTYPES,
    INVARIANTS,
    NEEDS,
    TARGET,
    TOLERANCES,
    CheckResult,
    Invariant,
    Subject,
    Target,
    invariant,
    load_language_model,
    on,
)

__all__ = [
    "DTYPES",
    "INVARIANTS",
    "NEEDS",
    "TARGET",
    "TOLERANCES",
    "CheckResult",
    "Invariant",
    "Subject",
    "Target",
    "invariant",
    "load_language_model",
    "on",
]
