"""Linear probes in float64: closed-form ridge regression and its held-out scores.

:func:`fit_ridge` fits ridge regression on features standardised with the training split's mean and deviation,
in float64, the penalty of each output chosen from :data:`ALPHAS` by its exact leave-one-out error on the training
split; no iterative optimiser, so a fit is deterministic. :func:`regression_probe` scores it by held-out R²
(:func:`r2_score`), :func:`multilabel_probe` by the AUC of 0/1 targets (:func:`roc_auc`) and the accuracy against
the majority label; every score comes with a standard error (:func:`bootstrap_stderr`: the test split resampled
with replacement, the probe kept fixed; seeded, so deterministic too). :mod:`analysis.retention` fits them on the
hidden states after a cut.

Shapes use the dimension letters of :mod:`hybridreduce.glossary` (``N``: the samples of a probe split, train or
test; ``n_targets``: the outputs of a probe, 1 or one per colour).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from hybridreduce.errors import InputError

__all__ = [
    "ALPHAS",
    "BOOTSTRAP_ROUNDS",
    "RidgeProbe",
    "bootstrap_stderr",
    "fit_ridge",
    "mean_auc",
    "multilabel_probe",
    "r2_score",
    "regression_probe",
    "roc_auc",
]

#: Ridge penalties tried, relative to the number of training samples (standardised features have ‖x_j‖² = N).
ALPHAS = tuple(10.0**e for e in torch.linspace(-4, 3, 15).tolist())
#: Resamples of the test split behind a probe score's standard error (:func:`bootstrap_stderr`).
BOOTSTRAP_ROUNDS = 200


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
    score = mean_auc(y_test, pred, used)
    stderr = None if score is None else bootstrap_stderr(lambda i: mean_auc(y_test[i], pred[i], used), len(y_test))
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


def mean_auc(labels: torch.Tensor, scores: torch.Tensor, columns: list[int]) -> float | None:
    """Mean :func:`roc_auc` of ``(N, n_targets)`` scores for ``(N, n_targets)`` 0/1 labels over ``columns``,
    skipping a column whose labels are all equal; None when every column is skipped."""
    aucs = [auc for j in columns if (auc := roc_auc(labels[:, j], scores[:, j])) is not None]
    return sum(aucs) / len(aucs) if aucs else None
