"""Every registered invariant on every tiny architecture: one test ``test_<invariant>[<arch>]`` per pair.

The tests are generated from :data:`hybridreduce.checks.INVARIANTS`, so ``pytest -k prune_reference`` runs that
invariant on every architecture, and a newly registered check is tested without touching this file. Each
architecture's tiny model is built, saved and loaded back once per module (:func:`subjects`), as ``verify``
does, and shared by the checks.
"""

from __future__ import annotations

import pytest

from hybridreduce.checks import INVARIANTS, Subject
from hybridreduce.tiny_models import TINY_CONFIGS

ARCHS = list(TINY_CONFIGS)


@pytest.fixture(scope="module")
def subjects(tmp_path_factory):
    """The :class:`Subject` of each tiny architecture, built on first use (read-only: checks must not modify it)."""
    made: dict[str, Subject] = {}

    def get(arch: str) -> Subject:
        if arch not in made:
            made[arch] = Subject.tiny(arch, tmp_path_factory.mktemp(f"checkpoint-{arch}"))
        return made[arch]

    return get


def _invariant_test(name: str):
    @pytest.mark.parametrize("arch", ARCHS)
    def test(arch, subjects):
        result = INVARIANTS[name].run(subjects(arch))
        print(result)
        assert (result.arch, result.check) == (arch, name)
        assert result.passed, f"{result.detail} (max_err {result.max_err})"

    test.__name__ = test.__qualname__ = f"test_{name}"
    test.__doc__ = INVARIANTS[name].doc
    return test


for _name in INVARIANTS:
    globals()[f"test_{_name}"] = _invariant_test(_name)
del _name
