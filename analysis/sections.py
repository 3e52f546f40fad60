"""The sections of metrics.json computed from collected score caches (no file is read or written here).

Shapes use the dimension letters of :mod:`hybridreduce.glossary`: ``N`` counts the samples of the whole run
(concatenated over batches), ``L`` its scored blocks (attention and Mamba blocks; MLP/MoE blocks do not score).

:func:`concat_caches` joins the caches of consecutive batches (or shards); :func:`analyze_caches` measures them
(sparsity, stability, relevance: :class:`Analysis`); :func:`schedule_section`, the overlay blocks and
:func:`examples_section` make the rest; :func:`diagnostics_section` the optional ``diagnostics`` section (it runs
forwards of its own). A section that fails becomes an :func:`error_record` in metrics.json's
``errors``; the others are still computed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from hybridreduce import Plan, Schedule
from hybridreduce.cache import ScoreCache
from hybridreduce.errors import InputError

from .config import AnalysisConfig
from .relevance import NO_SCORES_KINDS, RelevanceReport, relevance_report
from .sparsity import SparsityReport, layer_sparsity
from .stability import KeepRatios, StabilityReport, layer_stability

__all__ = [
    "Analysis",
    "analyze_caches",
    "check_overlay_blocks",
    "concat_caches",
    "configured_schedule",
    "default_overlay_blocks",
    "diagnostics_section",
    "error_record",
    "examples_section",
    "schedule_section",
]


# Collected caches ---------------------------------------------------------------------------------
def concat_caches(caches: Sequence[ScoreCache]) -> ScoreCache:
    """Concatenate score caches of consecutive batches along the sample axis.

    Args:
        caches: caches of one model and scorer, each ``scores[block]: (b_i, V)``.

    Returns:
        One :class:`ScoreCache` with ``scores[block]: (Σ b_i, V)`` (parts and visual positions alike).
    """
    if not caches:
        raise InputError("nothing to concatenate: no batch was scored")
    first = caches[0]
    for c in caches[1:]:
        if c.layers != first.layers or c.n_visual != first.n_visual or c.block_kinds != first.block_kinds:
            raise InputError(
                f"batches scored different blocks or token counts ({first.layers}, V={first.n_visual} vs "
                f"{c.layers}, V={c.n_visual}); every batch of a run needs the same model and visual-token count"
            )
    out = ScoreCache(first.block_kinds, torch.cat([c.visual_positions for c in caches]), first.scorer)
    out.scores = {k: torch.cat([c.scores[k] for c in caches]) for k in first.layers}
    out.parts = {k: {m: torch.cat([c.parts[k][m] for c in caches]) for m in first.parts[k]} for k in first.parts}
    return out


# Measures of collected caches ----------------------------------------------------------------------
@dataclass
class Analysis:
    """Reports computed from the collected caches, and what failed."""

    sparsity: dict[str, SparsityReport] = field(default_factory=dict)
    stability: dict[str, StabilityReport] = field(default_factory=dict)
    relevance: RelevanceReport | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)


def error_record(stage: str, exc: BaseException, scorer: str | None = None) -> dict[str, Any]:
    """One entry of metrics.json's ``errors``: ``{"stage", "scorer", "type", "message"}``."""
    return {"stage": stage, "scorer": scorer, "type": type(exc).__name__, "message": str(exc)}


def analyze_caches(
    caches: dict[str, ScoreCache],
    config: AnalysisConfig,
    relevant: torch.Tensor | None = None,
    keep_ratios: KeepRatios | None = None,
) -> Analysis:
    """Sparsity and stability of each cache, and relevance across caches when ``relevant (N, V)`` is given.

    ``keep_ratios`` (block → ratio, e.g. ``Plan.keep_fraction``) sets the keep sets of survival recall.
    A section that fails is recorded in :attr:`Analysis.errors`; the others are still computed.
    """
    out = Analysis()
    for name, cache in caches.items():
        try:
            out.sparsity[name] = layer_sparsity(cache, ps=config.mass_p, topk=config.topk)
        except Exception as exc:  # recorded in metrics.json, the other sections still run
            out.errors.append(error_record("sparsity", exc, name))
        try:
            out.stability[name] = layer_stability(
                cache, topk=config.topk, keep_ratios=keep_ratios, kendall=config.kendall
            )
        except Exception as exc:
            out.errors.append(error_record("stability", exc, name))
    if relevant is not None and caches:
        try:
            out.relevance = relevance_report(caches, relevant, config.topk)
        except Exception as exc:
            out.errors.append(error_record("relevance", exc))
    return out


def configured_schedule(config: AnalysisConfig) -> Schedule:
    """The run's schedule (``config.schedule``) with ``config.keep`` as its keep target where it has one."""
    sched = Schedule.load(config.schedule)
    if config.keep is not None and sched.shape != "explicit" and sched.method != "none":
        sched = replace(sched, keep=config.keep)
    return sched


def schedule_section(config: AnalysisConfig, num_blocks: int, n_visual: int) -> tuple[dict[str, Any], Plan]:
    """``(metrics.json schedule section, Plan)`` of the configured schedule on this model."""
    sched = configured_schedule(config)
    plan = sched.resolve(num_blocks)
    section = {
        "name": sched.name or (config.schedule if isinstance(config.schedule, str) else sched.method),
        "settings": sched.to_dict(),
        "prune_points": list(plan.prune_points),
        "ratios": list(plan.ratios),
        "keep_fraction": [plan.keep_fraction(b) for b in range(num_blocks)],
        "visual_tokens": plan.block_counts(n_visual),
        "n_visual": n_visual,
        "average_keep": plan.average_keep(n_visual),
    }
    return section, plan


