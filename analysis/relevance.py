"""Relevance of importance to ground truth: do a block's top tokens hold the tokens the answer needs?

Shapes use the dimension letters of :mod:`hybridreduce.glossary`; a keep set of ``k`` tokens has
``k = ceil(frac·V)`` (the tolerant ceil of :func:`analysis.sparsity.ceil_count`).

Inputs are importance ``scores: (b, V)`` (nonnegative, normalised here) and the ground-truth
``relevant: (b, V)`` bool, e.g. ``relevant_visual`` of a :mod:`hybridreduce.toy` batch. All arithmetic
is float64. Samples without any relevant token have no recall; they are NaN per sample and left out
of every mean (``n_samples`` counts the ones kept).

* recall@k (:func:`recall_at_k`): ``|top_k(scores) ∩ R| / |R|``, the share of the relevant tokens a
  keep set of the ``k`` highest-scored tokens would hold. Top-k sets come from
  :func:`analysis.stability.topk_mask` (ties go to the earlier token).
* relevant mass (:func:`relevant_mass`): ``Σ_{v ∈ R} q_v`` with ``q`` the normalised importance.
* random baseline: a uniformly random keep set of ``k`` tokens holds each relevant token with
  probability ``k/V``, so its expected recall is ``k/V`` (:func:`random_recall`, independent of the
  sample); uniform importance puts mass ``|R|/V`` on the relevant tokens (:func:`random_mass`).

:func:`relevance_report` compares, block by block, the per-mixer vectors of several score caches
(``ScoreCache.parts``): the attention rows of attention blocks and the Mamba proxy of each cache's
Mamba scorer, named by series (:func:`series_name`): ``attention``, ``mamba_exact``, ``mamba_decay_free``.
Attention scores do not depend on the Mamba scorer, so attention series are taken from the first cache
that has them (:attr:`RelevanceReport.attention_max_diff` records how far the other caches differ).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from hybridreduce.cache import ScoreCache
from hybridreduce.errors import InputError

from .sparsity import ceil_count, check_fraction, require_scored, validate_scores
from .stability import topk_mask

__all__ = [
    "RelevanceReport",
    "SeriesRelevance",
    "check_relevant",
    "random_mass",
    "random_recall",
    "recall_at_k",
    "relevance_report",
    "relevant_mass",
    "scored_blocks",
    "series_name",
    "summarise",
]

NO_SCORES_KINDS = ("mlp", "moe")


# Input checks -------------------------------------------------------------------------------------
def check_relevant(relevant: torch.Tensor, shape: tuple[int, int] | None = None) -> torch.Tensor:
    """Validate a ground-truth mask and return it as bool.

    Args:
        relevant: ``(b, V)`` bool (or 0/1 integers), True at the relevant visual tokens.
        shape: the ``(b, V)`` it must have (that of the scores), or None.

    Returns:
        ``(b, V)`` bool.
    """
    if not isinstance(relevant, torch.Tensor) or relevant.ndim != 2:
        got = tuple(relevant.shape) if isinstance(relevant, torch.Tensor) else type(relevant).__name__
        raise InputError(
            f"relevant must be a (batch, n_visual) bool tensor of ground-truth tokens, got {got}; "
            "pass the batch's relevant_visual"
        )
    if relevant.dtype != torch.bool:
        if relevant.is_floating_point() or relevant.is_complex() or not bool(((relevant == 0) | (relevant == 1)).all()):
            raise InputError(
                f"relevant must be a bool (or 0/1 integer) tensor, got dtype {relevant.dtype}; use mask.bool()"
            )
        relevant = relevant.bool()
    if shape is not None and tuple(relevant.shape) != tuple(shape):
        raise InputError(
            f"relevant has shape {tuple(relevant.shape)} but the scores have {tuple(shape)}; the ground truth must "
            "cover the same samples (in the same order) and the same visual tokens as the scores"
        )
    return relevant


def scored_blocks(cache: ScoreCache, blocks: Sequence[int] | None = None) -> list[int]:
    """The blocks to analyse: ``blocks`` (checked to have scores) or every scored block of ``cache``.

    Raises:
        InputError: a block outside the model, an MLP/MoE block (no token mixer, no scores), or a
            block that was not scored.
    """
    require_scored(cache)
    if blocks is None:
        return cache.layers
    out = []
    for block in blocks:
        if isinstance(block, bool) or not isinstance(block, int) or not 0 <= block < len(cache.block_kinds):
            raise InputError(
                f"block {block!r} is not a block of this model (blocks 0..{len(cache.block_kinds) - 1}); "
                f"choose among the scored blocks {cache.layers}"
            )
        if block not in cache.scores:
            kind = cache.block_kinds[block]
            why = (
                f"is an {kind!r} block: it has no token mixer and records no scores"
                if kind in NO_SCORES_KINDS
                else "was not scored"
            )
            raise InputError(f"block {block} {why}; choose among the scored blocks {cache.layers}")
        out.append(block)
    return out


# Metrics ------------------------------------------------------------------------------------------
def recall_at_k(scores: torch.Tensor, relevant: torch.Tensor, frac: float) -> torch.Tensor:
    """Share of the relevant tokens inside the ``k = ceil(frac·V)`` highest-scored tokens, per sample.

    Args:
        scores: ``(b, V)`` nonnegative importance.
        relevant: ``(b, V)`` bool ground truth.
        frac: share of tokens in the keep set, in ``(0, 1]``.

    Returns:
        ``(b,)`` float64 in ``[0, 1]``; NaN for a sample without relevant tokens.
    """
    check_fraction(frac, "frac")
    q = validate_scores(scores)
    relevant = check_relevant(relevant, tuple(q.shape))
    top = topk_mask(q, ceil_count(frac, q.shape[-1]))  # (b, V)
    hits = (top & relevant).sum(dim=-1).to(torch.float64)
    n_rel = relevant.sum(dim=-1).to(torch.float64)
    return torch.where(n_rel > 0, hits / n_rel.clamp(min=1), torch.nan)


def relevant_mass(scores: torch.Tensor, relevant: torch.Tensor) -> torch.Tensor:
    """Share of the importance mass on the relevant tokens, per sample.

    Args:
        scores: ``(b, V)`` nonnegative importance (normalised here).
        relevant: ``(b, V)`` bool ground truth.

    Returns:
        ``(b,)`` float64 in ``[0, 1]``; NaN for a sample without relevant tokens.
    """
    q = validate_scores(scores)
    relevant = check_relevant(relevant, tuple(q.shape))
    mass = (q * relevant).sum(dim=-1).clamp(0.0, 1.0)
    return torch.where(relevant.any(dim=-1), mass, torch.nan)


def random_recall(frac: float, n_visual: int) -> float:
    """Expected recall@k of a uniformly random keep set of ``k = ceil(frac·V)`` tokens: ``k/V``."""
    return ceil_count(frac, n_visual) / n_visual


def random_mass(relevant: torch.Tensor) -> torch.Tensor:
    """``(b,)`` float64 ``|R|/V``, the relevant mass of uniform importance; NaN without relevant tokens."""
    relevant = check_relevant(relevant)
    n_rel = relevant.sum(dim=-1).to(torch.float64)
    return torch.where(n_rel > 0, n_rel / relevant.shape[-1], torch.nan)


def summarise(values: torch.Tensor) -> dict[str, float | int | None]:
    """``{"mean", "std", "sem", "min", "max", "n"}`` of the finite entries of ``(b,)`` values.

    ``std`` is the population standard deviation, ``sem`` the standard error of the mean
    (sample standard deviation over ``sqrt(n)``, 0 for one sample); None when no entry is finite.
    """
    v = values[torch.isfinite(values)].to(torch.float64)
    n = int(v.numel())
    if n == 0:
        return {"mean": None, "std": None, "sem": None, "min": None, "max": None, "n": 0}
    sem = v.std(correction=1).item() / math.sqrt(n) if n > 1 else 0.0
    return {
        "mean": v.mean().item(),
        "std": v.std(correction=0).item(),
        "sem": sem,
        "min": v.min().item(),
        "max": v.max().item(),
        "n": n,
    }


# Per-block report -----------------------------------------------------------------------------------
def series_name(mixer: str, mamba_mode: str) -> str:
    """Name of one per-mixer score series: ``attention``, ``mamba_<mode>``, or ``unified_<mode>``."""
    if mixer == "attn":
        return "attention"
    if mixer == "ssm":
        return f"mamba_{mamba_mode}"
    return f"unified_{mamba_mode}"


@dataclass
class SeriesRelevance:
    """Relevance metrics of one block's vectors from one mixer (one series).

    Attributes:
        block: block index in the model.
        kind: block kind (``attn``, ``ssm``, ``parallel``, ...).
        mixer: ``attn``, ``ssm`` (``ScoreCache.parts`` keys) or ``unified`` (a cache without parts).
        series: :func:`series_name` of the mixer and the cache's Mamba scorer.
        scorer: name of the cache the vectors came from.
        recall: fraction → ``(b,)`` float64 recall@k per sample (NaN: no relevant token).
        mass: ``(b,)`` float64 relevant mass per sample.
        stats: ``recall@{frac:g}`` and ``mass`` → :func:`summarise` over samples.
    """

    block: int
    kind: str
    mixer: str
    series: str
    scorer: str
    recall: dict[float, torch.Tensor]
    mass: torch.Tensor
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class RelevanceReport:
    """:func:`relevance_report` output.

    Attributes:
        fractions: the top-k shares.
        n_visual: V.
        batch: number of samples b.
        n_with_relevant: samples with at least one relevant token (the ones every mean is over).
        entries: one :class:`SeriesRelevance` per (block, series), in block order.
        baseline: ``recall@{frac:g}`` → expected random recall ``k/V``, and ``mass`` → :func:`summarise`
            of ``|R|/V``.
        attention_max_diff: largest absolute difference between the attention vectors of the caches
            (0 when they agree; None with fewer than two caches holding attention).
    """

    fractions: list[float]
    n_visual: int
    batch: int
    n_with_relevant: int
    entries: list[SeriesRelevance]
    baseline: dict[str, Any]
    attention_max_diff: float | None = None

    @property
    def series(self) -> list[str]:
        """Series names, in order of first appearance."""
        return list(dict.fromkeys(e.series for e in self.entries))

    def metric_names(self) -> list[str]:
        return [f"recall@{f:g}" for f in self.fractions] + ["mass"]

    def to_rows(self) -> list[dict[str, Any]]:
        """One flat row per (block, series): ``block, kind, mixer, series, scorer, n, <metric>_<stat>...``
        and the random baselines ``random_<metric>``, for CSV."""
        rows = []
        for e in self.entries:
            row: dict[str, Any] = {"block": e.block, "kind": e.kind, "mixer": e.mixer, "series": e.series}
            row.update({"scorer": e.scorer, "n": e.stats["mass"]["n"]})
            for metric in self.metric_names():
                row.update({f"{metric}_{s}": v for s, v in e.stats[metric].items() if s != "n"})
            for f in self.fractions:
                row[f"random_recall@{f:g}"] = self.baseline[f"recall@{f:g}"]
            row["random_mass_mean"] = self.baseline["mass"]["mean"]
            rows.append(row)
        return rows

    def to_dict(self, per_sample: bool = False) -> dict[str, Any]:
        """JSON-friendly dict (NaN → None); per-sample values only if asked."""
        entries = []
        for e in self.entries:
            item: dict[str, Any] = {"block": e.block, "kind": e.kind, "mixer": e.mixer, "series": e.series}
            item.update({"scorer": e.scorer, "stats": e.stats})
            if per_sample:
                values = {f"recall@{f:g}": v for f, v in e.recall.items()} | {"mass": e.mass}
                item["per_sample"] = {m: [None if math.isnan(x) else x for x in v.tolist()] for m, v in values.items()}
            entries.append(item)
        return {
            "fractions": list(self.fractions),
            "metrics": self.metric_names(),
            "series": self.series,
            "n_visual": self.n_visual,
            "batch": self.batch,
            "n_with_relevant": self.n_with_relevant,
            "baseline": self.baseline,
            "attention_max_diff": self.attention_max_diff,
            "entries": entries,
        }


def _block_vectors(cache: ScoreCache, block: int) -> dict[str, torch.Tensor]:
    """Mixer → ``(b, V)`` vectors of one block: its parts, or its unified score when it has none."""
    parts = cache.parts.get(block)
    if parts:
        return {m: parts[m] for m in ("attn", "ssm") if m in parts}
    kind = cache.block_kinds[block]
    return {kind if kind in ("attn", "ssm") else "unified": cache.scores[block]}


def _series_entry(
    name: str, mode: str, block: int, kind: str, mixer: str, scores: torch.Tensor, relevant: torch.Tensor, fractions
) -> SeriesRelevance:
    q = validate_scores(scores, name=f"scores of block {block} ({mixer}, scorer {name})")
    recall = {f: recall_at_k(q, relevant, f) for f in fractions}
    mass = relevant_mass(q, relevant)
    stats = {f"recall@{f:g}": summarise(v) for f, v in recall.items()} | {"mass": summarise(mass)}
    return SeriesRelevance(block, kind, mixer, series_name(mixer, mode), name, recall, mass, stats)


def _check_caches(caches: Mapping[str, ScoreCache], relevant: torch.Tensor) -> tuple[int, int]:
    if not isinstance(caches, Mapping) or not caches:
        raise InputError("relevance_report needs a non-empty mapping of scorer name → ScoreCache")
    for name, cache in caches.items():
        require_scored(cache)
        shapes = {tuple(cache.scores[i].shape) for i in cache.layers}
        if len(shapes) != 1:
            raise InputError(
                f"cache {name!r} has blocks with different score shapes {sorted(shapes)}; record every block in one "
                "scoring forward (or concatenate whole caches)"
            )
        check_relevant(relevant, shapes.pop())
    b, V = relevant.shape
    return b, V


def relevance_report(
    caches: Mapping[str, ScoreCache] | ScoreCache,
    relevant: torch.Tensor,
    fractions: Sequence[float] = (0.05, 0.1, 0.25),
    blocks: Sequence[int] | None = None,
) -> RelevanceReport:
    """Recall@k and relevant mass of every scored block's per-mixer vectors, for one or more caches.

    Args:
        caches: scorer name → :class:`ScoreCache` over the same samples (e.g. ``{"decay_free": …,
            "exact": …}``), or one cache. Each series is named by the cache's Mamba scorer
            (``cache.scorer["mamba"]``, else the name).
        relevant: ``(b, V)`` bool ground-truth relevant tokens, aligned with the caches' samples.
        fractions: top-k shares, each in ``(0, 1]``.
        blocks: blocks to report (default: every scored block of each cache); an MLP/MoE block raises.

    Returns:
        :class:`RelevanceReport`, entries sorted by (block, series).

    Raises:
        InputError: empty or mismatched caches, a bad mask or fraction, or an unscored block.
    """
    if isinstance(caches, ScoreCache):
        caches = {str(caches.scorer.get("mamba", "scores")): caches}
    relevant = check_relevant(relevant)
    b, V = _check_caches(caches, relevant)
    fractions = [float(f) for f in fractions]
    for f in fractions:
        check_fraction(f, "each fraction in fractions")
    entries: list[SeriesRelevance] = []
    seen: dict[tuple[int, str], torch.Tensor] = {}
    diff: float | None = None
    for name, cache in caches.items():
        mode = str(cache.scorer.get("mamba", name))
        for block in scored_blocks(cache, blocks):
            for mixer, scores in _block_vectors(cache, block).items():
                key = (block, series_name(mixer, mode))
                if key in seen:  # attention again (it does not depend on the Mamba scorer)
                    gap = (scores.double() - seen[key].double()).abs().max().item()
                    diff = gap if diff is None else max(diff, gap)
                    continue
                seen[key] = scores
                kind = cache.block_kinds[block]
                entries.append(_series_entry(name, mode, block, kind, mixer, scores, relevant, fractions))
    entries.sort(key=lambda e: (e.block, e.series))
    baseline: dict[str, Any] = {f"recall@{f:g}": random_recall(f, V) for f in fractions}
    baseline["mass"] = summarise(random_mass(relevant))
    n_rel = int(relevant.any(dim=-1).sum())
    return RelevanceReport(fractions, V, b, n_rel, entries, baseline, diff)
