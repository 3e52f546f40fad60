"""Stateful retention: after visual tokens are dropped at block ℓ, what of them survives in the kept stream?

Shapes use the dimension letters of :mod:`hybridreduce.glossary` (``N``: the samples of a probe split, train or
test; ``n_targets``: the outputs of a probe, 1 or one per colour). ℓ is the cut block (tokens are dropped right
before block ℓ runs), ``K`` the set of the ``k`` visual tokens it keeps and ``D = V \\ K`` the dropped set.

What is run. For each *configuration* ``(ℓ, keep, selector)`` a single cut before block ℓ keeps
``k = max(1, round(keep·V))`` visual tokens of every sample, chosen by the selector (``progressive``: the
top-k of the unified attention/Mamba score of the most recent scoring block before ℓ; ``random``: a seeded
uniform draw; ``uniform``: an even stride). Text tokens are never dropped. Every sample is then run three
ways, and the *same* positions are read out of each:

    condition     what the model sees                                             reads out
    full          every token in every block (no cut)                              upper bound
    cut           every token in blocks < ℓ, only K (and the text) from ℓ on       the quantity of interest
    input_drop    only K (and the text) from block 0 on: D never entered the model  the control

``input_drop`` is the cut at block 0 with the cut's own keep set: the kept rows of the input embeddings (the
toy vision encoder embeds every patch with its own frame/row/column embedding before anything is dropped, so
the kept tokens look exactly as in the full run) at their original position ids. So ``cut − input_drop`` is
what blocks ``< ℓ`` wrote about the dropped tokens into the kept stream — the residual rows of the kept
tokens and of the text, i.e. what the Mamba recurrent states and the attention blocks moved there before
the cut; ``full − cut`` is what the cut lost.

Features (the final-layer hidden states, after the last norm, i.e. what the LM head reads; float64):
    ``answer``        ``(d,)`` the last position, the ``<answer>`` marker (text: present in every condition)
    ``visual_mean``   ``(d,)`` the mean over the kept visual tokens K (present in every condition)

Targets (properties of the dropped tokens that the kept tokens do not show; from :attr:`Sample.events`):
    ``dropped_event_tokens``   number of event (non-background) tokens in D: ridge regression, metric
                               held-out **R²** (``1 − SSE/SST`` with the test set's own mean); the baseline is
                               the R² of predicting the training mean (≈ 0, usually slightly negative).
    ``dropped_only_colours``   per colour ``c``: 1 when ``c`` is drawn on some token of D and on no token of
                               K (multi-label, one output per colour of the config): a ridge classifier on
                               0/1 targets; metric the **AUC** averaged over the colours with both labels in
                               the training and the test split (chance 0.5), plus the accuracy (threshold 0.5)
                               over all (sample, colour) pairs against the majority label of each colour in
                               the training split (``majority``).

Probes (:func:`fit_ridge`): closed-form ridge regression on features standardised with the training split's
mean and deviation, in float64, the penalty of each output chosen from :data:`ALPHAS` by its exact
leave-one-out error on the training split; no iterative optimiser, so a run is deterministic. Every held-out
score comes with a standard error (:func:`bootstrap_stderr`: the test split resampled with replacement, the
probe kept fixed; seeded, so deterministic too).

How to read a probe row: ``score`` above ``baseline`` in ``input_drop`` is what the kept tokens and the
question reveal anyway (for instance the question names the colour a ``when``/``where``/``count`` question
asks about, and that colour is in the video: if its shape was wholly dropped, the text still says it
exists); ``cut`` above ``input_drop`` is the information about the dropped tokens that the stateful stream
carried past the cut; ``full`` is what the same read-out gets when nothing is dropped. :meth:`RetentionReport.summary`
lists ``retained = cut − input_drop`` (with ``retained_stderr``) and ``lost = full − cut``. Probes are fitted on
the first ``n_train`` samples of the dataset and scored on the next ``n_test``; each configuration has its own
keep sets, hence its own targets, so scores compare across conditions of one configuration, not across
configurations.

Task accuracy (:class:`TaskGroup`): the multiple-choice accuracy (:class:`hybridreduce.toy.evaluate.AnswerSheet`)
of the same forwards over all ``n_train + n_test`` samples, split by how many of the sample's ground-truth
relevant tokens (``relevant_visual``) the cut kept: ``all`` (none dropped), ``some``, ``none`` (every relevant
token dropped), and ``total``. Each group reports ``n`` and the accuracy under the cut, under input_drop and
at full tokens on the *same* samples: in the ``none`` group, ``accuracy`` above ``input_drop_accuracy``
means the model answered from what the stream retained of tokens it no longer carries. With ``keep = 1``
nothing is dropped: every sample is in ``all``, the other groups have ``n = 0`` and accuracy None, the
targets are constant and their scores None (with a note).

Public API: :func:`retention_probe` → :class:`RetentionReport` (``to_dict``, ``to_rows``, ``summary``), and
the probe fitting itself: :func:`fit_ridge` (:class:`RidgeProbe`), :func:`r2_score`, :func:`roc_auc`,
:func:`regression_probe`, :func:`multilabel_probe`, :func:`bootstrap_stderr`; :func:`dropped_targets` computes the
targets.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from hybridreduce import Schedule, get_adapter, reduce
from hybridreduce.engine import scoring_blocks
from hybridreduce.errors import InputError

__all__ = [
    "ALPHAS",
    "BOOTSTRAP_ROUNDS",
    "CONDITIONS",
    "FEATURES",
    "GROUPS",
    "MIN_TEST",
    "MIN_TRAIN",
    "SELECTORS",
    "TARGETS",
    "ProbeResult",
    "RetentionReport",
    "RidgeProbe",
    "TaskGroup",
    "bootstrap_stderr",
    "dropped_targets",
    "fit_ridge",
    "multilabel_probe",
    "r2_score",
    "regression_probe",
    "retention_probe",
    "roc_auc",
    "token_colours",
]

SELECTORS = ("progressive", "random", "uniform")
CONDITIONS = ("full", "cut", "input_drop")
FEATURES = ("answer", "visual_mean")
TARGETS = ("dropped_event_tokens", "dropped_only_colours")
GROUPS = ("all", "some", "none", "total")
MIN_TRAIN = 8  # a probe needs a few samples per fitted direction to choose its ridge penalty by leave-one-out
MIN_TEST = 4
#: Ridge penalties tried, relative to the number of training samples (standardised features have ‖x_j‖² = N).
ALPHAS = tuple(10.0**e for e in torch.linspace(-4, 3, 15).tolist())
#: Resamples of the test split behind a probe score's standard error (:func:`bootstrap_stderr`).
BOOTSTRAP_ROUNDS = 200


# Probe fitting (float64) --------------------------------------------------------------------------
@dataclass
class RidgeProbe:
    """A ridge regression on standardised features, one penalty per output.

    Attributes:
        mean, scale: ``(d,)`` training mean and standard deviation of the features (1 where constant).
        weight: ``(d, n_targets)`` coefficients on the standardised features.
        bias: ``(n_targets,)`` intercept (the training mean of the targets; it is not penalised).
        alpha: ``(n_targets,)`` chosen penalty of each output, relative to the number of training samples.
    """

    mean: torch.Tensor
    scale: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    alpha: torch.Tensor

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``(N, d)`` → ``(N, n_targets)`` float64 predictions."""
        x = _features(x, "x")
        if x.shape[1] != self.mean.shape[0]:
            raise InputError(f"the probe was fitted on {self.mean.shape[0]} features, got {x.shape[1]}")
        return ((x - self.mean) / self.scale) @ self.weight + self.bias

    @property
    def coef(self) -> torch.Tensor:
        """``(d, n_targets)`` coefficients on the raw features."""
        return self.weight / self.scale[:, None]

    @property
    def intercept(self) -> torch.Tensor:
        """``(n_targets,)`` intercept on the raw features."""
        return self.bias - self.mean @ self.coef


