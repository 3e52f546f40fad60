"""The settings of an analysis run (``configs/analysis/<name>.yaml``): :class:`AnalysisConfig` and its checks.

Every setting has its own check (:data:`_SETTING_CHECKS`), so that an error names the setting and, from a YAML
file, its file and line. :func:`toy_benchmark` resolves a toy config's checkpoint and benchmark variant (from the
checkpoint's ``train_config.yaml``: no weights load).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from hybridreduce import Schedule
from hybridreduce.errors import InputError
from hybridreduce.scoring.config import MAMBA_MODES
from hybridreduce.yamlio import located, read_yaml_section

from .sparsity import check_fraction

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "analysis"

__all__ = ["CONFIG_DIR", "AnalysisConfig", "checkpoint_dir", "toy_benchmark"]


def _fractions(value: Any, name: str) -> tuple[float, ...]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
        raise InputError(f"analysis {name} must be a non-empty list of fractions in (0, 1], got {value!r}")
    for f in value:
        check_fraction(f, f"each entry of {name}")
    return tuple(float(f) for f in value)


def _int_at_least(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"analysis {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _text(name: str, allowed: tuple[str, ...] | None = None):
    """The check of a setting that is a non-empty string (one of ``allowed`` when given)."""

    def check(value: Any) -> str:
        if not isinstance(value, str) or not value or (allowed is not None and value not in allowed):
            want = f"one of {', '.join(allowed)}" if allowed else "a non-empty string"
            raise InputError(f"analysis {name} must be {want}, got {value!r}")
        return value

    return check


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise InputError(f"analysis kendall must be true or false, got {value!r}")
    return value


def _fraction(name: str, optional: bool = False):
    def check(value: Any) -> float | None:
        if value is None and optional:
            return None
        check_fraction(value, f"analysis {name}")
        return float(value)

    return check


def _scorers(value: Any) -> tuple[str, ...]:
    scorers = [value] if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else None
    if not scorers or any(s not in MAMBA_MODES for s in scorers) or len(set(scorers)) != len(scorers):
        raise InputError(f"analysis scorers must list distinct modes from {MAMBA_MODES}, got {value!r}")
    return tuple(scorers)


def _schedule(value: Any) -> str | dict | None:
    """A schedule the run can load (checked now, so that a bad one fails before the model loads); kept as given."""
    if value is not None:
        Schedule.load(value)
    return value


def _overlay_blocks(value: Any) -> tuple[int, ...] | None:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)):
        raise InputError(f"analysis overlay_blocks must be a list of block indices (or null), got {value!r}")
    return tuple(_int_at_least(b, "overlay_blocks entries", 0) for b in value)


def _prompt(prompt: Any) -> dict[str, int]:
    known = {"prefix": 4, "visual": 64, "question": 8}
    if not isinstance(prompt, dict) or set(prompt) - set(known):
        raise InputError(f"analysis prompt must be a mapping with keys {sorted(known)}, got {prompt!r}")
    out = known | prompt
    minimum = {"prefix": 0, "visual": 1, "question": 1}
    return {k: _int_at_least(v, f"prompt.{k}", minimum[k]) for k, v in out.items()}


#: The ``diagnostics`` section's settings and their defaults (:func:`analysis.sections.diagnostics_section`).
DIAGNOSTICS_DEFAULTS = {"videos": 32, "questions": 4, "keep": 0.25}


def _diagnostics(value: Any) -> dict[str, Any] | None:
    """None (off), or the settings of the optional ``diagnostics`` section with their defaults filled in."""
    if value is None or value is False:
        return None
    if value is True:
        value = {}
    if not isinstance(value, dict) or set(value) - set(DIAGNOSTICS_DEFAULTS):
        raise InputError(
            f"analysis diagnostics must be null, true or a mapping with keys {sorted(DIAGNOSTICS_DEFAULTS)} "
            f"(e.g. {DIAGNOSTICS_DEFAULTS}), got {value!r}"
        )
    out = DIAGNOSTICS_DEFAULTS | value
    check_fraction(out["keep"], "analysis diagnostics.keep")
    return {
        "videos": _int_at_least(out["videos"], "diagnostics.videos"),
        "questions": _int_at_least(out["questions"], "diagnostics.questions", 2),
        "keep": float(out["keep"]),
    }


#: Setting -> its check (the value in its plain type, or an InputError); ``model`` and ``variant`` are checked apart.
_SETTING_CHECKS = {
    "name": _text("name"),
    "samples": lambda v: _int_at_least(v, "samples"),
    "batch_size": lambda v: _int_at_least(v, "batch_size"),
    "split": _text("split", ("train", "val", "test")),
    "scorers": _scorers,
    "topk": lambda v: _fractions(v, "topk"),
    "mass_p": lambda v: _fractions(v, "mass_p"),
    "kendall": _flag,
    "schedule": _schedule,
    "keep": _fraction("keep", optional=True),
    "query": _text("query", ("after_visual", "last", "all_text")),
    "examples": lambda v: _int_at_least(v, "examples", 0),
    "overlay_blocks": _overlay_blocks,
    "overlay_keep": _fraction("overlay_keep"),
    "prompt": _prompt,
    "seed": lambda v: _int_at_least(v, "seed", 0),
    "device": _text("device"),
    "diagnostics": _diagnostics,
}


@contextmanager
def _setting(name: str) -> Iterator[None]:
    """Inside: an InputError is about the setting ``name`` (its ``field``: from_yaml adds the file and line)."""
    try:
        yield
    except InputError as exc:
        exc.field = name
        raise


def _parse_model(value: Any) -> tuple[str, str]:
    """``(source, target)``: ``("toy", "")``, ``("checkpoint", DIR)`` or ``("tiny", ARCH)``."""
    from hybridreduce.tiny_models import TINY_CONFIGS

    usage = "model must be `toy`, `{checkpoint: DIR}` (a train-toy output directory) or `{tiny: ARCH}`"
    if value == "toy":
        return "toy", ""
    if not isinstance(value, dict) or len(value) != 1:
        raise InputError(f"{usage}; got {value!r}")
    ((key, target),) = value.items()
    if key == "checkpoint" and isinstance(target, str) and target:
        return "checkpoint", target
    if key == "tiny":
        if not isinstance(target, str) or target not in TINY_CONFIGS:
            raise InputError(f"no tiny architecture {target!r}; choose from {', '.join(TINY_CONFIGS)}")
        return "tiny", str(target)
    raise InputError(f"{usage}; got {value!r}")


@dataclass
class AnalysisConfig:
    """One analysis run (fields as in ``configs/analysis/*.yaml``).

    Attributes:
        name: run name (default: the YAML file's stem).
        model: ``"toy"`` (the shipped checkpoint), ``{"checkpoint": DIR}`` (a train-toy output directory,
            relative to the working directory) or ``{"tiny": ARCH}`` (a tiny random model of
            :mod:`hybridreduce.tiny_models`, scored on random prompts; no ground truth).
        samples: number of samples (toy: the first ``samples`` items of ``split``; tiny: random prompts).
        batch_size: samples per forward.
        split: toy dataset split (``train``, ``val`` or ``test``).
        variant: toy only: the benchmark variant (``static``, ``clutter``) of a checkpoint trained on several;
            None: the checkpoint's first variant.
        scorers: Mamba scorer modes to collect with, each once (``decay_free``, ``exact``).
        topk: token shares for relevance recall@k, top-k mass, and stability IoU / survival recall.
        mass_p: mass shares ``p`` of the sparsity metric ``k@p``.
        kendall: compute Kendall τ-b (``O(L² b V²)``; switch off for long videos).
        schedule: schedule method name (its preset), YAML path or mapping whose per-block keep
            ratios drive survival recall and the schedule plot; None for neither.
        keep: override of the schedule's keep target (None: the schedule's own).
        query: query rows of the scorers (``after_visual``, ``last``, ``all_text``).
        examples: toy samples whose per-block scores go into metrics.json for the overlay plots.
        overlay_blocks: blocks drawn in the overlays (default: the last attention and the last Mamba block).
        overlay_keep: share of tokens highlighted as kept in the overlays.
        prompt: tiny models only: ``{"prefix", "visual", "question"}`` token counts of the random prompts.
        seed: tiny models' weights and prompts (the toy samples are fixed by the checkpoint's data config).
        device: torch device of the forwards.
        diagnostics: the optional section of :mod:`analysis.diagnostics` (None: off; ``true``: the defaults):
            ``videos`` videos each asked ``questions`` questions (query specificity, Mamba step correlation) and
            the oracle keep sets' ``keep`` (share bias of the asked colour; toy models only).
    Derived: ``source`` and ``target`` (see :func:`_parse_model`).
    """

    name: str = "analysis"
    model: str | dict = "toy"
    samples: int = 256
    batch_size: int = 32
    split: str = "test"
    variant: str | None = None
    scorers: tuple[str, ...] = ("decay_free", "exact")
    topk: tuple[float, ...] = (0.05, 0.1, 0.25)
    mass_p: tuple[float, ...] = (0.5, 0.8, 0.9)
    kendall: bool = True
    schedule: str | dict | None = "progressive"
    keep: float | None = 0.25
    query: str = "after_visual"
    examples: int = 4
    overlay_blocks: tuple[int, ...] | None = None
    overlay_keep: float = 0.1
    prompt: dict = field(default_factory=lambda: {"prefix": 4, "visual": 64, "question": 8})
    seed: int = 0
    device: str = "cpu"
    diagnostics: dict | None = None
    source: str = field(init=False)
    target: str = field(init=False)

    def __post_init__(self) -> None:
        # Each setting on its own; an error names it (its field), so that from_yaml can add the file and line.
        with _setting("model"):
            self.source, self.target = _parse_model(self.model)
        for name, check in _SETTING_CHECKS.items():
            with _setting(name):
                setattr(self, name, check(getattr(self, name)))
        with _setting("variant"):
            self._check_variant()

    def _check_variant(self) -> None:
        from hybridreduce.toy import VARIANTS

        if self.variant is None:
            return
        if self.source == "tiny":
            raise InputError(f"analysis variant {self.variant!r} is a toy benchmark setting; a tiny model has none")
        if self.variant not in VARIANTS:
            raise InputError(f"analysis variant must be one of {VARIANTS} (or null), got {self.variant!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any], name: str | None = None) -> AnalysisConfig:
        if not isinstance(data, dict):
            raise InputError(f"analysis settings must be a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls) if f.init}
        unknown = sorted(set(data) - known, key=str)
        if unknown:
            exc = InputError(f"unknown analysis settings {unknown}; known: {sorted(known)}")
            exc.field = unknown[0]
            raise exc
        data = dict(data)
        if name is not None:
            data.setdefault("name", name)
        return cls(**data)

    @classmethod
    def from_yaml(cls, path: str | Path) -> AnalysisConfig:
        """Read ``path`` (or ``configs/analysis/<path>.yaml`` for a bare name); errors name the file and line.

        An empty file (or ``analysis:`` section) is refused: it would run every default, the toy model included.
        """
        path = Path(path)
        if not path.suffix and not path.exists() and (CONFIG_DIR / f"{path}.yaml").is_file():
            path = CONFIG_DIR / f"{path}.yaml"
        data = read_yaml_section(
            path, "analysis", "analysis config",
            empty="write at least its model and samples (e.g. `model: toy`, `samples: 64`); configs/analysis/ has "
            "examples",
        )  # fmt: skip
        with located(path, data):
            return cls.from_dict(data, name=path.stem)

    def to_dict(self) -> dict[str, Any]:
        """The settings (init fields only, so that :meth:`from_dict` reads them back), tuples as lists."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.init}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


# The toy benchmark of a config --------------------------------------------------------------------
def checkpoint_dir(config: AnalysisConfig) -> Path:
    """The train-toy output directory a toy config scores (the shipped checkpoint for ``model: toy``)."""
    from hybridreduce.toy.demo import CHECKPOINT

    return Path(config.target) if config.source == "checkpoint" else CHECKPOINT


def toy_benchmark(config: AnalysisConfig, spec: Any | None = None) -> tuple[Any, Any, str]:
    """``(data, vocab, variant)`` of a toy config: the benchmark config (``ToyConfig``) of the variant it asks for
    (``config.variant``, or the checkpoint's first one), the vocabulary of every variant the checkpoint was trained
    on, and the variant's name.

    Args:
        config: a config whose ``source`` is ``toy`` or ``checkpoint``.
        spec: the checkpoint's training spec (``ToySpec``) when already read; None reads it from the checkpoint's
            ``train_config.yaml`` (the weights are not loaded).

    Raises:
        InputError: no training config in the checkpoint, or a variant it was not trained on.
    """
    path = checkpoint_dir(config)
    if spec is None:
        from hybridreduce.toy.train_config import spec_from_dict
        from hybridreduce.yamlio import read_yaml

        file = path / "train_config.yaml"
        hint = "an analysis run reads its toy benchmark there; point `model: {checkpoint: DIR}` at a train-toy output"
        spec = spec_from_dict(read_yaml(file, "training config", hint), str(file))
    variants = {c.variant: c for c in spec.configs}
    variant = config.variant or spec.configs[0].variant
    if variant not in variants:
        raise InputError(f"{path} was not trained on the benchmark variant {variant!r}; it knows {sorted(variants)}")
    return variants[variant], spec.vocab, variant
