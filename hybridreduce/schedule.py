"""Reduction schedules: data, validated, loadable from YAML (DESIGN decision 6).

A :class:`Schedule` says *how many* visual tokens each block carries; :meth:`Schedule.resolve`
turns it into a :class:`Plan` for a model of a given depth: the prune points (a prune point ``p``
means the tokens are dropped between block ``p - 1`` and block ``p``) and the fraction of the
original visual tokens carried from each prune point on.

Budgets are stated as ``keep``: with ``budget="average"`` (default) it is the mean, over all blocks,
of the fraction of visual tokens a block carries — the quantity that prefill cost is linear in, so
methods with different stage layouts compare at equal cost. With ``budget="final"`` it is the
fraction carried by the last stage. The solver finds the stage ratios that meet the target; only the
rounding of ratios to whole tokens remains (:meth:`Plan.average_keep` reports the achieved value).

Methods:

``progressive``  low-to-high (ours): nothing dropped before ``first_prune``, then ``stages`` cuts
                 spread evenly over the remaining depth, each keeping less (geometric or linear
                 decay, or explicit ``ratios``); keep sets chosen from the unified attention+Mamba
                 score of the most recent scoring block.
``fastv``        one cut before block ``first_prune`` (FastV's "after layer K" is ``first_prune =
                 K + 1``), scored by the attention of the last token.
``pyramiddrop``  cuts at 1/4, 1/2 and 3/4 of the depth, geometric ratios, scored by the attention
                 of the last instruction token, attention blocks only.
``random``       the ``progressive`` stage layout, a seeded random keep set at each cut.
``uniform``      the ``progressive`` stage layout, an even stride over the current tokens.
``none``         keep everything (``keep`` must be 1).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .errors import InputError
from .yamlio import read_yaml_section

METHODS = ("progressive", "fastv", "pyramiddrop", "random", "uniform", "none")
SHAPES = ("geometric", "linear", "explicit")
BUDGETS = ("average", "final")
SCORE_SOURCES = ("unified", "attention", "none")

# What each baseline *is* (its definition): a setting that contradicts it raises, it is never overwritten.
_DEFINITIONS: dict[str, dict[str, Any]] = {
    "progressive": {},
    "fastv": {"stages": 1, "shape": "geometric", "score": "attention", "query": "last"},
    "pyramiddrop": {"shape": "geometric", "score": "attention", "query": "last"},
    "random": {"score": "none"},
    "uniform": {"score": "none"},
    "none": {"score": "none"},
}

# Where each method's preset starts (the user's settings may change these). The one place presets live: in the
# package, so a wheel install has them; configs/schedules/<method>.yaml writes each out (a test keeps them equal).
_PRESETS: dict[str, dict[str, Any]] = {
    "progressive": {},
    "fastv": {"first_prune": 3},  # FastV's K = 2: drop after the third block
    # Its first quarter carries every token, so an average budget cannot go below 0.25; 0.4 leaves it room.
    "pyramiddrop": {"stages": 3, "keep": 0.4},
    "random": {},
    "uniform": {},
    "none": {"keep": 1.0},
}


@dataclass(frozen=True)
class Plan:
    """A schedule resolved for a model of ``num_blocks`` blocks.

    Attributes:
        num_blocks: depth of the model.
        prune_points: increasing block indices; tokens are dropped right before each of them runs.
        ratios: fraction of the original visual tokens carried from each prune point on
            (non-increasing, in ``(0, 1]``).
    """

    num_blocks: int
    prune_points: tuple[int, ...]
    ratios: tuple[float, ...]

    def keep_fraction(self, block: int) -> float:
        """Fraction of the original visual tokens that ``block`` carries (before rounding)."""
        ratio = 1.0
        for point, r in zip(self.prune_points, self.ratios, strict=True):
            if block >= point:
                ratio = r
        return ratio

    def stage_counts(self, n_visual: int) -> list[int]:
        """Visual tokens kept at each prune point: ``round(ratio · n_visual)``, at least one."""
        counts, previous = [], n_visual
        for r in self.ratios:
            previous = min(previous, max(1, round(r * n_visual)))
            counts.append(previous)
        return counts

    def block_counts(self, n_visual: int) -> list[int]:
        """Visual tokens each block carries, for ``n_visual`` visual tokens at the input."""
        out, count = [], n_visual
        stages = dict(zip(self.prune_points, self.stage_counts(n_visual), strict=True))
        for block in range(self.num_blocks):
            count = stages.get(block, count)
            out.append(count)
        return out

    def average_keep(self, n_visual: int | None = None) -> float:
        """Mean fraction of visual tokens carried per block (exact ratios, or after rounding)."""
        if n_visual is None:
            return sum(self.keep_fraction(b) for b in range(self.num_blocks)) / self.num_blocks
        return sum(self.block_counts(n_visual)) / (self.num_blocks * n_visual)


@dataclass(frozen=True)
class Schedule:
    """How many visual tokens each block carries, and how the keep sets are chosen.

    Attributes:
        method: one of :data:`METHODS`.
        keep: target budget in ``(0, 1]`` (see ``budget``); ``None`` with explicit ``ratios``.
        budget: ``"average"`` (mean fraction per block over the whole depth) or ``"final"``.
        first_prune: first prune point: a block index (int ≥ 1) or a fraction of the depth
            (float in ``(0, 1)``, rounded, at least 1).
        stages: number of cuts, spread evenly from ``first_prune`` to the end, or an explicit
            increasing list of prune points.
        shape: ``"geometric"`` (ratio ρ^s at stage s), ``"linear"`` (1 − s·δ) or ``"explicit"``.
        ratios: explicit per-stage keep fractions (``shape="explicit"``), non-increasing.
        score: which blocks' scores choose the keep set: ``"unified"`` (attention and Mamba),
            ``"attention"`` (attention blocks only) or ``"none"`` (random/uniform).
        query: query rows for scoring: ``"after_visual"``, ``"last"`` or ``"all_text"``.
        ema: if set, the keep set is chosen from an exponential average (this weight on the newest
            block) of the scores of the scoring blocks since the last prune; else the most recent.
        seed: seed of the ``random`` method.
    """

    method: str = "progressive"
    keep: float | None = 0.25
    budget: str = "average"
    first_prune: int | float = 0.1
    stages: int | tuple[int, ...] = 3
    shape: str = "geometric"
    ratios: tuple[float, ...] | None = None
    score: str = "unified"
    query: str = "after_visual"
    ema: float | None = None
    seed: int = 0
    name: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InputError(f"schedule method {self.method!r} is not one of {METHODS}")
        if isinstance(self.stages, list):
            object.__setattr__(self, "stages", tuple(self.stages))
        if isinstance(self.ratios, list):
            object.__setattr__(self, "ratios", tuple(self.ratios))
        if self.shape not in SHAPES:
            raise InputError(f"schedule shape {self.shape!r} is not one of {SHAPES}")
        if self.budget not in BUDGETS:
            raise InputError(f"schedule budget {self.budget!r} is not one of {BUDGETS}")
        if self.score not in SCORE_SOURCES:
            raise InputError(f"schedule score {self.score!r} is not one of {SCORE_SOURCES}")
        if self.query not in ("after_visual", "last", "all_text"):
            raise InputError(f"schedule query {self.query!r} is not one of ('after_visual', 'last', 'all_text')")
        if self.shape == "explicit":
            if not self.ratios:
                raise InputError(
                    "shape='explicit' needs ratios: the keep fraction of each stage, e.g. [0.75, 0.5, 0.25]"
                )
            if self.keep is not None and self.method != "none":
                raise InputError("give either explicit ratios or a keep target, not both (set keep: null)")
            bad = [r for r in self.ratios if not 0 < r <= 1]
            if bad:
                raise InputError(f"explicit ratios must lie in (0, 1], got {bad}")
            if any(b > a for a, b in zip(self.ratios, self.ratios[1:], strict=False)):
                raise InputError(
                    f"explicit ratios must be non-increasing (low-to-high pruning), got {list(self.ratios)}"
                )
        elif self.ratios is not None:
            raise InputError("ratios are only used with shape='explicit'")
        elif self.keep is None or not 0 < float(self.keep) <= 1:
            raise InputError(f"keep must lie in (0, 1] (the fraction of visual tokens kept), got {self.keep}")
        if self.method == "none" and self.keep not in (None, 1, 1.0):
            raise InputError("method 'none' keeps every token: use keep: 1")
        if isinstance(self.stages, int) and not isinstance(self.stages, bool):
            if self.stages < 1:
                raise InputError(f"stages must be at least 1, got {self.stages}")
        elif isinstance(self.stages, tuple):
            if not self.stages or any(not isinstance(p, int) for p in self.stages):
                raise InputError(f"stages must be a number of cuts or a list of block indices, got {self.stages}")
            if any(b <= a for a, b in zip(self.stages, self.stages[1:], strict=False)):
                raise InputError(f"explicit prune points must be strictly increasing, got {list(self.stages)}")
        else:
            raise InputError(f"stages must be an int or a list of block indices, got {self.stages!r}")
        if self.shape == "explicit" and self.ratios is not None:
            n = self.stages if isinstance(self.stages, int) else len(self.stages)
            if n != len(self.ratios):
                raise InputError(f"{len(self.ratios)} explicit ratios for {n} stages: give one ratio per stage")
        if self.ema is not None and not 0 < self.ema <= 1:
            raise InputError(f"ema must lie in (0, 1] (the weight of the newest block), got {self.ema}")

    # -- construction ------------------------------------------------------------------------------
    @classmethod
    def preset(cls, method: str, **overrides: Any) -> Schedule:
        """The schedule of ``method``: its preset settings, then ``overrides``.

        Raises:
            InputError: an unknown method, or an override that contradicts the method's definition
                (``Schedule.preset("fastv", stages=2)``: FastV is one cut scored by attention; a two-stage
                attention-scored schedule is ``progressive`` with ``score="attention"``).
        """
        if method not in METHODS:
            raise InputError(f"unknown schedule {method!r}; choose from {METHODS}")
        definition = _DEFINITIONS[method]
        clash = {k: v for k, v in overrides.items() if k in definition and v != definition[k]}
        if clash:
            raise InputError(
                f"{method} is defined by {definition}; {clash} contradicts it. For another layout or score source, "
                "use method: progressive with the settings you want (e.g. score: attention)"
            )
        return cls(**{"method": method, **_PRESETS[method], **overrides, **definition})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Schedule:
        data = dict(data.get("schedule", data))
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise InputError(f"unknown schedule settings {sorted(unknown)}; known: {sorted(known)}")
        method = data.pop("method", "progressive")
        return cls.preset(method, **data)

    @classmethod
    def from_yaml(cls, path: str | Path) -> Schedule:
        schedule = cls.from_dict(read_yaml_section(path, "schedule", "schedule file"))
        return replace(schedule, name=schedule.name or Path(path).stem)

    @classmethod
    def load(cls, spec: Schedule | str | Path | dict) -> Schedule:
        """A schedule from an instance, a dict, a YAML path, or a method name (its :meth:`preset`)."""
        if isinstance(spec, Schedule):
            return spec
        if isinstance(spec, dict):
            return cls.from_dict(spec)
        path = Path(spec)
        if path.suffix in (".yaml", ".yml"):
            return cls.from_yaml(path)
        if str(spec) in METHODS:
            return replace(cls.preset(str(spec)), name=str(spec))
        raise InputError(f"unknown schedule {spec!r}: give a YAML file or one of {list(METHODS)}")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("stages", "ratios"):
            if isinstance(out[key], tuple):
                out[key] = list(out[key])
        return out

    # -- resolution -------------------------------------------------------------------------------
    def prune_points(self, num_blocks: int) -> tuple[int, ...]:
        """Prune points for a model of ``num_blocks`` blocks."""
        if num_blocks < 2:
            raise InputError(f"a model needs at least 2 blocks to prune between them, got {num_blocks}")
        if self.method == "none":
            return ()
        if isinstance(self.stages, tuple):
            points = self.stages
        elif self.method == "pyramiddrop":
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
        """Solve the stage ratios for a model of ``num_blocks`` blocks."""
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