def _features(x: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.ndim != 2:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise InputError(f"{name} must be a (samples, features) tensor, got {got}")
    x = x.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(x).all()):
        raise InputError(f"{name} holds non-finite values")
    return x


def fit_ridge(x: torch.Tensor, y: torch.Tensor, alphas: Sequence[float] = ALPHAS) -> RidgeProbe:
    """Closed-form ridge regression, penalty chosen per output by exact leave-one-out error.

    Features are standardised with the training mean and standard deviation; the intercept is the mean of
    ``y`` and is not penalised. With the thin SVD ``X_c = U S Wᵀ`` of the standardised features and
    ``λ = α·N``: coefficients ``W diag(s/(s²+λ)) Uᵀ y_c``; leave-one-out residuals ``e_i / (1 − h_ii)`` with
    ``h_ii = 1/N + Σ_r U_ir² s_r²/(s_r²+λ)`` (the intercept's share is ``1/N`` because ``X_c ⊥ 1``). All in
    float64.

    Args:
        x: ``(N, d)`` features.
        y: ``(N,)`` or ``(N, n_targets)`` targets.
        alphas: penalties to try, relative to ``N``.

    Returns:
        :class:`RidgeProbe` with ``n_targets`` outputs (1 for a vector ``y``).

    Raises:
        InputError: shapes that do not match, fewer than 3 samples, non-finite values, no penalty.
    """
    x = _features(x, "x")
    y = y.detach().to("cpu", torch.float64)
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2 or y.shape[0] != x.shape[0]:
        raise InputError(f"y must be ({x.shape[0]},) or ({x.shape[0]}, outputs) to match x, got {tuple(y.shape)}")
    if not bool(torch.isfinite(y).all()):
        raise InputError("y holds non-finite values")
    N = x.shape[0]
    if N < 3:
        raise InputError(f"a ridge probe needs at least 3 training samples, got {N}")
    alphas = [float(a) for a in alphas]
    if not alphas or any(not a > 0 for a in alphas):
        raise InputError(f"alphas must be a non-empty list of positive penalties, got {alphas}")
    mean = x.mean(dim=0)
    std = x.std(dim=0, correction=0)
    scale = torch.where(std > 1e-12 * (1 + mean.abs()), std, torch.ones_like(std))
    xs = (x - mean) / scale  # (N, d), columns centred
    y_mean = y.mean(dim=0)
    yc = y - y_mean  # (N, n_targets)
    u, s, vh = torch.linalg.svd(xs, full_matrices=False)  # (N, rank), (rank,), (rank, d)
    uty = u.T @ yc  # (rank, n_targets)
    s2 = s**2
    best_err = torch.full((y.shape[1],), math.inf, dtype=torch.float64)
    best_alpha = torch.full((y.shape[1],), alphas[0], dtype=torch.float64)
    weight = torch.zeros(x.shape[1], y.shape[1], dtype=torch.float64)
    for a in alphas:
        lam = a * N
        shrink = s2 / (s2 + lam)  # (rank,)
        fitted = u @ (shrink[:, None] * uty)  # (N, n_targets)
        h = 1.0 / N + (u**2) @ shrink  # (N,)
        loo = (yc - fitted) / (1.0 - h).clamp(min=1e-12)[:, None]
        err = (loo**2).mean(dim=0)  # (n_targets,)
        err = torch.where(torch.isfinite(err), err, torch.full_like(err, math.inf))
        better = err < best_err
        if bool(better.any()):
            w = vh.T @ ((s / (s2 + lam))[:, None] * uty)  # (d, n_targets)
            weight[:, better] = w[:, better]
            best_err = torch.where(better, err, best_err)
            best_alpha = torch.where(better, torch.full_like(best_alpha, a), best_alpha)
    return RidgeProbe(mean, scale, weight, y_mean, best_alpha)


