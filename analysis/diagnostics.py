"""Why a reduction helps or hurts on your model: three measurements of what a cut does to the tokens a model reads.

Shapes use the dimension letters of :mod:`hybridreduce.glossary`; a set of videos each asked several questions is
``(n_videos, n_questions)``. All arithmetic is float64; the rank correlations are :func:`analysis.stability.spearman`.

* **Share bias** (:func:`share_bias`): a dropping cut changes the density the later blocks compute with. A model
  that answers ``how many red shapes`` from the *share* of red among the visual tokens over-counts after a cut that
  keeps red first. Per sample, with ``K`` the kept visual tokens, ``Y`` a labelled token class (the asked colour's
  tokens, or any class) and ``s_j`` the original tokens a kept token stands for (1 when nothing is merged)::

      kept share = Σ_{j ∈ K ∩ Y} s_j / Σ_{j ∈ K} s_j        true share = |Y| / V        bias = kept − true

  A keep set that is fair to the class has bias 0 on average; a query-conditioned (relevant-first) cut has bias
  ``> 0`` on nearly every sample. Samples without a labelled token are left out (their shares are NaN).
* **Query specificity** (:func:`query_specificity`): the same video under different questions; per scored block
  the Spearman ρ between the importance vectors of every pair of questions, averaged over pairs and videos. 1.0:
  the block ranks the tokens the same whatever is asked, so its score is not language-aware there.
* **Step correlation** (:func:`step_correlation`): per Mamba block, the Spearman ρ between the importance and the
  step size ``Δ_j`` averaged over heads (channels for Mamba-1). The decay-free score ``|C_i·B_j| Δ_j`` reduces to
  ``Δ_j`` when ``|C·B|`` barely varies over the visual tokens; ρ near 1 says the block's score is a property of the
  token, not of the question. :func:`capture_steps` records ``Δ`` during any forward (a hook on each mixer's
  ``in_proj``, removed in ``finally``: DESIGN decisions 1, 2, 4).

:func:`diagnose_toy` measures all three on an embedded toy checkpoint (``scripts/why_diagnostics.py`` runs it);
:func:`score_question_sets` the last two on any model, given question sets (:func:`question_sets` for a toy
dataset, :func:`prompt_question_sets` for random prompts); :func:`diagnostics_dict` is the metrics.json form
(``hybridreduce analyze``'s optional ``diagnostics`` section: :func:`analysis.sections.diagnostics_section`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from hybridreduce.cache import ScoreCache
from hybridreduce.errors import InputError

from .relevance import summarise
from .stability import spearman

__all__ = [
    "ORACLES",
    "ShareBias",
    "Diagnostics",
    "asked_colour_labels",
    "block_summary",
    "capture_steps",
    "diagnose_toy",
    "diagnostics_dict",
    "keep_mask",
    "oracle_keep",
    "prompt_question_sets",
    "query_specificity",
    "question_sets",
    "reduction_keep_sets",
    "score_question_sets",
    "share_bias",
    "step_correlation",
    "toy_share_bias",
]


# Share bias -----------------------------------------------------------------------------------------
@dataclass
class ShareBias:
    """Kept share against true share of one labelled token class, per sample (``(N,)`` float64, NaN where a sample
    has no labelled token)."""

    kept_share: torch.Tensor
    true_share: torch.Tensor

    @property
    def bias(self) -> torch.Tensor:
        """``(N,)`` kept share − true share."""
        return self.kept_share - self.true_share

    def summary(self) -> dict[str, Any]:
        """``{"mean_bias", "over_fraction", "kept_share", "true_share", "ratio", "n"}``: the mean signed bias, the
        share of samples whose class is over-represented (bias > 0), the mean shares and their ratio."""
        ok = torch.isfinite(self.bias)
        n = int(ok.sum())
        if n == 0:
            return dict.fromkeys(("mean_bias", "over_fraction", "kept_share", "true_share", "ratio")) | {"n": 0}
        kept, true = self.kept_share[ok].mean().item(), self.true_share[ok].mean().item()
        return {
            "mean_bias": self.bias[ok].mean().item(),
            "over_fraction": (self.bias[ok] > 0).to(torch.float64).mean().item(),
            "kept_share": kept,
            "true_share": true,
            "ratio": kept / true if true > 0 else None,
            "n": n,
        }

    def to_dict(self) -> dict[str, Any]:
        """The summary and the per-sample shares (NaN as None): the share-bias plot draws them."""
        per = {
            k: [None if math.isnan(v) else v for v in t.tolist()]
            for k, t in (("kept_shares", self.kept_share), ("true_shares", self.true_share))
        }
        return self.summary() | per


def _bool_matrix(x: Any, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.shape[1] == 0:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise InputError(f"{name} must be a (b, V) tensor over the visual tokens, got {shape}")
    if x.dtype != torch.bool and not bool(((x == 0) | (x == 1)).all()):
        raise InputError(f"{name} must be boolean (or 0/1): True at the tokens it marks")
    return x.bool()


def share_bias(kept: torch.Tensor, labels: torch.Tensor, sizes: torch.Tensor | None = None) -> ShareBias:
    """Kept share of a labelled token class against its true share (module docstring), per sample.

    Args:
        kept: ``(b, V)`` bool, the visual tokens a cut kept (:func:`keep_mask` of ``Reduction.kept_positions``).
        labels: ``(b, V)`` bool, the labelled class (the asked colour's tokens, ``relevant_visual``, ...).
        sizes: ``(b, V)`` float, the original tokens each kept token stands for after merging
            (``combine: merge``), read on the kept tokens only; None: every size 1 (a dropping cut).

    Returns:
        A :class:`ShareBias`.
    """
    kept, labels = _bool_matrix(kept, "kept"), _bool_matrix(labels, "labels")
    if kept.shape != labels.shape:
        raise InputError(f"kept {tuple(kept.shape)} and labels {tuple(labels.shape)} must cover the same (b, V)")
    if not bool(kept.any(dim=1).all()):
        raise InputError("a sample keeps no visual token: its kept share is undefined; check the keep sets")
    w = torch.ones(kept.shape, dtype=torch.float64)
    if sizes is not None:
        if not isinstance(sizes, torch.Tensor) or sizes.shape != kept.shape:
            raise InputError(
                f"sizes must be a (b, V) tensor like kept {tuple(kept.shape)}, got "
                f"{tuple(sizes.shape) if isinstance(sizes, torch.Tensor) else type(sizes).__name__}"
            )
        w = sizes.detach().to(torch.float64).cpu()
        if not bool((w[kept] >= 1).all()) or not bool(torch.isfinite(w[kept]).all()):
            raise InputError("sizes must be finite and at least 1 on the kept tokens (a token stands for itself)")
    kept, labels = kept.cpu(), labels.cpu()
    w = w * kept
    n_lab = labels.sum(dim=1).to(torch.float64)
    kept_share = (w * labels).sum(dim=1) / w.sum(dim=1)
    true_share = n_lab / labels.shape[1]
    nan = torch.full_like(true_share, math.nan)
    return ShareBias(torch.where(n_lab > 0, kept_share, nan), torch.where(n_lab > 0, true_share, nan))


def keep_mask(kept_positions: torch.Tensor, visual_mask: torch.Tensor) -> torch.Tensor:
    """``(b, V)`` bool over the visual tokens (in prompt order) from ``(b, k)`` original sequence positions.

    Args:
        kept_positions: ``(b, k)`` long, positions in the prompt (``Reduction.kept_positions[point]``).
        visual_mask: ``(b, T)`` bool, the prompt's visual tokens (the same ``V`` in every row).
    """
    vm = visual_mask.bool().cpu()
    counts = vm.sum(dim=1)
    if vm.ndim != 2 or not bool((counts == counts[0]).all()):
        raise InputError("visual_mask must be (b, T) with the same number of visual tokens V in every row")
    pos = kept_positions.cpu().long()
    if pos.ndim != 2 or pos.shape[0] != vm.shape[0] or not bool(vm.gather(1, pos.clamp(0, vm.shape[1] - 1)).all()):
        raise InputError("kept_positions must be (b, k) positions of visual tokens of the same prompts")
    rank = vm.long().cumsum(dim=1) - 1  # [b, T] visual index of each visual position
    out = torch.zeros(vm.shape[0], int(counts[0]), dtype=torch.bool)
    return out.scatter_(1, rank.gather(1, pos), True)


def reduction_keep_sets(reduction: Any) -> dict[int, tuple[torch.Tensor, torch.Tensor | None]]:
    """Prune point → ``(kept (b, V) bool, sizes (b, V) float or None)`` of the last prefill of a reduction.

    ``sizes`` is read from the stage when the engine records merge sizes (``Stage.sizes``, ``combine: merge``):
    the size of each carried token, scattered onto the visual tokens it kept (1 elsewhere); None for a drop.
    """
    vm = reduction.visual_mask
    if vm is None or not reduction.stages:
        raise InputError("no prefill has run under this reduction yet: run model(...) inside it first")
    out = {}
    points = reduction.kept_positions
    for stage in reduction.stages[1:]:
        kept = keep_mask(points[stage.point], vm)
        sizes = getattr(stage, "sizes", None)
        if sizes is not None:
            is_visual = vm.cpu().gather(1, stage.index.cpu())  # [b, T'] carried tokens that are visual
            carried = sizes.detach().cpu().to(torch.float64)[is_visual].view(kept.shape[0], -1)  # [b, k]
            sizes = torch.ones(kept.shape, dtype=torch.float64)
            sizes[kept] = carried.reshape(-1)  # kept is in increasing position order, as stage.index is
        out[stage.point] = (kept, sizes)
    return out


# Query specificity -----------------------------------------------------------------------------------
def _check_groups(groups: Any, n: int) -> torch.Tensor:
    if not isinstance(groups, torch.Tensor) or groups.ndim != 2 or groups.shape[1] < 2 or groups.shape[0] == 0:
        raise InputError(
            "groups must be a (n_videos, n_questions) tensor of sample indices, at least two questions a video: "
            "each row the samples that show one video under different questions (question_sets builds them)"
        )
    g = groups.long()
    if bool((g < 0).any()) or bool((g >= n).any()):
        raise InputError(
            f"groups index samples 0..{n - 1} of the cache, got indices from {int(g.min())} to {int(g.max())}"
        )
    return g


def query_specificity(cache: ScoreCache, groups: torch.Tensor) -> dict[int, torch.Tensor]:
    """Per scored block, the mean Spearman ρ between the importance of one video under different questions.

    Args:
        cache: importance of ``N`` samples (``cache[block]: (N, V)``), recorded without a reduction.
        groups: ``(n_videos, n_questions)`` long, indices into the cache's samples: row ``v`` lists the samples
            that show video ``v``, each under another question.

    Returns:
        Block → ``(n_videos,)`` float64: each video's ρ averaged over its question pairs (NaN where every pair's
        vectors are constant). 1.0: the block's ranking ignores the question.
    """
    g = _check_groups(groups, cache.batch_size)
    out = {}
    for block in cache.layers:
        s = cache[block][g].detach().cpu()  # [n_videos, n_questions, V]
        pairs = [spearman(s[:, i], s[:, j]) for i, j in itertools.combinations(range(g.shape[1]), 2)]
        out[block] = torch.stack(pairs).nanmean(dim=0)  # [n_videos]
    return out


# Step sizes --------------------------------------------------------------------------------------------
@contextmanager
def capture_steps(model: nn.Module) -> Iterator[dict[int, torch.Tensor]]:
    """Record every Mamba block's step size ``Δ`` during the forwards run inside the context.

    A forward hook on each mixer's ``in_proj`` rebuilds ``Δ = softplus(dt + dt_bias)`` (clamped to the layer's
    limits; Mamba-1: its ``dt_proj``) from the projection (:func:`hybridreduce.scoring.mamba.mamba2_primitives`),
    so it works on the torch path and on mamba-ssm's kernels alike. The hooks are removed in ``finally``.

    Yields:
        A dict block → ``(b, T)`` float32 ``Δ`` averaged over heads (channels), of the latest forward.
    """
    from hybridreduce.adapters import get_adapter
    from hybridreduce.scoring.mamba import mamba1_primitives, mamba2_primitives

    specs = [s for s in get_adapter(model).blocks if s.ssm is not None]
    steps: dict[int, torch.Tensor] = {}

    def hook_for(spec):
        def hook(module, args, output):
            with torch.no_grad():
                if spec.ssm_type == "mamba1":
                    dt = mamba1_primitives(spec.ssm, output, None).dt  # [b, T, c]
                else:
                    dt = mamba2_primitives(spec.ssm, output, None, with_x=False).dt  # [b, T, h]
            steps[spec.index] = dt.mean(dim=-1).detach().cpu()

        return hook

    handles = []
    try:
        for spec in specs:
            handles.append(spec.ssm.in_proj.register_forward_hook(hook_for(spec)))
        yield steps
    finally:
        for h in handles:
            h.remove()


def step_correlation(cache: ScoreCache, steps: Mapping[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    """Per Mamba block, the Spearman ρ between its importance and its step size on the visual tokens.

    Args:
        cache: importance of ``N`` samples, ``cache[block]: (N, V)`` at ``cache.positions(block)``.
        steps: block → ``(N, T)`` ``Δ`` averaged over heads, of the same forwards (:func:`capture_steps`).

    Returns:
        Block → ``(N,)`` float64 ρ, for every block of ``steps`` that the cache scored.
    """
    blocks = [b for b in cache.layers if b in steps]
    if not blocks:
        raise InputError(
            f"no Mamba block has both scores and step sizes (scored {cache.layers}, steps "
            f"{sorted(steps)}); record both in the same forwards"
        )
    out = {}
    for block in blocks:
        pos = cache.positions(block).cpu()
        dt = steps[block]
        if dt.ndim != 2 or dt.shape[0] != pos.shape[0] or dt.shape[1] <= int(pos.max()):
            raise InputError(
                f"steps[{block}] must be (N, T) over the cache's {pos.shape[0]} prompts, got {tuple(dt.shape)}"
            )
        out[block] = spearman(cache[block].detach().cpu(), dt.gather(1, pos))
    return out


def block_summary(values: Mapping[int, torch.Tensor], kinds: Sequence[str]) -> list[dict[str, Any]]:
    """``[{"block", "kind", "mean", "sem", "std", "min", "max", "n"}]`` of per-block values (block order)."""
    return [{"block": b, "kind": kinds[b]} | summarise(v) for b, v in sorted(values.items())]


# The embedded toy model --------------------------------------------------------------------------------
def question_sets(dataset: Any, videos: Sequence[int], n_questions: int, seed: int = 0) -> tuple[dict, torch.Tensor]:
    """One batch holding each video of ``videos`` under ``n_questions`` distinct questions.

    The first question is the item's own; the others are :func:`~hybridreduce.toy.questions.follow_up_questions`
    of the same video, drawn until distinct. A video that allows fewer distinct questions is left out.

    Args:
        dataset: a :class:`~hybridreduce.toy.ToyDataset`.
        videos: its item indices.
        n_questions: questions a video, at least 2.
        seed: the follow-up questions' draws.

    Returns:
        ``(batch, groups)``: the collated batch (``ToyDataset.batch``'s keys) and ``(n_videos, n_questions)``
        long indices of its rows, one row of ``groups`` a video.
    """
    from hybridreduce.toy.encoding import collate, encode_sample
    from hybridreduce.toy.questions import follow_up_questions

    if isinstance(n_questions, bool) or not isinstance(n_questions, int) or n_questions < 2:
        raise InputError(f"n_questions must be an integer >= 2 (one video, several questions), got {n_questions!r}")
    rng = np.random.default_rng(seed)
    rows, groups = [], []
    for i in videos:
        sample = dataset[i]
        asked = [(tuple(sample.question), sample.qtype, sample.answer)]
        for _ in range(8 * n_questions):  # draws until distinct; a video allows a few dozen questions at least
            if len(asked) == n_questions:
                break
            words, qtype, answer = follow_up_questions(sample, dataset.cfg, rng, 1)[0]
            if tuple(words) not in {a[0] for a in asked}:
                asked.append((tuple(words), qtype, answer))
        if len(asked) < n_questions:
            continue
        groups.append(list(range(len(rows), len(rows) + n_questions)))
        for words, qtype, answer in asked:
            other = replace(sample, question=list(words), qtype=qtype, answer=answer, relevant=[])
            rows.append(encode_sample(other, dataset.vocab, dataset.cfg))
    if not groups:
        raise InputError(f"none of the {len(videos)} videos allows {n_questions} distinct questions; ask fewer")
    return collate(rows), torch.tensor(groups, dtype=torch.long)


def asked_colour_labels(dataset: Any, indices: Sequence[int]) -> torch.Tensor:
    """``(b, V)`` bool: the tokens of the colour(s) each item's question names (``count``'s counted colour, ...);
    a ``colour`` question names none, so its row is its one asked token (its relevant token)."""
    from hybridreduce.toy.questions import COLOUR_SLOTS, QUESTIONS

    from .retention import token_colours

    cfg = dataset.cfg
    rows = []
    for i in indices:
        sample = dataset[i]
        q = QUESTIONS[sample.qtype]
        named = {w for w, t in zip(sample.question, q.template, strict=True) if t[1:-1] in COLOUR_SLOTS}
        if named:
            colours = token_colours(sample, cfg)
            ids = torch.tensor([cfg.colours.index(c) for c in sorted(named)])
            rows.append((colours[:, None] == ids[None, :]).any(dim=1))
        else:
            row = torch.zeros(cfg.n_visual, dtype=torch.bool)
            for t, r, c in sample.relevant:
                row[t * cfg.tokens_per_frame + r * cfg.cols + c] = True
            rows.append(row)
    return torch.stack(rows)


@dataclass
class Diagnostics:
    """What the diagnostics measured (:func:`diagnostics_dict` is its JSON form); ``share`` and ``share_by_qtype``
    stay empty without token labels (a model other than a toy one)."""

    kinds: list[str]
    share: dict[str, dict[int, ShareBias]] = field(default_factory=dict)  # selector → prune point → bias
    share_by_qtype: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)  # selector → point → qtype → …
    specificity: dict[int, torch.Tensor] = field(default_factory=dict)
    steps: dict[int, torch.Tensor] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)


#: The oracle keep sets of the share-bias measurement beside the model's own schedules, name → labelled first:
#: one that keeps the labelled tokens first (the audit's relevant-first cut) and a seeded random set.
ORACLES = {"oracle_labelled_first": True, "oracle_random": False}


def oracle_keep(labels: torch.Tensor, keep: float, first: bool, seed: int = 0) -> torch.Tensor:
    """``(b, V)`` bool keep sets of ``ceil(keep·V)`` tokens: the labelled ones first (``first``) then random, or
    uniformly random (``first=False``)."""
    b, V = labels.shape
    k = math.ceil(keep * V)
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(b, V, generator=g, dtype=torch.float64)
    priority = noise + (labels.to(torch.float64) if first else 0.0)  # labelled tokens rank above every other
    top = priority.topk(k, dim=1).indices
    return torch.zeros(b, V, dtype=torch.bool).scatter_(1, top, True)


#: The batch entries a scoring forward reads.
_FORWARD_KEYS = ("input_ids", "attention_mask", "visual_mask", "pixels")


@torch.no_grad()
def score_question_sets(
    model: nn.Module, batch: dict, groups: torch.Tensor, scorer: str = "decay_free", batch_size: int = 32
) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """``(query specificity, step correlation)``, block → per-video and per-sample ρ, of one scoring pass over a
    batch of question sets (:func:`question_sets`, :func:`prompt_question_sets`), without a reduction.

    Args:
        batch: ``input_ids``, ``attention_mask``, ``visual_mask`` ``(N, T)`` and, for a toy model, ``pixels``.
        groups: ``(n_videos, n_questions)`` rows of ``batch`` that show one video.
    """
    from hybridreduce import capture

    from .sections import concat_caches

    device = next(model.parameters()).device
    caches, steps = [], []
    for start in range(0, batch["input_ids"].shape[0], batch_size):
        part = {k: batch[k][start : start + batch_size].to(device) for k in _FORWARD_KEYS if k in batch}
        am = part["attention_mask"]
        kwargs = {"attention_mask": am, "logits_to_keep": 1}
        if "pixels" in part:
            kwargs["pixel_values"] = part["pixels"]
        with capture(model, part["visual_mask"], scorer=scorer, attention_mask=am) as cache, capture_steps(model) as dt:
            model(part["input_ids"], **kwargs)
        caches.append(cache.cpu())
        steps.append(dict(dt))
    cache = concat_caches(caches)
    specificity = query_specificity(cache, groups)
    if not steps[0]:  # no Mamba block
        return specificity, {}
    return specificity, step_correlation(cache, {b: torch.cat([s[b] for s in steps]) for b in steps[0]})


def prompt_question_sets(
    vocab: int, prefix: int, visual: int, question: int, n_videos: int, n_questions: int, seed: int = 0
) -> tuple[dict, torch.Tensor]:
    """Question sets of random prompts (:func:`hybridreduce.tiny_models.make_prompt`): each prompt's prefix and visual
    tokens kept, its ``question`` tokens drawn again ``n_questions`` times. Returns ``(batch, groups)`` like
    :func:`question_sets`."""
    from hybridreduce.tiny_models import make_prompt

    g = torch.Generator().manual_seed(seed)
    rows = []
    for v in range(n_videos):
        base = make_prompt(vocab, prefix, visual, question, seed=seed * 1_000_003 + v)
        for _ in range(n_questions):
            ids = base.input_ids.clone()
            ids[0, prefix + visual :] = torch.randint(3, vocab, (question,), generator=g)
            rows.append((ids, base.visual_mask))
    ids = torch.cat([r[0] for r in rows])
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "visual_mask": torch.cat([r[1] for r in rows])}
    return batch, torch.arange(n_videos * n_questions).view(n_videos, n_questions)


@torch.no_grad()
def toy_share_bias(
    model: nn.Module,
    dataset: Any,
    samples: int,
    schedules: Mapping[str, Any],
    keep: float,
    scorer: str = "decay_free",
    batch_size: int = 32,
    seed: int = 0,
) -> tuple[dict[str, dict[int, ShareBias]], dict[str, dict[int, dict[str, Any]]]]:
    """Share bias of the asked colour (:func:`asked_colour_labels`) over the first ``samples`` items of a toy
    dataset: keep sets of each of ``schedules`` (name → :class:`~hybridreduce.schedule.Schedule`, the model's own
    query-conditioned selection, every cut) and of the two oracles (:data:`ORACLES`) at ``keep``.

    Returns:
        ``(selector → prune point → ShareBias, selector → prune point → qtype → summary)``; the oracles' point is 0.
    """
    from hybridreduce import reduce

    clash = sorted(set(schedules) & set(ORACLES))
    if clash:
        raise InputError(f"schedule names {clash} are taken by the oracle keep sets; rename them")
    kept: dict[str, dict[int, list]] = {s: {} for s in (*schedules, *ORACLES)}
    device = next(model.parameters()).device
    labels_all, qtypes = [], []
    for start in range(0, samples, batch_size):
        idx = list(range(start, min(start + batch_size, samples)))
        batch = dataset.batch(idx)
        labels = asked_colour_labels(dataset, idx)
        labels_all.append(labels)
        qtypes += batch["qtype"]
        ids, pixels, am = (batch[k].to(device) for k in ("input_ids", "pixels", "attention_mask"))
        for name, schedule in schedules.items():
            with reduce(model, schedule, scorer=scorer) as red:
                model(ids, pixel_values=pixels, attention_mask=am, logits_to_keep=1)
            for point, (k, sizes) in reduction_keep_sets(red).items():
                kept[name].setdefault(point, []).append((k, sizes))
        for name, first in ORACLES.items():
            kept[name].setdefault(0, []).append((oracle_keep(labels, keep, first, seed + start), None))
    labels = torch.cat(labels_all)
    masks = {q: torch.tensor([t == q for t in qtypes]) for q in dict.fromkeys(qtypes)}
    share: dict[str, dict[int, ShareBias]] = {}
    by_qtype: dict[str, dict[int, dict[str, Any]]] = {}
    for name, per_point in kept.items():
        share[name] = {}
        for point, parts in per_point.items():
            k = torch.cat([p[0] for p in parts])
            sizes = (
                None
                if all(p[1] is None for p in parts)
                else torch.cat([torch.ones(p[0].shape, dtype=torch.float64) if p[1] is None else p[1] for p in parts])
            )
            share[name][point] = share_bias(k, labels, sizes)
        by_qtype[name] = {
            point: {q: ShareBias(bias.kept_share[m], bias.true_share[m]).summary() for q, m in masks.items()}
            for point, bias in share[name].items()
        }
    return share, by_qtype


def diagnose_toy(
    model: nn.Module,
    dataset: Any,
    samples: int,
    videos: int,
    n_questions: int,
    schedules: Mapping[str, Any],
    keep: float,
    scorer: str = "decay_free",
    batch_size: int = 32,
    seed: int = 0,
) -> Diagnostics:
    """The three measurements on a toy checkpoint and one split: :func:`toy_share_bias` over the first ``samples``
    items, and :func:`score_question_sets` over the first ``videos`` items each under ``n_questions`` questions
    (:func:`question_sets`), scored by ``scorer``."""
    from hybridreduce import get_adapter

    out = Diagnostics(list(get_adapter(model).kinds))
    out.settings = {
        "samples": samples,
        "videos": videos,
        "questions": n_questions,
        "keep": keep,
        "scorer": scorer,
        "schedules": {n: s.to_dict() for n, s in schedules.items()},
        "seed": seed,
    }
    out.share, out.share_by_qtype = toy_share_bias(model, dataset, samples, schedules, keep, scorer, batch_size, seed)
    batch, groups = question_sets(dataset, range(videos), n_questions, seed)
    out.specificity, out.steps = score_question_sets(model, batch, groups, scorer, batch_size)
    return out


def diagnostics_dict(diag: Diagnostics) -> dict[str, Any]:
    """The metrics.json ``diagnostics`` section: ``block_kinds``, ``settings``, ``share_bias`` (selector → prune
    point → :meth:`ShareBias.to_dict`) and ``share_bias_by_qtype`` (selector → prune point → question type →
    summary) when measured, ``query_specificity`` and ``step_correlation`` (:func:`block_summary` rows)."""
    out: dict[str, Any] = {"block_kinds": diag.kinds, "settings": diag.settings}
    if diag.share:
        out["share_bias"] = {
            name: {str(point): bias.to_dict() for point, bias in per.items()} for name, per in diag.share.items()
        }
        out["share_bias_by_qtype"] = {
            name: {str(point): per_q for point, per_q in per.items()} for name, per in diag.share_by_qtype.items()
        }
    out["query_specificity"] = block_summary(diag.specificity, diag.kinds)
    out["step_correlation"] = block_summary(diag.steps, diag.kinds)
    return out
