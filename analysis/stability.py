"""Cross-layer stability of visual-token importance: does a token's rank persist across depth?

Shapes use the dimension letters of :mod:`hybridreduce.glossary`; the scored blocks ``L`` are in block order.

Every matrix function takes a stack ``x: (L, b, V)`` (``ScoreCache.stack()``) and returns per-sample
matrices ``(b, L, L)``; :func:`layer_stability` averages them over samples. All arithmetic is float64.

* Spearman ρ (:func:`spearman_matrix`): Pearson correlation of the ranks, ties given their average rank.
* Kendall τ-b (:func:`kendall_matrix`): ``(n_c − n_d) / sqrt((n_0 − n_1)(n_0 − n_2))`` over all token pairs,
  the tie-corrected τ (n_1, n_2: pairs tied in the first / second vector).
  Both are undefined (NaN) when a vector is constant (every token tied); sample means skip NaNs.
* top-k sets (:func:`topk_mask`): ``k = ceil(frac·V)`` tokens by a stable sort on ``(−score, index)``,
  so ties go to the earlier token and the set is deterministic.
* top-k IoU (:func:`topk_iou_matrix`): ``|T_i ∩ T_j| / |T_i ∪ T_j|`` with ``T_ℓ`` the top-k set of layer ℓ.
* survival recall (:func:`survival_recall`): ``R[i, j] = |K_i ∩ T_j| / |T_j|``, the share of layer j's
  top-k tokens that would still be present had the keep set ``K_i`` been chosen at layer i. ``K_i`` is
  layer i's top ``ceil(keep_i·V)`` tokens (by default ``keep_i = frac``, and then ``R`` is symmetric,
  ``|T_i ∩ T_j| / k``). Pruning runs forward, so entries with ``j > i`` are the ones a schedule meets.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from hybridreduce.cache import ScoreCache
from hybridreduce.errors import InputError

from .sparsity import ceil_count, require_scored, validate_scores

# Elements of one chunk of Kendall sign matrices (L·b·rows·V float64 values, ``rows`` tokens a chunk): 2^22 is 32 MiB.
KENDALL_CHUNK_ELEMENTS = 1 << 22

KeepRatios = Sequence[float] | Mapping[int, float] | Callable[[int], float]

__all__ = [
    "StabilityReport",
    "average_ranks",
    "kendall_matrix",
    "kendall_tau_b",
    "layer_stability",
    "spearman",
    "spearman_matrix",
    "survival_recall",
    "topk_iou_matrix",
    "topk_mask",
]


# Input checks ------------------------------------------------------------------------------------
def _check_stack(x: torch.Tensor) -> torch.Tensor:
    """Validate ``x: (L, b, V)`` importance and return it as float64 (not renormalised: ranks only)."""
    if not isinstance(x, torch.Tensor) or x.ndim != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise InputError(
            f"expected importance of shape (layers, batch, n_visual), got {shape}; "
            "pass ScoreCache.stack() or a ScoreCache"
        )
    if x.shape[0] == 0:
        raise InputError("the importance stack has no layers; score a model with attention or Mamba blocks")
    if x.shape[1] == 0:
        raise InputError("the importance stack has no samples (batch 0); score at least one sample")
    validate_scores(x, name="importance stack")
    return x.detach().to(torch.float64)


# Ranks and rank correlations ---------------------------------------------------------------------
def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """1-based ranks along the last axis, ties given the mean of the ranks they span.

    Args:
        x: ``(..., V)`` real values.

    Returns:
        ``(..., V)`` float64 ranks (``[3, 1, 3]`` → ``[2.5, 1, 2.5]``).
    """
    V = x.shape[-1]
    flat = x.detach().to(torch.float64).reshape(-1, V).contiguous()  # [N, V]
    values = torch.sort(flat, dim=-1).values
    below = torch.searchsorted(values, flat, side="left")  # tokens strictly smaller
    up_to = torch.searchsorted(values, flat, side="right")  # tokens smaller or equal
    # a tie group spanning sorted slots below+1 .. up_to (1-based) gets their mean rank
    return ((below + up_to + 1).to(torch.float64) / 2).reshape(x.shape)


def _gram_correlation(z: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    """``(b, L, L)`` ``<z_i, z_j> / (|z_i| |z_j|)`` from ``z: (L, b, V)``; NaN where a norm is zero."""
    gram = torch.einsum("ibv,jbv->bij", z, z)
    denom = norms.T.unsqueeze(2) * norms.T.unsqueeze(1)  # [b, L, L]
    out = gram / denom
    return out.masked_fill(denom == 0, float("nan")).clamp(-1.0, 1.0)


def spearman_matrix(x: torch.Tensor) -> torch.Tensor:
    """Spearman ρ between every pair of layers, per sample.

    ``ρ[s, i, j]`` is the Pearson correlation of the average ranks of ``x[i, s]`` and ``x[j, s]``;
    NaN when either vector is constant.

    Args:
        x: ``(L, b, V)`` nonnegative importance.

    Returns:
        ``(b, L, L)`` float64 in ``[−1, 1]``.
    """
    x = _check_stack(x)
    ranks = average_ranks(x)
    z = ranks - ranks.mean(dim=-1, keepdim=True)  # [L, b, V]
    return _gram_correlation(z, z.norm(dim=-1))


def kendall_matrix(x: torch.Tensor, chunk_elements: int = KENDALL_CHUNK_ELEMENTS) -> torch.Tensor:
    """Kendall τ-b between every pair of layers, per sample.

    With ``S_ℓ[u, v] = sign(x_ℓ[u] − x_ℓ[v])`` over all ordered token pairs,
    ``τ_b[i, j] = <S_i, S_j> / sqrt(<S_i, S_i> <S_j, S_j>)``: the numerator is ``2 (n_c − n_d)`` and
    ``<S_ℓ, S_ℓ> = 2 (n_0 − n_ℓ)`` counts the pairs not tied in layer ℓ, which is τ-b. Costs
    ``O(L² b V²)`` time; memory is bounded by building the sign rows ``u`` in chunks of
    ``chunk_elements / (L·b·V)``. NaN when either vector is constant.

    Args:
        x: ``(L, b, V)`` nonnegative importance.
        chunk_elements: most float64 sign entries alive at once.

    Returns:
        ``(b, L, L)`` float64 in ``[−1, 1]``.
    """
    x = _check_stack(x)
    L, b, V = x.shape
    rows = max(1, chunk_elements // (L * b * V))
    gram = torch.zeros(b, L, L, dtype=torch.float64)
    for start in range(0, V, rows):
        signs = torch.sign(x[:, :, start : start + rows, None] - x[:, :, None, :])  # [L, b, rows, V]
        gram += torch.einsum("ibcv,jbcv->bij", signs, signs)
    diag = torch.diagonal(gram, dim1=1, dim2=2)  # [b, L] = 2 · (pairs not tied)
    denom = (diag.unsqueeze(2) * diag.unsqueeze(1)).sqrt()
    return (gram / denom).masked_fill(denom == 0, float("nan")).clamp(-1.0, 1.0)


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman ρ between two importance tensors ``a, b: (..., V)`` → ``(...)`` float64."""
    return _pairwise(spearman_matrix, a, b)