def default_overlay_blocks(kinds: Sequence[str]) -> list[int]:
    """The last attention block and the last Mamba (or parallel) block."""
    picks = []
    for wanted in (("attn",), ("ssm", "parallel")):
        found = [i for i, k in enumerate(kinds) if k in wanted]
        if found:
            picks.append(found[-1])
    return sorted(picks)


def check_overlay_blocks(blocks: Sequence[int], kinds: Sequence[str]) -> list[int]:
    """Validate overlay blocks against the model's block kinds (MLP/MoE blocks have no scores)."""
    scored = [i for i, k in enumerate(kinds) if k not in NO_SCORES_KINDS]
    for b in blocks:
        if b >= len(kinds):
            raise InputError(
                f"overlay_blocks names block {b}, but the model has {len(kinds)} blocks; choose from {scored}"
            )
        if kinds[b] in NO_SCORES_KINDS:
            raise InputError(
                f"overlay_blocks names block {b}, an {kinds[b]!r} block: it has no token mixer and records no scores; "
                f"choose among the scored blocks {scored}"
            )
    return list(blocks)


def _round(values: torch.Tensor) -> list[float]:
    return [float(f"{v:.6g}") for v in values.tolist()]


def examples_section(
    caches: dict[str, ScoreCache], data: Any, vocab: Any, config: AnalysisConfig, samples: int | None = None
) -> list[dict]:
    """The first ``config.examples`` toy samples: question, relevant tokens, indices and per-block scores.

    ``data``, ``vocab``: the toy benchmark config (``ToyConfig``) and vocabulary the samples were drawn with
    (:func:`analysis.config.toy_benchmark`); ``samples``: how many samples the caches hold (default
    ``config.samples``; fewer in a partial run).
    """
    from hybridreduce.toy import ToyDataset, visual_grid

    dataset = ToyDataset(data, config.split, config.samples, vocab=vocab)
    t, r, c = (x.tolist() for x in visual_grid(data))
    tpf, cols = data.tokens_per_frame, data.cols
    out = []
    for i in range(min(config.examples, config.samples if samples is None else samples)):
        sample = dataset[i]
        scores = {name: {str(b): _round(cache.scores[b][i]) for b in cache.layers} for name, cache in caches.items()}
        out.append(
            {
                "index": i,
                "id": sample.id,
                "qtype": sample.qtype,
                "question": " ".join(sample.question),
                "answer": sample.answer,
                "relevant": sorted(tt * tpf + rr * cols + cc for tt, rr, cc in sample.relevant),
                "frame_index": t,
                "row_index": r,
                "col_index": c,
                "scores": scores,
            }
        )
    return out


def diagnostics_section(model: Any, config: AnalysisConfig, data: Any = None, vocab: Any = None) -> dict[str, Any]:
    """The optional ``diagnostics`` section of metrics.json (:mod:`analysis.diagnostics`), from forwards of its own.

    Query specificity and Mamba step correlation: ``config.diagnostics["videos"]`` videos each asked
    ``["questions"]`` questions (toy: the split's first items with follow-up questions; tiny: random prompts whose
    question tokens are drawn again), scored by the run's first scorer. Share bias (toy only, where tokens carry
    labels): the asked colour's kept share over the run's samples, under the run's schedule (when it has one) and
    the two oracle keep sets at ``["keep"]``.

    Args:
        model: the run's model (:class:`analysis.run.LoadedModel` ``.model``).
        data, vocab: the toy benchmark config and vocabulary (``ModelFacts.data``/``.vocab``); None for a tiny model.

    Returns:
        :func:`analysis.diagnostics.diagnostics_dict` of the measurements.
    """
    from hybridreduce import get_adapter

    from .diagnostics import Diagnostics, diagnose_toy, diagnostics_dict, prompt_question_sets, score_question_sets

    if config.diagnostics is None:
        raise InputError("the config has no diagnostics section; add `diagnostics: true` (or its settings)")
    d = config.diagnostics
    scorer = config.scorers[0]
    if data is not None:
        from hybridreduce.toy import ToyDataset

        dataset = ToyDataset(data, config.split, max(config.samples, d["videos"]), vocab=vocab)
        schedules = {}
        if config.schedule is not None:
            sched = configured_schedule(config)
            if sched.method != "none":
                schedules[sched.name or sched.method] = sched
        out = diagnose_toy(
            model,
            dataset,
            config.samples,
            d["videos"],
            d["questions"],
            schedules,
            d["keep"],
            scorer,
            config.batch_size,
            config.seed,
        )
        return diagnostics_dict(out)
    out = Diagnostics(list(get_adapter(model).kinds))
    out.settings = dict(d) | {"scorer": scorer, "seed": config.seed}
    p = config.prompt
    batch, groups = prompt_question_sets(
        int(model.config.vocab_size), p["prefix"], p["visual"], p["question"], d["videos"], d["questions"], config.seed
    )
    out.specificity, out.steps = score_question_sets(model, batch, groups, scorer, config.batch_size)
    return diagnostics_dict(out)
