"""``hybridreduce verify``: the invariants of DESIGN.md, run on tiny models or a checkpoint.

Every check registered in :data:`hybridreduce.checks.INVARIANTS` runs, in the registry's order, on a
:class:`~hybridreduce.checks.Subject`; each returns one :class:`CheckResult` row
``{"arch", "check", "passed", "max_err"}`` (plus a human-readable ``detail``). A check whose needs the subject
lacks does not run: ``roundtrip`` needs the freshly built tiny model, so a checkpoint gets every check but it.
The checks themselves live in :mod:`hybridreduce.checks` (``scoring``, then ``reduction``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from . import validate
from .adapters import AdaptedModel, get_adapter
from .checks import DTYPES, INVARIANTS, CheckResult, Subject, load_language_model, on
from .errors import HybridReduceError, InputError
from .tiny_models import TINY_CONFIGS

__all__ = ["DTYPES", "CheckResult", "available_archs", "on", "run_checks", "verify_arch", "verify_model"]


def run_checks(subject: Subject) -> list[CheckResult]:
    """Every registered check that applies to ``subject``, in registry order; one ``error`` row instead when a
    check raises a :class:`~hybridreduce.errors.HybridReduceError`."""
    return _guarded(subject.arch, lambda: [inv.run(subject) for inv in INVARIANTS.values() if inv.applies(subject)])


def verify_arch(arch: str, device=None, dtype: torch.dtype | str | None = None) -> list[CheckResult]:
    """All checks on the tiny random model of ``arch``, on ``device`` in ``dtype`` (default cpu, float32).

    The save/load round trip runs on the CPU in float32; the other checks run on a copy of the model it loaded,
    moved to the target (:func:`on`).
    """
    with tempfile.TemporaryDirectory(prefix=f"hybridreduce-{arch}-") as tmp:
        return run_checks(Subject.tiny(arch, Path(tmp), device, dtype))


def verify_model(path: str | Path) -> list[CheckResult]:
    """All checks on a checkpoint directory: its language model (a VLM is unwrapped), synthetic prompt."""
    # A directory, a config.json that is a JSON object, weights: each refused with one line before transformers runs.
    path = validate.checkpoint_dir(path, "model (--model)")
    from safetensors import SafetensorError

    try:
        model = load_language_model(path)
    except HybridReduceError:
        raise
    except (OSError, ValueError, KeyError, SafetensorError) as exc:  # a config or weights transformers cannot read
        import transformers

        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(
            f"model (--model) {str(path)!r}: transformers {transformers.__version__} cannot load it ({first}); check "
            "config.json's model_type and the weight files, or save the model again with save_pretrained"
        ) from None
    adapted: AdaptedModel = get_adapter(model)
    return run_checks(Subject.checkpoint(adapted.model_type, model, path))


def _guarded(arch: str, fn) -> list[CheckResult]:
    try:
        return fn()
    except HybridReduceError as exc:
        return [CheckResult(arch, "error", False, None, f"{type(exc).__name__}: {exc}")]


def available_archs() -> list[str]:
    return list(TINY_CONFIGS)