def kendall_tau_b(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Kendall τ-b between two importance tensors ``a, b: (..., V)`` → ``(...)`` float64."""
    return _pairwise(kendall_matrix, a, b)


def _pairwise(fn: Callable[[torch.Tensor], torch.Tensor], a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor) or a.shape != b.shape or a.ndim == 0:
        raise InputError("pass two importance tensors of the same shape (..., V)")
    stack = torch.stack([a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])])  # [2, N, V]
    return fn(stack)[:, 0, 1].reshape(a.shape[:-1])


# Top-k sets --------------------------------------------------------------------------------------
def topk_mask(x: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the ``k`` largest entries along the last axis, ties going to the earlier token.

    Deterministic: a stable sort of ``−x`` orders equal scores by their index.

    Args:
        x: ``(..., V)`` real values.
        k: number of tokens to mark, ``0 ≤ k ≤ V``.

    Returns:
        ``(..., V)`` bool with exactly ``k`` True per vector.
    """
    order = torch.sort(-x.to(torch.float64), dim=-1, stable=True).indices[..., :k]
    return torch.zeros(x.shape, dtype=torch.bool).scatter_(-1, order, True)


def topk_iou_matrix(x: torch.Tensor, frac: float) -> torch.Tensor:
    """Intersection over union of the top ``ceil(frac·V)`` sets of every pair of layers, per sample.

    Args:
        x: ``(L, b, V)`` nonnegative importance.
        frac: share of tokens in ``(0, 1]`` (``ceil`` is tolerant: 0.1·30 → 3).

    Returns:
        ``(b, L, L)`` float64 in ``[0, 1]``, ones on the diagonal.
    """
    x = _check_stack(x)
    k = ceil_count(frac, x.shape[-1])
    top = topk_mask(x, k).to(torch.float64)  # [L, b, V]
    inter = torch.einsum("ibv,jbv->bij", top, top)
    return inter / (2 * k - inter)


def _keep_list(keep_ratios: KeepRatios | None, frac: float, blocks: Sequence[int]) -> list[float]:
    """Keep ratio per layer of the stack, from a sequence, a block → ratio mapping or a callable."""
    if keep_ratios is None:
        return [frac] * len(blocks)
    if isinstance(keep_ratios, Mapping):
        missing = [blk for blk in blocks if blk not in keep_ratios]
        if missing:
            raise InputError(f"keep_ratios has no entry for blocks {missing}; give a ratio for every scored block")
        ratios = [keep_ratios[blk] for blk in blocks]
    elif callable(keep_ratios):
        ratios = [keep_ratios(blk) for blk in blocks]
    else:
        ratios = list(keep_ratios)
        if len(ratios) != len(blocks):
            raise InputError(
                f"keep_ratios has {len(ratios)} entries for {len(blocks)} layers; "
                "give one ratio per layer of the stack (or a block → ratio mapping)"
            )
    return ratios


def survival_recall(
    x: torch.Tensor,
    frac: float,
    keep_ratios: KeepRatios | None = None,
    blocks: Sequence[int] | None = None,
) -> torch.Tensor:
    """Share of layer j's top tokens that survive a keep set chosen at layer i, per sample.

    ``R[s, i, j] = |K_i ∩ T_j| / |T_j|`` where ``T_j`` is layer j's top ``ceil(frac·V)`` set and ``K_i``
    layer i's top ``ceil(keep_i·V)`` set (both from :func:`topk_mask`: ties to the earlier token).
    Each keep set is chosen from layer i's scores alone, over all V tokens (not nested in earlier keep
    sets). Without ``keep_ratios``, ``keep_i = frac`` and ``R`` is symmetric (``|T_i ∩ T_j| / k``).
    ``R[s, i, j] = 1`` exactly when ``K_i`` contains ``T_j``. Rows ``i`` choose, columns ``j`` judge: for
    forward pruning read ``j > i`` (upper triangle).

    Args:
        x: ``(L, b, V)`` nonnegative importance.
        frac: share of tokens in each target top-k set, in ``(0, 1]``.
        keep_ratios: keep share per layer: a sequence aligned with the L layers, a mapping from
            block id to ratio, or a callable ``block → ratio`` (e.g. ``Plan.keep_fraction``); each in ``(0, 1]``.
        blocks: block id of each layer of ``x`` (default ``0 .. L−1``), used to look up ``keep_ratios``.

    Returns:
        ``(b, L, L)`` float64 in ``[0, 1]``.
    """
    x = _check_stack(x)
    L, _, V = x.shape
    blocks = list(range(L)) if blocks is None else list(blocks)
    if len(blocks) != L:
        raise InputError(f"blocks has {len(blocks)} ids for {L} layers; give one block id per layer of the stack")
    k = ceil_count(frac, V)
    keep_counts = [ceil_count(r, V, name="each keep ratio") for r in _keep_list(keep_ratios, frac, blocks)]
    top = topk_mask(x, k).to(torch.float64)  # [L, b, V]
    keep = torch.stack([topk_mask(x[i], c) for i, c in enumerate(keep_counts)]).to(torch.float64)
    return torch.einsum("ibv,jbv->bij", keep, top) / k


# Per-cache summary -------------------------------------------------------------------------------
@dataclass
class StabilityReport:
    """:func:`layer_stability` output. Matrices are ``(L, L)`` means over samples (NaN-skipping).

    Attributes:
        blocks: block ids of the L scored blocks, in order.
        kinds: their kinds.
        n_visual: V.
        batch: number of samples b.
        spearman: ``(L, L)`` mean Spearman ρ.
        kendall: ``(L, L)`` mean Kendall τ-b (None when not computed).
        iou: fraction → ``(L, L)`` mean top-k IoU.
        survival: fraction → ``(L, L)`` mean survival recall (with ``keep_ratios`` when given).
        keep_ratios: keep share per block used for survival, or None (keep = fraction).
        per_sample: the same matrices before averaging, ``(b, L, L)``, under the keys ``spearman``,
            ``kendall``, ``iou@{frac:g}``, ``survival@{frac:g}``.
    """

    blocks: list[int]
    kinds: list[str]
    n_visual: int
    batch: int
    spearman: torch.Tensor
    kendall: torch.Tensor | None
    iou: dict[float, torch.Tensor]
    survival: dict[float, torch.Tensor]
    keep_ratios: list[float] | None = None
    per_sample: dict[str, torch.Tensor] = field(default_factory=dict)

    def to_dict(self, per_sample: bool = False) -> dict[str, Any]:
        """JSON-friendly dict (nested lists, NaN → None); per-sample matrices only if asked."""
        out: dict[str, Any] = {
            "blocks": list(self.blocks),
            "kinds": list(self.kinds),
            "n_visual": self.n_visual,
            "batch": self.batch,
            "keep_ratios": self.keep_ratios,
            "spearman": _to_list(self.spearman),
            "kendall": None if self.kendall is None else _to_list(self.kendall),
            "iou": {f"{f:g}": _to_list(m) for f, m in self.iou.items()},
            "survival": {f"{f:g}": _to_list(m) for f, m in self.survival.items()},
        }
        if per_sample:
            out["per_sample"] = {name: _to_list(m) for name, m in self.per_sample.items()}
        return out


def _to_list(t: torch.Tensor) -> list:
    """Nested lists with NaN replaced by None (valid JSON)."""
    values = t.tolist()

    def clean(v: Any) -> Any:
        if isinstance(v, list):
            return [clean(e) for e in v]
        return None if isinstance(v, float) and math.isnan(v) else v

    return clean(values)


def layer_stability(
    source: ScoreCache | torch.Tensor,
    topk: Sequence[float] = (0.1, 0.25),
    *,
    blocks: Sequence[int] | None = None,
    kinds: Sequence[str] | None = None,
    keep_ratios: KeepRatios | None = None,
    kendall: bool = True,
) -> StabilityReport:
    """Layer × layer stability matrices over the scored blocks, averaged over samples.

    Args:
        source: a ScoreCache (its scored blocks) or an ``(L, b, V)`` stack.
        topk: token shares for the IoU and survival matrices, each in ``(0, 1]``.
        blocks: block ids of a stack's layers (default ``0 .. L−1``; ignored for a ScoreCache).
        kinds: kinds of a stack's layers (default ``"?"``; ignored for a ScoreCache).
        keep_ratios: keep share per layer for :func:`survival_recall` (sequence, mapping block →
            ratio, or callable); default: the target fraction itself.
        kendall: compute Kendall τ-b (``O(L² b V²)``; switch off for very long videos).

    Returns:
        :class:`StabilityReport`.
    """
    x, block_ids, block_kinds = _resolve_source(source, blocks, kinds)
    L, b, V = x.shape
    per_sample: dict[str, torch.Tensor] = {"spearman": spearman_matrix(x)}
    if kendall:
        per_sample["kendall"] = kendall_matrix(x)
    for frac in topk:
        per_sample[f"iou@{frac:g}"] = topk_iou_matrix(x, frac)
        per_sample[f"survival@{frac:g}"] = survival_recall(x, frac, keep_ratios, block_ids)
    mean = {name: m.nanmean(dim=0) for name, m in per_sample.items()}
    return StabilityReport(
        blocks=block_ids,
        kinds=block_kinds,
        n_visual=V,
        batch=b,
        spearman=mean["spearman"],
        kendall=mean.get("kendall"),
        iou={f: mean[f"iou@{f:g}"] for f in topk},
        survival={f: mean[f"survival@{f:g}"] for f in topk},
        keep_ratios=None if keep_ratios is None else [float(r) for r in _keep_list(keep_ratios, 1.0, block_ids)],
        per_sample=per_sample,
    )


def _resolve_source(
    source: ScoreCache | torch.Tensor, blocks: Sequence[int] | None, kinds: Sequence[str] | None
) -> tuple[torch.Tensor, list[int], list[str]]:
    """``(x: (L, b, V), block ids, kinds)`` from a ScoreCache or a stack with optional ids/kinds."""
    if isinstance(source, ScoreCache):
        require_scored(source)
        shapes = {tuple(source.scores[i].shape) for i in source.layers}
        if len(shapes) != 1:
            raise InputError(
                f"scored blocks have different score shapes {sorted(shapes)}; every block must score the same "
                "(batch, n_visual) tokens — record all blocks in one scoring forward"
            )
        return _check_stack(source.stack()), source.layers, source.kinds
    x = _check_stack(source)
    L = x.shape[0]
    block_ids = list(range(L)) if blocks is None else [int(i) for i in blocks]
    block_kinds = ["?"] * L if kinds is None else list(kinds)
    if len(block_ids) != L or len(block_kinds) != L:
        raise InputError(
            f"the stack has {L} layers but blocks/kinds have {len(block_ids)}/{len(block_kinds)} entries; "
            "give one per layer"
        )
    return x, block_ids, block_kinds
