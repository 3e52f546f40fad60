"""Reduction schedules: data, validated, loadable from YAML (DESIGN decision 6).

A schedule is two separate choices, each a frozen, validated dataclass:

- a :class:`Layout` says *how many* visual tokens each block carries: where the cuts are (``first_prune``,
  ``stages``) and what fraction each keeps (``shape``, ``ratios``, or a ``keep`` budget the solver meets);
  :meth:`Layout.resolve` turns it into a :class:`Plan` for a model of a given depth: the prune points (a prune
  point ``p`` means the tokens are dropped between block ``p - 1`` and block ``p``) and the fraction of the
  original visual tokens carried from each prune point on;
- a :class:`Selector` says *which* tokens a cut keeps: the blocks whose scores rank them (``score``), the
  query rows those scores come from (``query``), an exponential average over blocks (``ema``), and the pick
  rule (the top-k, a seeded random set, or an even stride).

A :class:`Schedule` is a method's name with one of each. Every method, ours and the baselines, is a registered
(layout, selector) pair (:data:`METHOD_SPECS`): what the method *is* (its definition: FastV is one cut scored by
the attention of the last token) and where its free settings start (its preset). A setting that contradicts the
definition raises; it is never overwritten. The presets live here, in the package, so an installed wheel has
them; ``configs/schedules/<method>.yaml`` writes each one out (a test keeps them equal).

In YAML and in ``Schedule(...)`` the settings stay flat (``keep``, ``stages``, ``score``, ...); each belongs to
one part, and ``schedule.layout`` / ``schedule.selector`` give the parts.

Budgets are stated as ``keep``: with ``budget="average"`` (default) it is the mean, over all blocks,
of the fraction of visual tokens a block carries — the quantity that prefill cost is linear in, so
methods with different stage layouts compare at equal cost. With ``budget="final"`` it is the
fraction carried by the last stage. The solver finds the stage ratios that meet the target; only the
rounding of ratios to whole tokens remains (:meth:`Plan.average_keep` reports the achieved value).
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from . import validate
from .errors import InputError
from .registry import frozen_registry
from .yamlio import located, read_yaml_section

SHAPES = ("geometric", "linear", "explicit")
BUDGETS = ("average", "final")
PLACEMENTS = ("spread", "pyramid", "none")
SCORE_SOURCES = ("unified", "attention", "none")
QUERIES = ("after_visual", "last", "all_text")
PICKS = ("topk", "random", "uniform")
COMBINES = ("drop", "merge")
MERGE_SCOPES = ("all", "frame", "window")

_KEEP = "the fraction of visual tokens kept"


def _error(name: str, text: str) -> InputError:
    """``InputError("schedule <name> <text>")`` about the setting ``name``."""
    exc = InputError(f"schedule {name} {text}")
    exc.field = name
    return exc


def _shown(value: Any) -> str:
    """``value`` as a message shows it, with its type where the type is the problem."""
    if isinstance(value, bool):
        return f"{value!r} (a bool, not a number)"
    if isinstance(value, str):
        if re.fullmatch(r"[-+]?\d+[eE][-+]?\d+", value.strip()):
            return f"{value!r} (a string: YAML reads an exponent without a dot, like 1e-1, as text; write 0.1)"
        try:
            float(value)
        except ValueError:
            return f"{value!r} (a string)"
        return f"{value!r} (a string, not a number: write it without quotes)"
    return repr(value)


def _fraction(value: Any, name: str, meaning: str) -> float:
    """``value`` as a float in (0, 1] (:func:`validate.number`: bool, strings and NaN are refused)."""
    try:
        return validate.number(value, name, 0, 1, low_open=True)
    except InputError:
        raise _error(name, f"must lie in (0, 1] ({meaning}), got {_shown(value)}") from None


def _one_of(allowed: tuple[str, ...], name: str):
    def check(value: Any) -> str:
        if not isinstance(value, str) or value not in allowed:
            shown = repr(value) if isinstance(value, str) else _shown(value)
            raise _error(name, f"{shown} is not one of {', '.join(allowed)}")
        return value

    return check


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _keep(value: Any) -> float | None:
    return None if value is None else _fraction(value, "keep", _KEEP)


def _first_prune(value: Any) -> int | float:
    if _is_int(value) and value >= 1:
        return int(value)
    if not _is_int(value) and isinstance(value, numbers.Real) and not isinstance(value, bool):
        if 0 < value < 1 or (float(value).is_integer() and value >= 1):
            return float(value)
    raise _error(
        "first_prune",
        f"must be a block index (an integer >= 1) or a fraction of the depth in (0, 1), got {_shown(value)}",
    )


def _stages(value: Any) -> int | tuple[int, ...]:
    if _is_int(value):
        if value < 1:
            raise _error("stages", f"must be at least 1 (the number of cuts), got {value!r}")
        return int(value)
    if isinstance(value, (list, tuple)) and value and all(_is_int(p) and p >= 1 for p in value):
        points = tuple(int(p) for p in value)
        if any(b <= a for a, b in zip(points, points[1:], strict=False)):
            raise _error("stages", f"as explicit prune points must be strictly increasing, got {list(points)}")
        return points
    raise _error(
        "stages",
        "must be a number of cuts (an integer >= 1) or a list of increasing block indices (each >= 1), "
        f"got {_shown(value)}",
    )


def _ratios(value: Any) -> tuple[float, ...] | None:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or not value:
        raise _error(
            "ratios", f"must be a list of keep fractions, one per stage (e.g. [0.5, 0.25]), got {_shown(value)}"
        )
    bad = [r for r in value if not (isinstance(r, numbers.Real) and not isinstance(r, bool) and 0 < r <= 1)]
    if bad:
        raise _error("ratios", f"must each lie in (0, 1] (the fraction kept from that stage on), got {list(value)}")
    ratios = tuple(float(r) for r in value)
    if any(b > a for a, b in zip(ratios, ratios[1:], strict=False)):
        raise _error("ratios", f"must be non-increasing (low-to-high pruning), got {list(ratios)}")
    return ratios


def _ema(value: Any) -> float | None:
    return None if value is None else _fraction(value, "ema", "the weight of the newest block")


def _flag(name: str):
    def check(value: Any) -> bool:
        if not isinstance(value, bool):
            raise _error(name, f"must be true or false, got {_shown(value)}")
        return value

    return check


def _merge_window(value: Any) -> int:
    return validate.integer(value, "schedule merge_window", 0, fix="the frames on each side a token may merge across")


def _seed(value: Any) -> int:
    return validate.integer(value, "schedule seed", 0, fix="the seed of the random method's keep sets, e.g. 0")


def _name(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise _error("name", f"must be a string (it labels results), got {_shown(value)}")
    return value


def _check_fields(obj: Any, checks: dict[str, Any]) -> None:
    """Replace each of ``obj``'s settings by its checked value; an error names its setting (``exc.field``), so
    that :meth:`Schedule.from_yaml` can add the file and line."""
    for name, check in checks.items():
        try:
            value = check(getattr(obj, name))
        except InputError as exc:
            exc.field = name
            raise
        object.__setattr__(obj, name, value)


@dataclass(frozen=True)
class Plan:
    """A layout resolved for a model of ``num_blocks`` blocks.

    Attributes:
        num_blocks: depth of the model.
        prune_points: increasing block indices; tokens are dropped right before each of them runs.
        ratios: fraction of the original visual tokens carried from each prune point on
            (non-increasing, in ``(0, 1]``).
    """

    num_blocks: int
    prune_points: tuple[int, ...]
    ratios: tuple[float, ...]

    def stage_of(self, block: int) -> int:
        """The stage ``block`` is in: ``0`` before the first cut, ``s`` from prune point ``s`` (1-based) on."""
        return sum(block >= p for p in self.prune_points)

    def keep_fraction(self, block: int) -> float:
        """Fraction of the original visual tokens that ``block`` carries (before rounding)."""
        stage = self.stage_of(block)
        return 1.0 if stage == 0 else self.ratios[stage - 1]

    def choosers(self, able: Sequence[int], ema: bool = False, what: str = "scoring block") -> list[tuple[int, ...]]:
        """For each cut, the blocks whose scores choose its keep set, in block order.

        Without ``ema``: the most recent block of ``able`` before the cut. With ``ema`` (``Schedule.ema``): every
        block of ``able`` since the previous cut, whose scores the engine averages in that order; the most recent
        one before the cut if none lies since the previous cut.

        Args:
            able: the blocks that can score (increasing), e.g. a model's attention and Mamba blocks.
            ema: whether the schedule averages scores between cuts.
            what: the name of an ``able`` block in the error message.

        Raises:
            InputError: a cut comes before every block of ``able``.
        """
        able = sorted(able)
        out, previous = [], 0
        for point in self.prune_points:
            before = [b for b in able if b < point]
            if not before:
                first = f"the first is block {able[0]}" if able else "the model has none"
                raise InputError(
                    f"the cut before block {point} has no {what} before it to score the tokens ({first}); "
                    f"move first_prune after block {able[0] if able else '?'} or use score: unified"
                )
            since = tuple(b for b in before if b >= previous)
            out.append(since if (ema and since) else (before[-1],))
            previous = point
        return out

    def stage_counts(self, n_visual: int) -> list[int]:
        """Visual tokens kept at each prune point: ``round(ratio · n_visual)``, at least one."""
        counts, previous = [], n_visual
        for r in self.ratios:
            previous = min(previous, max(1, round(r * n_visual)))
            counts.append(previous)
        return counts

    def block_counts(self, n_visual: int) -> list[int]:
        """Visual tokens each block carries, for ``n_visual`` visual tokens at the input."""
        counts = [n_visual, *self.stage_counts(n_visual)]
        return [counts[self.stage_of(block)] for block in range(self.num_blocks)]

    def average_keep(self, n_visual: int | None = None) -> float:
        """Mean fraction of visual tokens carried per block (exact ratios, or after rounding)."""
        if n_visual is None:
            return sum(self.keep_fraction(b) for b in range(self.num_blocks)) / self.num_blocks
        return sum(self.block_counts(n_visual)) / (self.num_blocks * n_visual)


# ---------------------------------------------------------------------------------------------------------------
# Layout: how many
# ---------------------------------------------------------------------------------------------------------------

#: Layout setting -> its check: the value in its plain Python type, or an InputError naming the setting.
_LAYOUT_CHECKS = {
    "keep": _keep,
    "budget": _one_of(BUDGETS, "budget"),
    "first_prune": _first_prune,
    "stages": _stages,
    "shape": _one_of(SHAPES, "shape"),
    "ratios": _ratios,
    "placement": _one_of(PLACEMENTS, "placement"),
}


@dataclass(frozen=True)
class Layout:
    """How many visual tokens each block carries: where the cuts are and what fraction each keeps.

    Attributes:
        keep: target budget in ``(0, 1]`` (see ``budget``); ``None`` with explicit ``ratios``.
        budget: ``"average"`` (mean fraction per block over the whole depth) or ``"final"`` (the fraction the
            last stage carries).
        first_prune: first prune point: a block index (int ≥ 1) or a fraction of the depth
            (float in ``(0, 1)``, rounded, at least 1).
        stages: number of cuts, or an explicit increasing list of prune points.
        shape: ``"geometric"`` (ratio ρ^s at stage s), ``"linear"`` (1 − s·δ) or ``"explicit"``.
        ratios: explicit per-stage keep fractions (``shape="explicit"``), non-increasing.
        placement: where a *number* of ``stages`` cuts go: ``"spread"`` (the first at ``first_prune``, the
            rest evenly over the remaining depth), ``"pyramid"`` (at ``s / (stages + 1)`` of the depth for
            ``s = 1 .. stages``, PyramidDrop's; ``first_prune`` is unused) or ``"none"`` (no cut; ``keep`` must
            be 1). A method fixes it (:data:`METHOD_SPECS`); it is not a YAML setting.
    """

    keep: float | None = 0.25
    budget: str = "average"
    first_prune: int | float = 0.1
    stages: int | tuple[int, ...] = 3
    shape: str = "geometric"
    ratios: tuple[float, ...] | None = None
    placement: str = "spread"

    def __post_init__(self) -> None:
        # Each setting on its own (its type, then its range), then the settings together.
        _check_fields(self, _LAYOUT_CHECKS)
        if self.shape == "explicit":
            if not self.ratios:
                raise _error("ratios", "are needed with shape='explicit': each stage's keep fraction, e.g. [0.5, 0.25]")
            if self.keep is not None and self.placement != "none":
                raise _error(
                    "keep",
                    f"{self.keep:g} with explicit ratios: give either explicit ratios or a keep target, not both "
                    "(set keep: null)",
                )
            n = self.stages if isinstance(self.stages, int) else len(self.stages)
            if n != len(self.ratios):
                raise _error("ratios", f"has {len(self.ratios)} entries for {n} stages: give one ratio per stage")
        elif self.ratios is not None:
            raise _error("ratios", f"are only used with shape='explicit' (shape is {self.shape!r}); drop them")
        elif self.keep is None:
            raise _error("keep", f"must lie in (0, 1] ({_KEEP}), got None; give a keep target, e.g. keep: 0.25")
        if self.placement == "none" and self.keep not in (None, 1.0):
            raise _error("keep", f"must be 1 with method 'none' (it keeps every token), got {self.keep!r}")

    def prune_points(self, num_blocks: int) -> tuple[int, ...]:
        """Prune points for a model of ``num_blocks`` blocks."""
        if num_blocks < 2:
            raise InputError(f"a model needs at least 2 blocks to prune between them, got {num_blocks}")
        if self.placement == "none":
            return ()
        if isinstance(self.stages, tuple):
            points = self.stages
        elif self.placement == "pyramid":
            points = tuple(
                sorted({max(1, round(num_blocks * f / (self.stages + 1))) for f in range(1, self.stages + 1)})
            )
        else:
            first = self._first_prune(num_blocks)
            span = num_blocks - first
            if self.stages > span:
                raise InputError(
                    f"{self.stages} stages do not fit between block {first} and the last block ({num_blocks - 1}); "
                    "use fewer stages or an earlier first_prune"
                )
            points = tuple(first + (s * span) // self.stages for s in range(self.stages))
        bad = [p for p in points if not 1 <= p < num_blocks]
        if bad:
            raise InputError(
                f"prune point(s) {bad} lie outside the model: a prune point is a block index in [1, {num_blocks - 1}] "
                f"for a model of {num_blocks} blocks"
            )
        return points

    def _first_prune(self, num_blocks: int) -> int:
        fp = self.first_prune
        if isinstance(fp, float) and not fp.is_integer():
            if not 0 < fp < 1:
                raise InputError(f"first_prune as a fraction of depth must lie in (0, 1), got {fp}")
            return max(1, round(fp * num_blocks))
        fp = int(fp)
        if not 1 <= fp < num_blocks:
            raise InputError(
                f"first_prune={fp} is past the depth: it must be a block index in [1, {num_blocks - 1}] for a model "
                f"of {num_blocks} blocks (or a fraction of the depth)"
            )
        return fp

    def resolve(self, num_blocks: int) -> Plan:
        """Solve the stage ratios for a model of ``num_blocks`` blocks (the budget solver)."""
        points = self.prune_points(num_blocks)
        if not points:
            return Plan(num_blocks, (), ())
        S = len(points)
        if self.shape == "explicit":
            return Plan(num_blocks, points, tuple(float(r) for r in self.ratios))
        keep = float(self.keep)
        if self.budget == "final":
            ratios = (
                [keep ** ((s + 1) / S) for s in range(S)]
                if self.shape == "geometric"
                else [1 - (s + 1) * (1 - keep) / S for s in range(S)]
            )
            return Plan(num_blocks, points, tuple(ratios))
        lengths = [b - a for a, b in zip(points, (*points[1:], num_blocks), strict=True)]
        head = points[0]  # blocks before the first cut carry everything

        def average(x: float) -> float:
            rs = self._ratios(x, S)
            return (head + sum(n * r for n, r in zip(lengths, rs, strict=True))) / num_blocks

        lo_x, hi_x = (0.0, 1.0) if self.shape == "geometric" else (1.0 / S, 0.0)
        floor = average(lo_x)
        if keep <= floor + 1e-9:
            raise InputError(
                f"keep={keep} (average over {num_blocks} blocks) cannot be met: the first prune is at block {head}, "
                f"so more than {floor:.3f} is carried on average. Prune earlier (first_prune), use more stages, or "
                "raise keep"
            )
        # average() is monotone in x between lo_x (smallest average) and hi_x (keep everything).
        a, b = lo_x, hi_x
        for _ in range(200):
            mid = (a + b) / 2
            if average(mid) < keep:
                a = mid
            else:
                b = mid
        return Plan(num_blocks, points, tuple(self._ratios(b, S)))

    def _ratios(self, x: float, S: int) -> list[float]:
        if self.shape == "geometric":  # x = ρ
            return [x ** (s + 1) for s in range(S)]
        return [max(0.0, 1 - (s + 1) * x) for s in range(S)]  # linear: x = δ


# ---------------------------------------------------------------------------------------------------------------
# Selector: which
# ---------------------------------------------------------------------------------------------------------------

_SELECTOR_CHECKS = {
    "score": _one_of(SCORE_SOURCES, "score"),
    "query": _one_of(QUERIES, "query"),
    "ema": _ema,
    "seed": _seed,
    "pick": _one_of(PICKS, "pick"),
}


@dataclass(frozen=True)
class Selector:
    """Which visual tokens a cut keeps: the score that ranks them and the rule that picks them.

    Attributes:
        score: which blocks' scores rank the tokens: ``"unified"`` (attention and Mamba), ``"attention"``
            (attention blocks only) or ``"none"`` (a pick that needs no score).
        query: query rows for scoring: ``"after_visual"``, ``"last"`` or ``"all_text"``.
        ema: if set, the ranking is an exponential average (this weight on the newest block) of the scores of
            the scoring blocks since the last cut; else the most recent scoring block's.
        seed: seed of the ``"random"`` pick.
        pick: ``"topk"`` (the highest-scored tokens), ``"random"`` (a seeded random set) or ``"uniform"`` (an
            even stride over the current tokens). A method fixes it (:data:`METHOD_SPECS`); it is not a YAML
            setting.
    """

    score: str = "unified"
    query: str = "after_visual"
    ema: float | None = None
    seed: int = 0
    pick: str = "topk"

    def __post_init__(self) -> None:
        _check_fields(self, _SELECTOR_CHECKS)
        if self.pick != "topk" and self.score != "none":
            raise _error(
                "score", f"{self.score!r} ranks nothing for the {self.pick} pick, which uses no score; set score: none"
            )


# ---------------------------------------------------------------------------------------------------------------
# Combine: what happens to the tokens a cut removes
# ---------------------------------------------------------------------------------------------------------------

_COMBINE_CHECKS = {
    "combine": _one_of(COMBINES, "combine"),
    "size_aware": _flag("size_aware"),
    "merge_scope": _one_of(MERGE_SCOPES, "merge_scope"),
    "merge_window": _merge_window,
}


@dataclass(frozen=True)
class Combine:
    """What a cut does with the visual tokens it removes (DESIGN decision 14).

    Attributes:
        combine: ``"drop"`` (they are gone) or ``"merge"`` (each is added into the most similar kept visual token
            — cosine of the hidden states entering the cut's block — as a size-weighted mean; the kept token's
            ``size``, the number of original tokens it stands for, grows by the removed token's).
        size_aware: with ``merge``, the blocks after the cut see the sizes: attention adds ``log(size_j)`` to the
            logits of key ``j`` (proportional attention), Mamba multiplies the token's step ``Δ_j`` by
            ``size_j``. Without merging every size is 1 and this changes nothing.
        merge_scope: which kept tokens a removed one may merge into: ``"all"``, ``"frame"`` (its own frame) or
            ``"window"`` (frames within ``merge_window`` of its own). ``frame`` and ``window`` need the frame of
            every visual token (``reduce(..., visual_frames=...)``, or the model's ``visual_frames`` method); a
            removed token with no kept token in its scope merges into the most similar one anywhere.
        merge_window: frames on each side, for ``merge_scope: window``.
    """

    combine: str = "drop"
    size_aware: bool = True
    merge_scope: str = "all"
    merge_window: int = 1

    def __post_init__(self) -> None:
        _check_fields(self, _COMBINE_CHECKS)

    @property
    def merges(self) -> bool:
        """Whether a cut merges what it removes."""
        return self.combine == "merge"


# ---------------------------------------------------------------------------------------------------------------
# Methods: registered (layout, selector) pairs
# ---------------------------------------------------------------------------------------------------------------

#: The flat settings of a schedule (YAML, ``Schedule(...)``), by the part they belong to, in the order of
#: :meth:`Schedule.to_dict`. ``placement`` and ``pick`` are not among them: the method fixes those.
LAYOUT_SETTINGS = ("keep", "budget", "first_prune", "stages", "shape", "ratios")
SELECTOR_SETTINGS = ("score", "query", "ema", "seed")
#: What a cut does with the tokens it removes (:class:`Combine`); no method fixes these.
COMBINE_SETTINGS = ("combine", "size_aware", "merge_scope", "merge_window")
SETTINGS = (*LAYOUT_SETTINGS, *SELECTOR_SETTINGS, *COMBINE_SETTINGS)
_SETTING_CHECKS = {**_LAYOUT_CHECKS, **_SELECTOR_CHECKS, **_COMBINE_CHECKS}


@dataclass(frozen=True, eq=False)  # its settings are read-only mappings: compared and hashed by identity
class MethodSpec:
    """A reduction method: a :class:`Layout` and a :class:`Selector`, each partly fixed by the method.

    Attributes:
        name: the method's name (``Schedule.method``, the YAML ``method:``).
        summary: one line on what it is.
        layout: the layout settings that define the method (``placement`` and any of
            :data:`LAYOUT_SETTINGS`); a schedule that contradicts one raises.
        selector: the selector settings that define the method (``pick`` and any of
            :data:`SELECTOR_SETTINGS`); a schedule that contradicts one raises.
        preset: where the method's free settings start (the user's settings may change these).
    """

    name: str
    summary: str
    layout: Mapping[str, Any] = field(default_factory=dict)
    selector: Mapping[str, Any] = field(default_factory=dict)
    preset: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", self.name):
            raise ValueError(f"a method name is lower-case letters, digits and _, got {self.name!r}")
        for part, allowed in (("layout", (*LAYOUT_SETTINGS, "placement")), ("selector", (*SELECTOR_SETTINGS, "pick"))):
            unknown = sorted(set(getattr(self, part)) - set(allowed))
            if unknown:
                raise ValueError(f"method {self.name}: {unknown} are not {part} settings; those are {list(allowed)}")
            object.__setattr__(self, part, MappingProxyType(dict(getattr(self, part))))
        fixed = set(self.definition)
        unknown = sorted(set(self.preset) - set(SETTINGS))
        if unknown or fixed & set(self.preset):
            raise ValueError(
                f"method {self.name}: a preset sets free settings only (of {list(SETTINGS)}); "
                f"{unknown or sorted(fixed & set(self.preset))} are not"
            )
        object.__setattr__(self, "preset", MappingProxyType(dict(self.preset)))

    @property
    def definition(self) -> dict[str, Any]:
        """The flat settings the method fixes, layout's then selector's (``placement`` and ``pick`` left out)."""
        return {k: v for k, v in {**self.layout, **self.selector}.items() if k in SETTINGS}

    def check(self, settings: Mapping[str, Any]) -> None:
        """Raise if one of ``settings`` contradicts the definition, naming it and the fix."""
        definition = self.definition
        clash = {k: v for k, v in settings.items() if k in definition and v != definition[k]}
        if clash:
            exc = InputError(
                f"{self.name} is defined by {definition}; {clash} contradicts it. For another layout or score "
                "source, use method: progressive with the settings you want (e.g. score: attention)"
            )
            exc.field = next(iter(clash))
            raise exc

    def values(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        """The flat settings of a schedule of this method, each checked on its own: the definition, else the
        user's ``settings`` (already :meth:`check`-ed), else the preset; a setting none of them gives is left out
        (the part's default)."""
        values = {**self.preset, **settings, **self.definition}  # a setting equal to the definition takes its type
        checked = {}
        for k in SETTINGS:  # every setting's own check before any check across settings, in this order
            if k in values:
                try:
                    checked[k] = _SETTING_CHECKS[k](values[k])
                except InputError as exc:
                    exc.field = k
                    raise
        return checked

    def parts(self, values: Mapping[str, Any]) -> tuple[Layout, Selector, Combine]:
        """The method's layout, selector and combine settings from its flat :meth:`values`."""
        layout = Layout(**{k: values[k] for k in LAYOUT_SETTINGS if k in values}, **_only(self.layout, "placement"))
        selector = Selector(**{k: values[k] for k in SELECTOR_SETTINGS if k in values}, **_only(self.selector, "pick"))
        combine = Combine(**{k: values[k] for k in COMBINE_SETTINGS if k in values})
        return layout, selector, combine


def _only(mapping: Mapping[str, Any], key: str) -> dict[str, Any]:
    return {key: mapping[key]} if key in mapping else {}


#: Every method, ours and the baselines, as a (layout, selector) pair. The one place presets live: in the package,
#: so a wheel install has them; configs/schedules/<method>.yaml writes each out (a test keeps them equal).
_TABLE = (
    MethodSpec(
        "progressive",
        "Ours, low-to-high: nothing dropped before first_prune, then `stages` cuts spread evenly over the remaining "
        "depth, each keeping less (geometric or linear decay, or explicit ratios); the top-k of the unified "
        "attention+Mamba score of the most recent scoring block.",
        layout={"placement": "spread"},
        selector={"pick": "topk"},
    ),
    MethodSpec(
        "fastv",
        "FastV: one cut before block first_prune (FastV's 'after layer K' is first_prune = K + 1), the top-k of "
        "the attention of the last token.",
        layout={"placement": "spread", "stages": 1, "shape": "geometric"},
        selector={"pick": "topk", "score": "attention", "query": "last"},
        preset={"first_prune": 3},  # FastV's K = 2: drop after the third block
    ),
    MethodSpec(
        "pyramiddrop",
        "PyramidDrop: cuts at 1/4, 1/2 and 3/4 of the depth, geometric ratios, the top-k of the attention of the "
        "last instruction token, attention blocks only.",
        layout={"placement": "pyramid", "shape": "geometric"},
        selector={"pick": "topk", "score": "attention", "query": "last"},
        # Its first quarter carries every token, so an average budget cannot go below 0.25; 0.4 leaves it room.
        preset={"stages": 3, "keep": 0.4},
    ),
    MethodSpec(
        "random",
        "Control: the progressive layout, a seeded random keep set at each cut.",
        layout={"placement": "spread"},
        selector={"pick": "random", "score": "none"},
    ),
    MethodSpec(
        "uniform",
        "Control: the progressive layout, an even stride over the current tokens at each cut.",
        layout={"placement": "spread"},
        selector={"pick": "uniform", "score": "none"},
    ),
    MethodSpec(
        "none",
        "No reduction (reference runs): keep must be 1.",
        layout={"placement": "none"},
        selector={"score": "none"},
        preset={"keep": 1.0},
    ),
)


#: Method name -> its :class:`MethodSpec` (read-only).
METHOD_SPECS: Mapping[str, MethodSpec] = frozen_registry(_TABLE, "method")
METHODS = tuple(METHOD_SPECS)


class _ByMethod:
    """The default of a schedule setting: the method's value (its definition, else its preset, else the
    default of :class:`Layout` / :class:`Selector`)."""

    def __repr__(self) -> str:
        return "<the method's>"


_BY_METHOD: Any = _ByMethod()


# ---------------------------------------------------------------------------------------------------------------
# Schedule: a method's (layout, selector) pair
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """A reduction method: its name, its :class:`Layout` (how many tokens) and its :class:`Selector` (which).

    The settings are flat, as in YAML; each belongs to one part (:data:`LAYOUT_SETTINGS`,
    :data:`SELECTOR_SETTINGS`; see :class:`Layout` and :class:`Selector` for their meaning), and after
    construction each attribute holds its checked value. A setting not given takes the method's value: its
    definition, else its preset, else the part's default (so ``Schedule(method="fastv") ==
    Schedule.preset("fastv")``). A setting that contradicts the method's definition raises.

    Attributes:
        method: one of :data:`METHODS`.
        keep, budget, first_prune, stages, shape, ratios: the layout's settings.
        score, query, ema, seed: the selector's settings.
        combine, size_aware, merge_scope, merge_window: what a cut does with what it removes (:class:`Combine`).
        name: a label for results (not compared).
    """

    method: str = "progressive"
    keep: float | None = _BY_METHOD
    budget: str = _BY_METHOD
    first_prune: int | float = _BY_METHOD
    stages: int | tuple[int, ...] = _BY_METHOD
    shape: str = _BY_METHOD
    ratios: tuple[float, ...] | None = _BY_METHOD
    score: str = _BY_METHOD
    query: str = _BY_METHOD
    ema: float | None = _BY_METHOD
    seed: int = _BY_METHOD
    combine: str = _BY_METHOD
    size_aware: bool = _BY_METHOD
    merge_scope: str = _BY_METHOD
    merge_window: int = _BY_METHOD
    name: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        try:
            spec = METHOD_SPECS[_one_of(METHODS, "method")(self.method)]
        except InputError as exc:
            exc.field = "method"
            raise
        given = {k: getattr(self, k) for k in SETTINGS if getattr(self, k) is not _BY_METHOD}
        spec.check(given)
        # Each setting on its own (its type, then its range), then the settings together; every error names its
        # field, so that Schedule.from_yaml can add the file and line.
        values = spec.values(given)
        try:
            name = _name(self.name)
        except InputError as exc:
            exc.field = "name"
            raise
        layout, selector, combine = spec.parts(values)
        if layout.placement != "none" and selector.pick == "topk" and selector.score == "none":
            raise _error(
                "score",
                f"'none' leaves the top-k of method {self.method} nothing to rank; choose score: unified or "
                "attention, or method: random or uniform",
            )
        for part, names in ((layout, LAYOUT_SETTINGS), (selector, SELECTOR_SETTINGS), (combine, COMBINE_SETTINGS)):
            for k in names:
                object.__setattr__(self, k, getattr(part, k))
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "_layout", layout)
        object.__setattr__(self, "_selector", selector)
        object.__setattr__(self, "_combine", combine)

    @property
    def layout(self) -> Layout:
        """How many visual tokens each block carries."""
        return self._layout

    @property
    def selector(self) -> Selector:
        """Which visual tokens each cut keeps."""
        return self._selector

    @property
    def combination(self) -> Combine:
        """What each cut does with the visual tokens it removes."""
        return self._combine

    @property
    def spec(self) -> MethodSpec:
        """The method's registered definition and preset."""
        return METHOD_SPECS[self.method]

    # -- construction ------------------------------------------------------------------------------
    @classmethod
    def preset(cls, method: str, **overrides: Any) -> Schedule:
        """The schedule of ``method``: its preset settings, then ``overrides``.

        Raises:
            InputError: an unknown method, or an override that contradicts the method's definition
                (``Schedule.preset("fastv", stages=2)``: FastV is one cut scored by attention; a two-stage
                attention-scored schedule is ``progressive`` with ``score="attention"``).
        """
        if not isinstance(method, str) or method not in METHOD_SPECS:
            shown = repr(method) if isinstance(method, str) else _shown(method)
            raise _error("method", f"{shown} is an unknown schedule; choose from {', '.join(METHODS)}")
        METHOD_SPECS[method].check(overrides)  # here too, so that the first clash named is the first one given
        return cls(method=method, **overrides)

    @classmethod
    def from_parts(
        cls, method: str, layout: Layout, selector: Selector, name: str | None = None, combine: Combine | None = None
    ) -> Schedule:
        """The schedule of ``method`` with this layout and selector (they must agree with its definition) and
        ``combine`` (default: drop)."""
        combine = Combine() if combine is None else combine
        if not isinstance(layout, Layout) or not isinstance(selector, Selector) or not isinstance(combine, Combine):
            raise InputError(
                "from_parts takes a Layout, a Selector and optionally a Combine, got "
                f"{type(layout).__name__}, {type(selector).__name__} and {type(combine).__name__}"
            )
        flat = (
            {k: getattr(layout, k) for k in LAYOUT_SETTINGS}
            | {k: getattr(selector, k) for k in SELECTOR_SETTINGS}
            | {k: getattr(combine, k) for k in COMBINE_SETTINGS}
        )
        schedule = cls.preset(method, **flat, name=name)
        for given, made, key in ((layout, schedule.layout, "placement"), (selector, schedule.selector, "pick")):
            if getattr(given, key) != getattr(made, key):
                exc = InputError(
                    f"{method} is defined by {key} {getattr(made, key)!r}; {key} {getattr(given, key)!r} "
                    f"contradicts it (the methods: {', '.join(METHODS)})"
                )
                exc.field = key
                raise exc
        return schedule

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Schedule:
        """A schedule from its settings (optionally under a ``schedule`` key); ``method`` picks the preset."""
        if isinstance(data, dict) and "schedule" in data:
            data = data["schedule"]
        if not isinstance(data, dict):
            raise InputError(f"a schedule's settings must be a mapping, got {_shown(data)}")
        data = dict(data)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known, key=str)
        if unknown:
            exc = InputError(f"unknown schedule settings {unknown}; known: {sorted(known)}")
            exc.field = unknown[0]
            raise exc
        method = data.pop("method", "progressive")
        return cls.preset(method, **data)

    @classmethod
    def from_yaml(cls, path: str | Path) -> Schedule:
        """A schedule file (settings at the top or under ``schedule:``); errors name the file and line.

        An empty file is refused (it would otherwise run the progressive preset under the file's name).
        """
        data = read_yaml_section(
            path, "schedule", "schedule file",
            empty="write at least its method, e.g. `method: progressive` (configs/schedules/ has one file per method)",
        )  # fmt: skip
        with located(path, data):
            schedule = cls.from_dict(data)
        return replace(schedule, name=schedule.name or Path(path).stem)

    @classmethod
    def load(cls, source: Schedule | str | Path | dict) -> Schedule:
        """A schedule from an instance, a dict, a YAML path, or a method name (its :meth:`preset`)."""
        if isinstance(source, Schedule):
            return source
        if isinstance(source, dict):
            return cls.from_dict(source)
        if not isinstance(source, (str, Path)):
            raise InputError(
                f"schedule must be a Schedule, a method name ({', '.join(METHODS)}; none keeps every token), a "
                f"mapping of settings or a YAML file, got {_shown(source)}"
            )
        path = Path(source)
        if path.suffix in (".yaml", ".yml"):
            return cls.from_yaml(path)
        if str(source) in METHODS:
            return replace(cls.preset(str(source)), name=str(source))
        raise InputError(f"unknown schedule {str(source)!r}: give a YAML file or one of {list(METHODS)}")

    def to_dict(self) -> dict[str, Any]:
        """The flat settings, as YAML writes them (``Schedule.from_dict(s.to_dict()) == s``)."""
        out = asdict(self)
        for key in ("stages", "ratios"):
            if isinstance(out[key], tuple):
                out[key] = list(out[key])
        return out

    # -- resolution (the layout's) ----------------------------------------------------------------------------
    def prune_points(self, num_blocks: int) -> tuple[int, ...]:
        """Prune points for a model of ``num_blocks`` blocks (:meth:`Layout.prune_points`)."""
        return self.layout.prune_points(num_blocks)

    def resolve(self, num_blocks: int) -> Plan:
        """Solve the stage ratios for a model of ``num_blocks`` blocks (:meth:`Layout.resolve`)."""
        return self.layout.resolve(num_blocks)