def r2_score(y_true: torch.Tensor, y_pred: torch.Tensor) -> float | None:
    """``1 − Σ(y − ŷ)² / Σ(y − ȳ)²`` over ``(N,)`` values, ``ȳ`` their own mean; None when ``y`` is constant."""
    y, p = y_true.to(torch.float64).reshape(-1), y_pred.to(torch.float64).reshape(-1)
    sst = ((y - y.mean()) ** 2).sum().item()
    if sst <= 1e-12 * max(1.0, (y**2).sum().item()):
        return None
    return 1.0 - ((y - p) ** 2).sum().item() / sst


def _average_ranks(x: torch.Tensor) -> torch.Tensor:
    """``(N,)`` ranks 1..N of ``x``, ties sharing their mean rank."""
    order = torch.argsort(x, stable=True)
    sorted_x = x[order]
    _, inverse, counts = torch.unique_consecutive(sorted_x, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).to(torch.float64)  # last rank of each tie group
    mean_rank = ends - (counts.to(torch.float64) - 1) / 2
    ranks = torch.empty_like(x, dtype=torch.float64)
    ranks[order] = mean_rank[inverse]
    return ranks


def roc_auc(labels: torch.Tensor, scores: torch.Tensor) -> float | None:
    """Area under the ROC curve of ``(N,)`` scores for ``(N,)`` 0/1 labels (Mann–Whitney, ties count ½).

    Returns None when only one label occurs.
    """
    labels = labels.reshape(-1).bool()
    scores = scores.reshape(-1).to(torch.float64)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = _average_ranks(scores)
    return (ranks[labels].sum().item() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def bootstrap_stderr(
    score: Callable[[torch.Tensor], float | None], n: int, rounds: int = BOOTSTRAP_ROUNDS, seed: int = 0
) -> float | None:
    """Bootstrap standard error of a held-out score over its ``n`` test samples.

    Draws ``rounds`` resamples of ``n`` test indices with replacement from a generator seeded with ``seed``
    (so the result is deterministic) and returns the sample standard deviation of ``score`` over the
    resamples on which it is defined. The probe is not refitted: this is the uncertainty that comes from the
    finite test split, not from the fit.

    Args:
        score: ``idx`` (``n`` long test indices) → the score on those test rows, or None where undefined (e.g. one
            label only).
        n: test samples.

    Returns:
        The standard error, or None when fewer than two resamples give a score.
    """
    generator = torch.Generator().manual_seed(seed)
    values = [score(torch.randint(n, (n,), generator=generator)) for _ in range(rounds)]
    defined = torch.tensor([v for v in values if v is not None], dtype=torch.float64)
    return defined.std(correction=1).item() if defined.numel() >= 2 else None


def regression_probe(
    x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor
) -> dict[str, Any]:
    """Ridge regression of ``(N,)`` targets from ``(N, d)`` features, scored on the test split.

    Returns:
        ``{"metric": "r2", "score", "stderr", "baseline", "accuracy": None, "majority": None, "n_labels", "note"}``:
        ``score`` the held-out R² of the probe and ``stderr`` its :func:`bootstrap_stderr`, ``baseline`` the
        held-out R² of the training mean; all None (and a note) when the test targets are constant.
    """
    probe = fit_ridge(x_train, y_train)
    pred = probe.predict(x_test)[:, 0]
    y_test = y_test.to(torch.float64)
    score = r2_score(y_test, pred)
    stderr = None if score is None else bootstrap_stderr(lambda i: r2_score(y_test[i], pred[i]), len(y_test))
    base = r2_score(y_test, torch.full_like(y_test, y_train.to(torch.float64).mean().item()))
    note = None if score is not None else "constant target on the test split"
    n_labels = 0 if score is None else 1
    return {
        "metric": "r2",
        "score": score,
        "stderr": stderr,
        "baseline": base,
        "accuracy": None,
        "majority": None,
        "n_labels": n_labels,
        "note": note,
    }


def multilabel_probe(
    x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor
) -> dict[str, Any]:
    """Ridge classifiers of ``(N, n_targets)`` 0/1 labels from ``(N, d)`` features, scored on the test split.

    Returns:
        ``{"metric": "auc", "score", "stderr", "baseline": 0.5, "accuracy", "majority", "n_labels", "note"}``:
        ``score`` the mean AUC over the ``n_labels`` outputs with both labels in both splits (None when there is
        none) and ``stderr`` its :func:`bootstrap_stderr` (over the same outputs); ``accuracy`` the share of
        correct (sample, output) pairs at threshold 0.5; ``majority`` the same for predicting each output's
        majority training label (ties → 0).
    """
    y_train = y_train.to(torch.float64)
    y_test = y_test.to(torch.float64)
    pred = fit_ridge(x_train, y_train).predict(x_test)  # (n_test, n_targets)
    accuracy = ((pred >= 0.5) == y_test.bool()).to(torch.float64).mean().item()
    majority_label = y_train.mean(dim=0) > 0.5  # (n_targets,)
    majority = (majority_label[None, :] == y_test.bool()).to(torch.float64).mean().item()
    both_in_train = [j for j in range(y_test.shape[1]) if 0 < y_train[:, j].sum() < y_train.shape[0]]
    used = [j for j in both_in_train if roc_auc(y_test[:, j], pred[:, j]) is not None]
    score = _mean_auc(y_test, pred, used)
    stderr = None if score is None else bootstrap_stderr(lambda i: _mean_auc(y_test[i], pred[i], used), len(y_test))
    note = None if used else "no output has both labels in both splits"
    return {
        "metric": "auc",
        "score": score,
        "stderr": stderr,
        "baseline": 0.5,
        "accuracy": accuracy,
        "majority": majority,
        "n_labels": len(used),
        "note": note,
    }


def _mean_auc(labels: torch.Tensor, scores: torch.Tensor, columns: list[int]) -> float | None:
    """Mean :func:`roc_auc` of ``(N, n_targets)`` scores for ``(N, n_targets)`` 0/1 labels over ``columns``,
    skipping a column whose labels are all equal; None when every column is skipped."""
    aucs = [auc for j in columns if (auc := roc_auc(labels[:, j], scores[:, j])) is not None]
    return sum(aucs) / len(aucs) if aucs else None


# Targets ------------------------------------------------------------------------------------------
def token_colours(sample, cfg) -> torch.Tensor:
    """``(V,)`` long: the index in ``cfg.colours`` of the shape drawn on each visual token, −1 on background."""
    out = torch.full((cfg.n_visual,), -1, dtype=torch.long)
    tpf = cfg.tokens_per_frame
    for event in sample.events:
        j = cfg.colours.index(event.colour)
        for t, r, c in event.tokens:
            out[t * tpf + r * cfg.cols + c] = j
    return out


def dropped_targets(colours: torch.Tensor, kept: torch.Tensor, n_colours: int) -> dict[str, torch.Tensor]:
    """The probe targets of one configuration.

    Args:
        colours: ``(b, V)`` long, colour index per visual token, −1 on background (:func:`token_colours`).
        kept: ``(b, V)`` bool, True at the visual tokens the cut kept.
        n_colours: number of colours (the outputs of ``dropped_only_colours``).

    Returns:
        ``dropped_event_tokens``: ``(b,)`` float64, event tokens among the dropped ones;
        ``dropped_only_colours``: ``(b, n_colours)`` float64 0/1, colour drawn on a dropped token and on no kept one.
    """
    if colours.shape != kept.shape:
        raise InputError(f"colours {tuple(colours.shape)} and kept {tuple(kept.shape)} must have the same shape")
    dropped = ~kept.bool()
    count = ((colours >= 0) & dropped).sum(dim=1).to(torch.float64)
    onehot = colours[..., None] == torch.arange(n_colours)[None, None, :]  # (b, V, n_colours)
    in_dropped = (onehot & dropped[..., None]).any(dim=1)
    in_kept = (onehot & kept.bool()[..., None]).any(dim=1)
    return {"dropped_event_tokens": count, "dropped_only_colours": (in_dropped & ~in_kept).to(torch.float64)}


# Report -------------------------------------------------------------------------------------------
@dataclass
class ProbeResult:
    """One probe: a (configuration, condition, feature, target).

    Attributes:
        block, kind: the cut block ℓ and its kind. keep: the requested share; n_kept: ``k``.
        selector: how the keep set was chosen. condition: one of :data:`CONDITIONS`.
        feature: one of :data:`FEATURES`. target: one of :data:`TARGETS`.
        metric: ``r2`` or ``auc``. score: held-out value (None when undefined, see ``note``); stderr: its
            bootstrap standard error (:func:`bootstrap_stderr`).
        baseline: held-out R² of the training mean, or 0.5 (AUC chance).
        accuracy, majority: classification accuracy of the probe and of the majority label (``auc`` only).
        n_labels: outputs the score averages over. target_mean: mean of the target over all samples
            (for colours: the mean positive rate).
    """

    block: int
    kind: str
    keep: float
    n_kept: int
    selector: str
    condition: str
    feature: str
    target: str
    metric: str
    score: float | None
    baseline: float | None
    accuracy: float | None
    majority: float | None
    n_labels: int
    target_mean: float
    note: str | None = None
    stderr: float | None = None


@dataclass
class TaskGroup:
    """Multiple-choice accuracy of one configuration's samples grouped by their surviving relevant tokens.

    Attributes:
        group: ``all`` (no relevant token dropped), ``some``, ``none`` (all dropped) or ``total``.
        n: samples in the group. accuracy, input_drop_accuracy, full_accuracy: accuracy of those samples under
            the cut, with the dropped tokens removed from the input, and at full tokens (None when ``n = 0``).
    """

    block: int
    kind: str
    keep: float
    n_kept: int
    selector: str
    group: str
    n: int
    accuracy: float | None
    input_drop_accuracy: float | None
    full_accuracy: float | None


@dataclass
class RetentionReport:
    """:func:`retention_probe` output.

    Attributes:
        blocks, keeps, selectors: the configurations (every combination is reported).
        block_kinds: kind of every block of the model.
        n_visual: ``V``. n_train, n_test: probe split sizes. colours: the outputs of ``dropped_only_colours``.
        probes: one :class:`ProbeResult` per (block, keep, selector, condition, feature, target).
        task: one :class:`TaskGroup` per (block, keep, selector, group).
        settings: seed, scorer, batch size.
    """

    blocks: list[int]
    keeps: list[float]
    selectors: list[str]
    block_kinds: list[str]
    n_visual: int
    n_train: int
    n_test: int
    colours: list[str]
    probes: list[ProbeResult] = field(default_factory=list)
    task: list[TaskGroup] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def probe(self, block: int, keep: float, selector: str, condition: str, feature: str, target: str) -> ProbeResult:
        """The one probe of these coordinates."""
        key = (block, float(keep), selector, condition, feature, target)
        for p in self.probes:
            if (p.block, p.keep, p.selector, p.condition, p.feature, p.target) == key:
                return p
        raise InputError(f"no probe for block {block}, keep {keep}, {selector}, {condition}, {feature}, {target}")

    def summary(self) -> list[dict[str, Any]]:
        """Per (block, keep, selector, feature, target): the three conditions' scores and standard errors side by
        side, with ``retained = cut − input_drop``, its ``retained_stderr`` (``sqrt(se_cut² + se_input_drop²)``:
        the two probes are scored on the same test samples, so this unpaired error is conservative) and
        ``lost = full − cut`` (None where a score is None)."""
        rows: dict[tuple, dict[str, Any]] = {}
        for p in self.probes:
            key = (p.block, p.keep, p.selector, p.feature, p.target)
            row = rows.setdefault(
                key,
                {
                    "block": p.block,
                    "kind": p.kind,
                    "keep": p.keep,
                    "n_kept": p.n_kept,
                    "selector": p.selector,
                    "feature": p.feature,
                    "target": p.target,
                    "metric": p.metric,
                },
            )
            row[f"score_{p.condition}"] = p.score
            row[f"stderr_{p.condition}"] = p.stderr
            row[f"baseline_{p.condition}"] = p.baseline
        out = []
        for row in rows.values():
            full, cut, drop = (row.get(f"score_{c}") for c in ("full", "cut", "input_drop"))
            row["retained"] = cut - drop if cut is not None and drop is not None else None
            se_cut, se_drop = row.get("stderr_cut"), row.get("stderr_input_drop")
            row["retained_stderr"] = math.hypot(se_cut, se_drop) if se_cut is not None and se_drop is not None else None
            row["lost"] = full - cut if full is not None and cut is not None else None
            out.append(row)
        return out

    def to_rows(self, table: str = "probe") -> list[dict[str, Any]]:
        """Flat rows with one set of keys per table, for CSV: ``probe`` (one per :class:`ProbeResult`),
        ``summary`` (:meth:`summary`) or ``task`` (one per :class:`TaskGroup`)."""
        if table == "probe":
            return [asdict(p) for p in self.probes]
        if table == "task":
            return [asdict(t) for t in self.task]
        if table == "summary":
            return self.summary()
        raise InputError(f"table must be 'probe', 'summary' or 'task', got {table!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (no NaN: undefined values are None)."""
        return {
            "blocks": list(self.blocks),
            "keeps": list(self.keeps),
            "selectors": list(self.selectors),
            "block_kinds": list(self.block_kinds),
            "n_visual": self.n_visual,
            "n_train": self.n_train,
            "n_test": self.n_test,
            "colours": list(self.colours),
            "conditions": list(CONDITIONS),
            "features": list(FEATURES),
            "targets": list(TARGETS),
            "settings": dict(self.settings),
            "probes": self.to_rows("probe"),
            "summary": self.summary(),
            "task": self.to_rows("task"),
        }


# Input checks -------------------------------------------------------------------------------------
def _check_model(model: nn.Module, dataset) -> None:
    from hybridreduce.toy import ToyDataset, ToyVLM

    if not isinstance(model, ToyVLM):
        raise InputError(
            f"retention_probe needs the embedded toy VLM (hybridreduce.toy.ToyVLM), got {type(model).__name__}: "
            "its targets and task groups come from the toy benchmark's ground truth (events, relevant tokens); "
            "load one with hybridreduce.toy.demo.load_toy"
        )
    if not isinstance(dataset, ToyDataset):
        raise InputError(f"retention_probe needs a hybridreduce.toy.ToyDataset, got {type(dataset).__name__}")
    cfg, mc = dataset.cfg, model.config
    if (mc.frames, mc.rows, mc.cols, mc.patch) != (cfg.frames, cfg.rows, cfg.cols, cfg.patch):
        raise InputError(
            f"the model was built for {mc.frames} frames of {mc.rows}x{mc.cols} patches of {mc.patch}px but the "
            f"dataset has {cfg.frames} frames of {cfg.rows}x{cfg.cols} patches of {cfg.patch}px; use the data "
            "config the checkpoint was trained on (load_toy returns it)"
        )
    vocab = model.config.text_config.vocab_size
    if mc.video_token_id != dataset.vocab.video_id or vocab < dataset.vocab.size:
        raise InputError(
            f"the dataset's vocabulary ({dataset.vocab.size} words) does not match the model's ({vocab} ids)"
        )


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_blocks(blocks: Sequence[int] | None, kinds: list[str]) -> list[int]:
    n_blocks = len(kinds)
    if blocks is None:
        return [i for i in range(1, n_blocks) if kinds[i] not in ("mlp", "moe")]
    if isinstance(blocks, (str, bytes)) or not isinstance(blocks, Sequence) or not blocks:
        raise InputError(f"blocks must be a non-empty list of cut blocks in [1, {n_blocks - 1}], got {blocks!r}")
    out = []
    for b in blocks:
        if isinstance(b, bool) or not isinstance(b, numbers.Integral) or not 1 <= b < n_blocks:
            extra = (
                " (block 0 is the input: dropping there is the input_drop control, reported for every cut)"
                if b == 0 and not isinstance(b, bool)
                else ""
            )
            raise InputError(
                f"cut block {b!r} is out of range: a cut before block ℓ needs ℓ in [1, {n_blocks - 1}] for this "
                f"{n_blocks}-block model{extra}"
            )
        out.append(int(b))
    if len(set(out)) != len(out):
        raise InputError(f"blocks lists a block twice: {list(blocks)}")
    return out


def _check_keeps(keeps: Sequence[float]) -> list[float]:
    if isinstance(keeps, numbers.Real) and not isinstance(keeps, bool):
        keeps = [keeps]
    if isinstance(keeps, (str, bytes)) or not isinstance(keeps, Sequence) or not keeps:
        raise InputError(f"keeps must be a non-empty list of shares in (0, 1], got {keeps!r}")
    out = []
    for k in keeps:
        if isinstance(k, bool) or not isinstance(k, numbers.Real) or not 0 < float(k) <= 1:
            raise InputError(f"keep {k!r} is outside (0, 1]: it is the share of visual tokens the cut keeps")
        out.append(float(k))
    if len(set(out)) != len(out):
        raise InputError(f"keeps lists a share twice: {list(keeps)}")
    return out


def _check_selectors(selectors: Sequence[str]) -> list[str]:
    if isinstance(selectors, str):
        selectors = [selectors]
    if not isinstance(selectors, Sequence) or not selectors:
        raise InputError(f"selectors must be a non-empty list drawn from {SELECTORS}, got {selectors!r}")
    bad = [s for s in selectors if s not in SELECTORS]
    if bad:
        raise InputError(f"unknown selector(s) {bad}; choose from {SELECTORS}")
    if len(set(selectors)) != len(selectors):
        raise InputError(f"selectors lists a selector twice: {list(selectors)}")
    return list(selectors)


def _schedule(selector: str, block: int, keep: float, seed: int) -> Schedule:
    """One cut before ``block`` keeping the share ``keep`` of the visual tokens, chosen by ``selector``."""
    return Schedule.preset(selector, keep=keep, budget="final", stages=(block,), seed=seed)


# The run ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Cut:
    """One configuration: a single cut before ``block`` that keeps the share ``keep`` of the visual tokens, chosen
    by ``selector``."""

    block: int
    keep: float
    selector: str

    def schedule(self, seed: int) -> Schedule:
        return _schedule(self.selector, self.block, self.keep, seed)


@dataclass
class _Plan:
    """The checked arguments of :func:`retention_probe`: what runs, on which samples."""

    kinds: list[str]  # (L,) kind of every block
    cuts: list[_Cut]  # every (block, keep, selector), blocks outermost
    blocks: list[int]
    keeps: list[float]
    selectors: list[str]
    n_train: int
    n_test: int
    batch_size: int
    seed: int

    @property
    def n(self) -> int:
        """Samples run: the training split, then the test split."""
        return self.n_train + self.n_test


@dataclass
class _CutRecord:
    """What one configuration's forwards gave, batch by batch (each list grows by one ``(b, ...)`` entry a batch).

    Attributes:
        features: ``(condition, feature)`` → ``(b, d)`` float64 read-outs (:func:`_read_features`).
        correct: condition → ``(b,)`` bool, the multiple-choice answer was right.
        kept: ``(b, V)`` bool, the visual tokens the cut kept.
        n_kept: ``k``, the visual tokens the cut keeps of every sample.
    """

    features: dict[tuple[str, str], list[torch.Tensor]] = field(default_factory=dict)
    correct: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    kept: list[torch.Tensor] = field(default_factory=list)
    n_kept: int = 0

    def add(self, condition: str, features: dict[str, torch.Tensor], correct: torch.Tensor) -> None:
        """One batch's read-outs and answers under ``condition``."""
        for f in FEATURES:
            self.features.setdefault((condition, f), []).append(features[f])
        self.correct.setdefault(condition, []).append(correct)

    def coordinates(self, cut: _Cut, kinds: list[str]) -> dict[str, Any]:
        """The fields every :class:`ProbeResult` and :class:`TaskGroup` of this configuration starts with."""
        return {
            "block": cut.block,
            "kind": kinds[cut.block],
            "keep": cut.keep,
            "n_kept": self.n_kept,
            "selector": cut.selector,
        }


@dataclass
class _Batch:
    """One batch of prompts on the model's device, and its full-token forward.

    Attributes:
        ids, am, vm: ``(b, T)`` input ids, attention mask, visual mask. pixels: ``(b, F, 3, H·P, W·P)``.
        answers: ``(b,)`` index of the right choice. qtypes: the question types (for the answer sheet).
        vis_index: ``(b, T)`` visual index of each visual position. embeds: ``(b, T, d)`` input embeddings.
        h_full: ``(b, T, d)`` final hidden states of the full forward. right_full: ``(b,)`` bool, its answers.
        relevant: ``(b, V)`` the ground-truth relevant visual tokens (CPU).
    """

    ids: torch.Tensor
    am: torch.Tensor
    vm: torch.Tensor
    pixels: torch.Tensor
    answers: torch.Tensor
    qtypes: Any
    vis_index: torch.Tensor
    embeds: torch.Tensor
    h_full: torch.Tensor
    right_full: torch.Tensor
    relevant: torch.Tensor


def _final_hidden(out) -> torch.Tensor:
    """``(b, T_out, d)`` hidden states after the last norm (``output_hidden_states=True``)."""
    return out.hidden_states[-1]


def _read_features(h: torch.Tensor, is_visual: torch.Tensor) -> dict[str, torch.Tensor]:
    """Features of one forward.

    Args:
        h: ``(b, T', d)`` final hidden states of the rows the forward output.
        is_visual: ``(b, T')`` bool, True at the kept visual rows (the same count ``k`` in every sample).

    Returns:
        ``answer``: ``(b, d)`` last row; ``visual_mean``: ``(b, d)`` mean over the kept visual rows; float64 CPU.
    """
    b, _, d = h.shape
    k = int(is_visual[0].sum())
    visual = h[is_visual.to(h.device)].view(b, k, d)
    return {"answer": h[:, -1].double().cpu(), "visual_mean": visual.double().mean(dim=1).cpu()}


def _mean_or_none(values: torch.Tensor) -> float | None:
    """Mean of ``(N,)`` bool outcomes as a float; None for no sample."""
    return values.double().mean().item() if values.numel() else None


def _forward(model: nn.Module, **kwargs):
    return model(**kwargs, output_hidden_states=True, use_cache=False, logits_to_keep=1)


def _plan(model: nn.Module, dataset, blocks, keeps, selectors, n_train, n_test, batch_size, seed) -> _Plan:
    """Check every argument of :func:`retention_probe`, and every cut's schedule, before any forward."""
    _check_model(model, dataset)
    adapted = get_adapter(model)
    kinds = list(adapted.kinds)
    blocks = _check_blocks(blocks, kinds)
    keeps = _check_keeps(keeps)
    selectors = _check_selectors(selectors)
    n_train = _check_int(n_train, "n_train", 1)
    n_test = _check_int(n_test, "n_test", 1)
    batch_size = _check_int(batch_size, "batch_size", 1)
    seed = _check_int(seed, "seed", 0)
    if n_train < MIN_TRAIN or n_test < MIN_TEST:
        raise InputError(
            f"too few samples to fit a probe: n_train={n_train}, n_test={n_test}; use at least {MIN_TRAIN} "
            f"training and {MIN_TEST} test samples (far more for a reliable score: the features have "
            f"{model.config.text_config.hidden_size} dimensions)"
        )
    n = n_train + n_test
    if n > len(dataset):
        raise InputError(f"n_train + n_test = {n} samples, but the dataset has only {len(dataset)}")
    cuts = [_Cut(b, k, s) for b in blocks for k in keeps for s in selectors]
    for cut in cuts:  # fail before any forward (e.g. a progressive cut with nothing to score it)
        sched = cut.schedule(seed)
        scoring_blocks(adapted, sched, sched.resolve(adapted.num_blocks))
    return _Plan(kinds, cuts, blocks, keeps, selectors, n_train, n_test, batch_size, seed)


def _full_batch(model: nn.Module, samples: list, dataset, sheet, device: torch.device) -> _Batch:
    """Encode ``samples`` and run them at full tokens."""
    from hybridreduce.toy import collate, encode_sample

    batch = collate([encode_sample(s, dataset.vocab, dataset.cfg) for s in samples])
    ids = batch["input_ids"].to(device)  # (b, T)
    am = batch["attention_mask"].to(device)  # (b, T)
    vm = batch["visual_mask"].to(device)  # (b, T)
    pixels = batch["pixels"].to(device)  # (b, F, 3, H·P, W·P)
    if not bool((batch["input_ids"][:, -1] == dataset.vocab.answer_marker_id).all()):
        raise InputError("every prompt must end on <answer> (encode_sample's layout)")
    answers, qtypes = batch["answer_index"], batch["qtype"]
    vis_index = vm.long().cumsum(dim=1) - 1  # (b, T): visual index of each visual position
    full = _forward(model, input_ids=ids, pixel_values=pixels, attention_mask=am)
    right_full = (sheet.choose(full.logits[:, -1].float(), qtypes) == answers).cpu()
    embeds = model.embed(ids, pixels)  # (b, T, d), every token embedded as in the full run
    h_full = _final_hidden(full)  # (b, T, d)
    return _Batch(ids, am, vm, pixels, answers, qtypes, vis_index, embeds, h_full, right_full, batch["relevant_visual"])


def _run_cut(
    model: nn.Module, batch: _Batch, cut: _Cut, seed: int, scorer, sheet, n_visual: int, record: _CutRecord
) -> None:
    """The cut and its input_drop control on one batch, read out at the same positions as the full run, into
    ``record``."""
    device, b, d = batch.ids.device, batch.ids.shape[0], batch.embeds.shape[-1]
    am, vm = batch.am, batch.vm
    with reduce(model, cut.schedule(seed), visual_mask=vm, scorer=scorer, attention_mask=am) as red:
        out = _forward(model, input_ids=batch.ids, pixel_values=batch.pixels, attention_mask=am)
    idx = red.output_positions.to(device)  # (b, T'): text + kept visual, original positions
    kept_pos = red.kept_positions[cut.block].to(device)  # (b, k)
    record.n_kept = kept_pos.shape[1]
    kept = torch.zeros(b, n_visual, dtype=torch.bool, device=device)
    kept.scatter_(1, batch.vis_index.gather(1, kept_pos), True)
    record.kept.append(kept.cpu())
    is_visual = vm.gather(1, idx)  # (b, T')

    # The control: the same kept rows of the input embeddings, at their original positions.
    drop = _forward(
        model,
        inputs_embeds=batch.embeds.gather(1, idx[..., None].expand(-1, -1, d)),
        attention_mask=am.gather(1, idx),
        position_ids=idx,
    )
    full_rows = batch.h_full.gather(1, idx[..., None].expand(-1, -1, d))
    record.add("full", _read_features(full_rows, is_visual), batch.right_full)
    right_cut = (sheet.choose(out.logits[:, -1].float(), batch.qtypes) == batch.answers).cpu()
    record.add("cut", _read_features(_final_hidden(out), is_visual), right_cut)
    right_drop = (sheet.choose(drop.logits[:, -1].float(), batch.qtypes) == batch.answers).cpu()
    record.add("input_drop", _read_features(_final_hidden(drop), is_visual), right_drop)


def _collect(
    model: nn.Module, dataset, plan: _Plan, scorer, progress: bool
) -> tuple[dict[_Cut, _CutRecord], torch.Tensor, torch.Tensor]:
    """Every sample at full tokens once, then under every cut and its control.

    Returns:
        ``(records, colours, relevant)``: cut → :class:`_CutRecord`; ``(N, V)`` long colour index per visual token
        (:func:`token_colours`); ``(N, V)`` bool ground-truth relevant tokens.
    """
    from tqdm.auto import tqdm

    from hybridreduce.toy.evaluate import AnswerSheet

    sheet = AnswerSheet(dataset.vocab)
    device = next(model.parameters()).device
    records = {cut: _CutRecord() for cut in plan.cuts}
    colours_all, relevant_all = [], []
    n, V = plan.n, dataset.cfg.n_visual
    was_training = model.training
    model.eval()
    bar = tqdm(total=n * (1 + len(plan.cuts)), desc="retention", unit="sample", disable=not progress)
    try:
        for batch_no, start in enumerate(range(0, n, plan.batch_size)):
            samples = [dataset[i] for i in range(start, min(start + plan.batch_size, n))]
            batch = _full_batch(model, samples, dataset, sheet, device)
            colours_all.append(torch.stack([token_colours(s, dataset.cfg) for s in samples]))  # (b, V)
            relevant_all.append(batch.relevant)  # (b, V)
            bar.update(len(samples))
            for cut in plan.cuts:
                _run_cut(model, batch, cut, plan.seed + batch_no, scorer, sheet, V, records[cut])
                bar.update(len(samples))
    finally:
        bar.close()
        model.train(was_training)
    return records, torch.cat(colours_all), torch.cat(relevant_all).bool()


def _fit_probes(cut: _Cut, record: _CutRecord, colours: torch.Tensor, plan: _Plan, n_colours: int) -> list[ProbeResult]:
    """Every (condition, feature, target) probe of one configuration: fitted on the training split, scored on the
    test split (:func:`regression_probe`, :func:`multilabel_probe`)."""
    tr, te = slice(0, plan.n_train), slice(plan.n_train, plan.n)
    targets = dropped_targets(colours, torch.cat(record.kept), n_colours)  # (N,) and (N, n_colours)
    out = []
    for cond in CONDITIONS:
        for f in FEATURES:
            x = torch.cat(record.features[cond, f])  # (N, d)
            for target in TARGETS:
                y = targets[target]
                fit = regression_probe if target == "dropped_event_tokens" else multilabel_probe
                res = fit(x[tr], y[tr], x[te], y[te])
                if cut.keep == 1.0:
                    res["note"] = "keep = 1: no token dropped, the target is constant"
                out.append(
                    ProbeResult(
                        **record.coordinates(cut, plan.kinds),
                        condition=cond,
                        feature=f,
                        target=target,
                        target_mean=y.mean().item(),
                        **res,
                    )
                )
    return out


def _task_groups(cut: _Cut, record: _CutRecord, relevant: torch.Tensor, plan: _Plan) -> list[TaskGroup]:
    """The multiple-choice accuracy of one configuration in each of :data:`GROUPS` (``relevant``: ``(N, V)``)."""
    kept = torch.cat(record.kept)  # (N, V)
    n_rel = relevant.sum(dim=1)
    n_rel_kept = (relevant & kept).sum(dim=1)
    groups = {
        "all": n_rel_kept == n_rel,
        "some": (n_rel_kept > 0) & (n_rel_kept < n_rel),
        "none": (n_rel > 0) & (n_rel_kept == 0),
        "total": torch.ones(plan.n, dtype=torch.bool),
    }
    right = {cond: torch.cat(record.correct[cond]) for cond in CONDITIONS}  # (N,) bool
    out = []
    for g, members in groups.items():
        acc = {cond: _mean_or_none(right[cond][members]) for cond in CONDITIONS}
        out.append(
            TaskGroup(
                **record.coordinates(cut, plan.kinds),
                group=g,
                n=int(members.sum()),
                accuracy=acc["cut"],
                input_drop_accuracy=acc["input_drop"],
                full_accuracy=acc["full"],
            )
        )
    return out


@torch.no_grad()
def retention_probe(
    model: nn.Module,
    dataset,
    blocks: Sequence[int] | None = None,
    keeps: Sequence[float] = (0.25,),
    selectors: Sequence[str] = ("random",),
    n_train: int = 128,
    n_test: int = 64,
    batch_size: int = 16,
    progress: bool = True,
    seed: int = 0,
    scorer: str | dict | None = None,
) -> RetentionReport:
    """Probe how much of the visual tokens dropped at a single cut survives in the kept stream.

    See the module docstring for what is measured. Samples ``0 .. n_train − 1`` of ``dataset`` train the
    probes, ``n_train .. n_train + n_test − 1`` test them; the task accuracy covers all of them. The steps: check
    every argument (:func:`_plan`), run the forwards and collect each condition's features (:func:`_collect`),
    fit each configuration's probes (:func:`_fit_probes`) and count its task groups (:func:`_task_groups`).

    Args:
        model: a :class:`hybridreduce.toy.ToyVLM` (any device; run in eval mode, restored after).
        dataset: the :class:`hybridreduce.toy.ToyDataset` of its benchmark, with at least ``n_train + n_test``
            items.
        blocks: cut blocks ℓ, each in ``[1, L − 1]``; default every attention/Mamba block from block 1.
        keeps: shares of the visual tokens each cut keeps, in ``(0, 1]``.
        selectors: ``progressive`` (unified score), ``random`` (seeded per batch), ``uniform``.
        n_train, n_test: probe split sizes (at least :data:`MIN_TRAIN` and :data:`MIN_TEST`).
        batch_size: samples per forward.
        progress: show a tqdm bar over samples × (1 + configurations).
        seed: seed of the ``random`` selector (batch ``i`` uses ``seed + i``).
        scorer: the Mamba scorer of ``progressive`` (``decay_free`` by default, or ``exact``).

    Returns:
        :class:`RetentionReport`.

    Raises:
        InputError: a model that is not the toy VLM or does not match the dataset, blocks out of range, a keep
            outside ``(0, 1]``, an unknown selector, a ``progressive`` cut with no scoring block before it, or too
            few samples to fit a probe.
    """
    plan = _plan(model, dataset, blocks, keeps, selectors, n_train, n_test, batch_size, seed)
    records, colours, relevant = _collect(model, dataset, plan, scorer, progress)
    cfg = dataset.cfg
    report = RetentionReport(
        blocks=plan.blocks,
        keeps=plan.keeps,
        selectors=plan.selectors,
        block_kinds=plan.kinds,
        n_visual=cfg.n_visual,
        n_train=plan.n_train,
        n_test=plan.n_test,
        colours=list(cfg.colours),
        settings={"seed": plan.seed, "scorer": scorer, "batch_size": plan.batch_size, "split": dataset.split},
    )
    for cut in plan.cuts:
        report.probes += _fit_probes(cut, records[cut], colours, plan, len(cfg.colours))
        report.task += _task_groups(cut, records[cut], relevant, plan)
    return report
