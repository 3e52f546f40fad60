"""Layerwise sparsity of visual-token importance: how few tokens carry a layer's mass.

Shapes use the dimension letters of :mod:`hybridreduce.glossary`; ``...`` stands for any leading batch dimensions,
and every metric reduces the last (``V``) axis only, the support of every importance vector.

All metrics take nonnegative scores ``(..., V)``, normalise each vector by its sum, and compute in
float64 (a float32 cumsum over thousands of tokens drifts by more than the tolerances used here).
Every metric is invariant to a permutation of the tokens.

* ``k@p`` (:func:`mass_coverage`): the smallest share of tokens whose largest scores hold a share
  ``p`` of the mass; small means sparse. Uniform scores give ``ceil(p·V)/V``, a one-hot gives ``1/V``.
* normalised entropy (:func:`normalised_entropy`): ``H(q)/log V``; 1 uniform, 0 one-hot.
* Gini coefficient (:func:`gini`): 0 uniform, ``(V−1)/V`` one-hot.
* top-k mass (:func:`topk_mass`): share of the mass in the ``ceil(frac·V)`` largest scores.

:func:`layer_sparsity` applies them to every scored block of a cache and summarises over samples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from hybridreduce.cache import ScoreCache
from hybridreduce.errors import InputError

# Relative slack for "cumulative mass ≥ p·total" and for ceil(frac·V): 0.7·10 is 7.000000000000001 in
# floating point and the float64 cumsum of ten 0.1s is 0.9999999999999999; both must count as exact.
REL_TOL = 1e-9

__all__ = [
    "BlockSparsity",
    "SparsityReport",
    "ceil_count",
    "gini",
    "layer_sparsity",
    "mass_coverage",
    "normalised_entropy",
    "topk_mass",
    "validate_scores",
]


# Input checks and shared helpers ----------------------------------------------------------------
def validate_scores(scores: torch.Tensor, name: str = "scores") -> torch.Tensor:
    """Check an importance tensor and return it as float64 normalised to sum one over V.

    Args:
        scores: ``(..., V)`` finite, nonnegative, with a positive sum in every vector.
        name: what to call the tensor in error messages.

    Returns:
        ``(..., V)`` float64, each vector summing to one.

    Raises:
        InputError: not a tensor, no token axis, V = 0, non-finite, negative, or an all-zero vector.
    """
    if not isinstance(scores, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor of shape (..., V), got {type(scores).__name__}")
    if scores.ndim == 0 or scores.shape[-1] == 0:
        raise InputError(
            f"{name} has shape {tuple(scores.shape)} but needs a nonempty last (visual-token) axis; "
            "pass importance of shape (..., V) with V >= 1"
        )
    if scores.is_complex() or scores.dtype == torch.bool:
        raise InputError(f"{name} has dtype {scores.dtype}; pass real-valued importance scores")
    x = scores.detach().to(torch.float64)
    if not torch.isfinite(x).all():
        raise InputError(
            f"{name} contains NaN or inf ({int((~torch.isfinite(x)).sum())} entries); "
            "fix the scorer (see ScoreError) or drop those samples before the analysis"
        )
    if (x < 0).any():
        raise InputError(
            f"{name} has negative entries (min {x.min().item():.3g}); importance must be nonnegative — "
            "pass probabilities or absolute values, not signed scores"
        )
    total = x.sum(dim=-1, keepdim=True)
    if (total <= 0).any():
        raise InputError(
            f"{name} has {int((total <= 0).sum())} all-zero vector(s), which have no distribution; "
            "remove those samples (e.g. samples without visual tokens) before the analysis"
        )
    return x / total


def ceil_count(frac: float, n: int, name: str = "frac") -> int:
    """``ceil(frac·n)`` with a relative tolerance (0.1·30 → 3, not 4), clamped to ``[1, n]``.

    Args:
        frac: share in ``(0, 1]``.
        n: number of items (V), at least one.
        name: what to call ``frac`` in error messages.
    """
    check_fraction(frac, name)
    return min(n, max(1, math.ceil(frac * n * (1 - REL_TOL))))


def check_fraction(frac: float, name: str) -> None:
    """Raise :class:`InputError` unless ``frac`` is a real number in ``(0, 1]``."""
    if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0 < frac <= 1:
        raise InputError(f"{name} must be a number in (0, 1], got {frac!r}; e.g. 0.25 for a quarter of the tokens")


def _sorted_desc(q: torch.Tensor) -> torch.Tensor:
    """``(..., V)`` the values of ``q`` sorted from largest to smallest."""
    return torch.sort(q, dim=-1, descending=True).values


# Metrics ----------------------------------------------------------------------------------------
def mass_coverage(scores: torch.Tensor, p: float) -> torch.Tensor:
    """``k@p``: the smallest share of tokens that holds a share ``p`` of the importance mass.

    With ``q = scores / scores.sum(-1)`` sorted in decreasing order and ``c_k = q_(1) + … + q_(k)``,
    ``k`` is the smallest integer in ``[1, V]`` with ``c_k ≥ p·(1 − 1e-9)`` (the relative tolerance
    absorbs float64 round-off, so uniform scores give exactly ``ceil(p·V)/V``). The result is ``k/V``.
    A one-hot vector gives ``1/V``; ties do not matter because only the sorted values are used.

    Args:
        scores: ``(..., V)`` nonnegative importance (normalised here).
        p: mass share in ``(0, 1]``.

    Returns:
        ``(...)`` float64 ``k/V`` in ``[1/V, 1]``.
    """
    check_fraction(p, "p")
    q = validate_scores(scores)
    cum = torch.cumsum(_sorted_desc(q), dim=-1)
    k = (cum < p * (1 - REL_TOL)).sum(dim=-1) + 1  # tokens before the threshold is reached, plus one
    V = q.shape[-1]
    return k.clamp(max=V).to(torch.float64) / V


def normalised_entropy(scores: torch.Tensor) -> torch.Tensor:
    """Shannon entropy over ``log V``: ``−Σ q_v log q_v / log V`` with ``0·log 0 = 0``.

    1 for uniform scores, 0 for a one-hot. With ``V = 1`` the normaliser ``log 1`` is zero and the
    only distribution is a point mass, so the result is defined as 0.

    Args:
        scores: ``(..., V)`` nonnegative importance (normalised here).

    Returns:
        ``(...)`` float64 in ``[0, 1]``.
    """
    q = validate_scores(scores)
    V = q.shape[-1]
    if V == 1:
        return torch.zeros(q.shape[:-1], dtype=torch.float64)
    h = -torch.xlogy(q, q).sum(dim=-1)  # xlogy(0, 0) = 0
    return (h / math.log(V)).clamp(0.0, 1.0)


def gini(scores: torch.Tensor) -> torch.Tensor:
    """Gini coefficient of the importance distribution.

    With ``q`` normalised to sum one and sorted increasingly (``q_(1) ≤ … ≤ q_(V)``),
    ``G = Σ_rank (2·rank − V − 1) q_(rank) / V``, which equals the mean absolute difference
    ``Σ_u Σ_v |q_u − q_v| / (2 V² mean(q))``. 0 for uniform scores, ``(V − 1)/V`` for a one-hot
    (the maximum for V tokens); 0 when ``V = 1``.

    Args:
        scores: ``(..., V)`` nonnegative importance (normalised here).

    Returns:
        ``(...)`` float64 in ``[0, (V − 1)/V]``.
    """
    q = validate_scores(scores)
    V = q.shape[-1]
    ascending = torch.sort(q, dim=-1).values
    weights = 2 * torch.arange(1, V + 1, dtype=torch.float64) - V - 1  # (V,)
    return (ascending * weights).sum(dim=-1).clamp(min=0.0) / V


def topk_mass(scores: torch.Tensor, frac: float) -> torch.Tensor:
    """Share of the importance mass held by the ``k = ceil(frac·V)`` largest scores.

    ``k`` uses :func:`ceil_count` (tolerant ceil, at least one token). Uniform scores give ``k/V``.

    Args:
        scores: ``(..., V)`` nonnegative importance (normalised here).
        frac: share of tokens in ``(0, 1]``.

    Returns:
        ``(...)`` float64 in ``[k/V, 1]``.
    """
    q = validate_scores(scores)
    k = ceil_count(frac, q.shape[-1])
    return _sorted_desc(q)[..., :k].sum(dim=-1).clamp(max=1.0)


# Per-layer summary ------------------------------------------------------------------------------
@dataclass
class BlockSparsity:
    """Sparsity metrics of one scored block.

    Attributes:
        block: block index in the model.
        kind: block kind (``attn``, ``ssm``, ``parallel``, ...).
        n_visual: V.
        per_sample: metric name → ``(b,)`` float64 value per sample.
        stats: metric name → ``{"mean", "std", "min", "max"}`` over samples (``std`` is the population
            standard deviation, 0 for a single sample).
    """

    block: int
    kind: str
    n_visual: int
    per_sample: dict[str, torch.Tensor]
    stats: dict[str, dict[str, float]]


@dataclass
class SparsityReport:
    """:func:`layer_sparsity` output: scored blocks in order, and the blocks that were skipped.

    Attributes:
        blocks: one :class:`BlockSparsity` per scored block, in block order.
        skipped: ``{"block", "kind", "reason"}`` for every block of the model without scores.
        metrics: metric names, in column order.
    """

    blocks: list[BlockSparsity]
    skipped: list[dict[str, Any]] = field(default_factory=list)
    metrics: list[str] = field(default_factory=list)

    def to_rows(self) -> list[dict[str, Any]]:
        """One flat row per scored block (``block, kind, n_visual, batch, <metric>_<stat>...``), for CSV."""
        rows = []
        for blk in self.blocks:
            row: dict[str, Any] = {"block": blk.block, "kind": blk.kind, "n_visual": blk.n_visual}
            row["batch"] = int(next(iter(blk.per_sample.values())).numel())
            for metric in self.metrics:
                row.update({f"{metric}_{stat}": value for stat, value in blk.stats[metric].items()})
            rows.append(row)
        return rows

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict: metrics, per-block stats and per-sample values, skipped blocks."""
        blocks = [
            {
                "block": blk.block,
                "kind": blk.kind,
                "n_visual": blk.n_visual,
                "stats": blk.stats,
                "per_sample": {m: v.tolist() for m, v in blk.per_sample.items()},
            }
            for blk in self.blocks
        ]
        return {"metrics": list(self.metrics), "blocks": blocks, "skipped": [dict(s) for s in self.skipped]}


def _summary(values: torch.Tensor) -> dict[str, float]:
    """``{"mean", "std", "min", "max"}`` of ``(b,)`` values (population std)."""
    return {
        "mean": values.mean().item(),
        "std": values.std(correction=0).item(),
        "min": values.min().item(),
        "max": values.max().item(),
    }


def _skip_reason(kind: str) -> str:
    if kind in ("mlp", "moe"):
        return f"kind {kind!r} has no token mixer, so it does not score visual tokens"
    return "no scores recorded for this block (it was not scored in this forward)"


def skipped_blocks(cache: ScoreCache) -> list[dict[str, Any]]:
    """``{"block", "kind", "reason"}`` for every block of ``cache.block_kinds`` without scores."""
    return [
        {"block": i, "kind": kind, "reason": _skip_reason(kind)}
        for i, kind in enumerate(cache.block_kinds)
        if i not in cache.scores
    ]


def require_scored(cache: ScoreCache) -> None:
    """Raise :class:`InputError` unless ``cache`` is a ScoreCache with at least one scored block."""
    if not isinstance(cache, ScoreCache):
        raise InputError(f"expected a hybridreduce.ScoreCache, got {type(cache).__name__}")
    if not cache.layers:
        raise InputError(
            f"the score cache has no scored blocks (block kinds: {cache.block_kinds}); score a model "
            "with attention or Mamba blocks (MLP/MoE blocks do not score) and pass that cache"
        )


def layer_sparsity(
    cache: ScoreCache, ps: Sequence[float] = (0.5, 0.8, 0.9), topk: Sequence[float] = (0.1, 0.25)
) -> SparsityReport:
    """Sparsity metrics of every scored block of ``cache``, per sample and summarised over samples.

    Metrics (names used as keys and CSV column prefixes): ``k@{p}`` for each ``p`` in ``ps``
    (:func:`mass_coverage`), ``entropy`` (:func:`normalised_entropy`), ``gini`` (:func:`gini`) and
    ``top{frac}_mass`` for each ``frac`` in ``topk`` (:func:`topk_mass`); numbers printed with ``:g``.

    Args:
        cache: a ScoreCache whose ``scores[block]`` are ``(b, V)``.
        ps: mass shares for ``k@p``, each in ``(0, 1]``.
        topk: token shares for the top-k mass, each in ``(0, 1]``.

    Returns:
        :class:`SparsityReport`; blocks without scores (``mlp``/``moe``, or not scored) are listed in
        ``skipped`` with a reason.

    Raises:
        InputError: no scored block, a bad ``p``/``frac``, or invalid scores (named by block).
    """
    require_scored(cache)
    for p in ps:
        check_fraction(p, "each p in ps")
    for frac in topk:
        check_fraction(frac, "each fraction in topk")
    metrics = [f"k@{p:g}" for p in ps] + ["entropy", "gini"] + [f"top{f:g}_mass" for f in topk]
    blocks = [_block_sparsity(cache, i, ps, topk, metrics) for i in cache.layers]
    return SparsityReport(blocks=blocks, skipped=skipped_blocks(cache), metrics=metrics)


def _block_sparsity(
    cache: ScoreCache, block: int, ps: Sequence[float], topk: Sequence[float], metrics: list[str]
) -> BlockSparsity:
    scores = cache.scores[block]  # [b, V]
    if scores.ndim != 2 or scores.shape[0] == 0:
        raise InputError(
            f"scores of block {block} have shape {tuple(scores.shape)}; expected (batch, n_visual) with batch >= 1"
        )
    q = validate_scores(scores, name=f"scores of block {block}")
    values = [mass_coverage(q, p) for p in ps] + [normalised_entropy(q), gini(q)] + [topk_mass(q, f) for f in topk]
    per_sample = dict(zip(metrics, values, strict=True))
    stats = {m: _summary(v) for m, v in per_sample.items()}
    return BlockSparsity(block, cache.block_kinds[block], int(q.shape[-1]), per_sample, stats)
