"""Merging at a cut, and the size-aware pieces of the blocks after it, as pure functions (DESIGN decision 14).

A cut that merges (``Schedule(combine="merge")``) adds every visual token it removes into one kept visual token
instead of dropping it: :func:`assign_merges` picks, for each removed token, the kept visual token whose hidden
state is the most similar (cosine), and :func:`merge_rows` replaces each kept row by the size-weighted mean of
itself and the rows merged into it. Every carried token has a *size*, the number of original tokens it stands
for (text tokens and unmerged visual tokens 1); sizes add across cuts.

The blocks after the cut see the sizes (``size_aware``):

* attention, proportional attention: :func:`add_key_bias` adds ``log(size_j)`` to the logit of key ``j`` for
  every query. A key of size ``s`` then weighs exactly what ``s`` identical copies of it at one position weigh:
  ``s · e^z = e^(z + log s)`` (exact);
* Mamba: :func:`scale_steps` multiplies the step ``Δ_j`` of a token of size ``s`` by ``s``, by rewriting the
  raw ``dt`` channels the mixer turns into ``Δ = clamp(softplus(dt + dt_bias))``. One step of ``sΔ`` gives
  ``h' = exp(sΔA) h + sΔ B x``; ``s`` repeats of the token give ``exp(sΔA) h + Δ·(1 − e^(sΔA))/(1 − e^(ΔA))·B x``.
  The two agree to first order in ``ΔA`` (the small-step limit; the input term's relative error is about
  ``|ΔA|·(s − 1)/2``); the state decay is exact. The convolution before the scan still sees one token, not
  ``s``. The scaling applies to the *clamped* step (``s`` repeats each take the clamped step) and the product is
  clamped at the layer's upper limit again.

Every size-aware change leaves tokens of size 1 bit for bit as they were, so a merge that merged nothing, and
``combine: drop``, equal plain dropping exactly.

Shapes use the letters of :mod:`hybridreduce.glossary`: ``T`` the tokens a cut receives, ``T'`` those it keeps,
``R`` the visual tokens it removes, ``S`` keys, ``q`` query rows of an attention call.
"""

from __future__ import annotations

import math

import torch

from .errors import InputError
from .prune import gather_seq, true_positions

#: Rows of the ``(R, k)`` similarity computed at once per sample (bounds memory at long contexts).
SIMILARITY_CHUNK = 2048


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32, or float64 for float64 inputs (the references): half-precision sums of many rows lose bits."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def assign_merges(
    hidden: torch.Tensor,
    visual: torch.Tensor,
    keep: torch.Tensor,
    frames: torch.Tensor | None = None,
    scope: str = "all",
    window: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each visual token a cut removes, the kept visual token it merges into.

    Args:
        hidden: ``(b, T, d)`` the residual stream entering the cut's block.
        visual: ``(b, T)`` bool, which of the ``T`` tokens are visual (the same count per sample).
        keep: ``(b, T')`` increasing indices of the tokens the cut keeps (:func:`~hybridreduce.prune.keep_index`):
            every text token and at least one visual token.
        frames: ``(b, T)`` long, the frame of every token (read at the visual ones); needed by ``scope`` other
            than ``"all"``.
        scope: ``"all"`` (any kept visual token), ``"frame"`` (the same frame) or ``"window"`` (a frame at most
            ``window`` away). A removed token with no kept token in its scope looks at every kept token.
        window: see ``scope``.

    Returns:
        ``removed``: ``(b, R)`` increasing indices into the ``T`` tokens of the visual tokens not kept;
        ``target``: ``(b, R)`` indices into the ``T'`` kept tokens of the visual token each merges into: the
        highest cosine similarity of the hidden states (ties to the earlier token).
    """
    b, T, _ = hidden.shape
    kept_mask = torch.zeros(b, T, dtype=torch.bool, device=visual.device).scatter(1, keep.to(visual.device), True)
    gone = visual & ~kept_mask
    R = int(gone[0].sum())
    if bool((gone.sum(dim=1) != R).any()):
        raise InputError(f"samples remove different numbers of visual tokens ({gone.sum(dim=1).tolist()})")
    removed = true_positions(gone, R)  # (b, R)
    if R == 0:
        return removed, removed.clone()
    if scope != "all" and frames is None:
        raise InputError(f"merge_scope {scope!r} needs the frame of every visual token (visual_frames)")
    kept_visual = visual.to(keep.device).gather(1, keep)  # (b, T') which kept tokens are visual
    k = int(kept_visual[0].sum())
    slots = true_positions(kept_visual, k)  # (b, k) indices into the T' kept tokens
    kv = keep.gather(1, slots)  # (b, k) indices into the T tokens
    unit = torch.nn.functional.normalize(hidden.to(_work_dtype(hidden.dtype)), dim=-1)
    src = gather_seq(unit, removed, T)  # (b, R, d)
    dst = gather_seq(unit, kv, T)  # (b, k, d)
    if frames is not None and scope != "all":
        f_src = frames.to(hidden.device).gather(1, removed.to(hidden.device))  # (b, R)
        f_dst = frames.to(hidden.device).gather(1, kv.to(hidden.device))  # (b, k)
        reach = 0 if scope == "frame" else window
    best = torch.empty(b, R, dtype=torch.long, device=hidden.device)
    for lo in range(0, R, SIMILARITY_CHUNK):
        hi = min(R, lo + SIMILARITY_CHUNK)
        sim = src[:, lo:hi] @ dst.transpose(1, 2)  # (b, r, k)
        if frames is not None and scope != "all":
            near = (f_src[:, lo:hi, None] - f_dst[:, None, :]).abs() <= reach  # (b, r, k)
            anywhere = ~near.any(dim=2, keepdim=True)  # no kept token in scope: every kept token competes
            sim = sim.masked_fill(~(near | anywhere), -math.inf)
        best[:, lo:hi] = sim.argmax(dim=2)
    target = slots.to(best.device).gather(1, best)  # (b, R) into the T' kept tokens
    return removed.to(keep.device), target.to(keep.device)


def merge_rows(
    hidden: torch.Tensor,
    keep: torch.Tensor,
    removed: torch.Tensor,
    target: torch.Tensor,
    sizes: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the rows ``keep`` of ``hidden``, each the size-weighted mean of itself and the rows merged into it.

    ``out[t] = Σ_m size_m·h_m / Σ_m size_m`` over the row ``t`` and the rows ``m`` merged into it; the sizes add.
    Rows nothing merges into come back bit for bit (so does everything when ``R = 0``). Gradients flow to every
    merged row.

    Args:
        hidden: ``(b, T, d)``.
        keep: ``(b, T')`` increasing indices of the kept tokens.
        removed, target: ``(b, R)`` from :func:`assign_merges` (``R`` may be 0).
        sizes: ``(b, T)`` float sizes of the ``T`` tokens, or ``None`` (all 1).

    Returns:
        ``(b, T', d)`` the merged rows and ``(b, T')`` float32 their sizes.
    """
    b, T, d = hidden.shape
    sizes = torch.ones(b, T, device=hidden.device) if sizes is None else sizes.to(hidden.device, torch.float32)
    kept = gather_seq(hidden, keep, T)  # (b, T', d)
    kept_sizes = sizes.gather(1, keep.to(hidden.device))  # (b, T')
    if removed.shape[1] == 0:
        return kept, kept_sizes
    work = _work_dtype(hidden.dtype)
    removed, target = removed.to(hidden.device), target.to(hidden.device)
    r_sizes = sizes.gather(1, removed)  # (b, R)
    new_sizes = kept_sizes.scatter_add(1, target, r_sizes)  # (b, T')
    mass = gather_seq(hidden, removed, T).to(work) * r_sizes[..., None].to(work)  # (b, R, d)
    total = (kept.to(work) * kept_sizes[..., None].to(work)).scatter_add(1, target[..., None].expand_as(mass), mass)
    merged = (total / new_sizes[..., None].to(work)).to(hidden.dtype)  # (b, T', d)
    touched = torch.zeros_like(new_sizes, dtype=torch.bool).scatter(1, target, True)
    return torch.where(touched[..., None], merged, kept), new_sizes


def add_key_bias(
    mask: torch.Tensor | None, bias: torch.Tensor, q: int, dtype: torch.dtype, causal: bool = True
) -> torch.Tensor:
    """An attention mask with ``bias[:, j]`` added to every query's logit of key ``j``.

    Args:
        mask: what the attention function received: ``None`` (causal, or no mask when ``causal`` is false),
            bool ``(b|1, h|1, q, S)`` (``True`` = attend) or an additive float mask of that shape.
        bias: ``(b, S)`` float, ``log(size_j)`` (0 for a token of size 1).
        q: query rows of the call; they are the last ``q`` of the ``S`` keys (prefill: ``q = S``).
        dtype: the dtype of the attention's logits (the float mask comes back in it).
        causal: whether a ``None`` mask means causal (the attention module's ``is_causal``).

    Returns:
        ``(b, h|1, q, S)`` additive float mask (masked keys at the dtype's minimum, not ``-inf``: a fully masked
        padding row stays finite, as transformers' own masks keep it).
    """
    b, S = bias.shape
    floor = torch.finfo(dtype).min
    if mask is None:
        allowed = torch.ones(q, S, dtype=torch.bool, device=bias.device)
        if causal:
            allowed = (
                torch.arange(S, device=bias.device)[None, :] <= (S - q + torch.arange(q, device=bias.device))[:, None]
            )
        base = torch.zeros(1, 1, q, S, dtype=dtype, device=bias.device).masked_fill(~allowed, floor)
    elif mask.dtype == torch.bool:
        base = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, floor)
    else:
        base = mask.to(dtype)
    biased = base + bias.to(base.device, dtype)[:, None, None, :]
    return torch.where(base > floor / 2, biased, base)  # masked keys stay masked


def softplus_inverse(y: torch.Tensor) -> torch.Tensor:
    """``x`` with ``softplus(x) = log(1 + e^x) = y``, for ``y > 0``: ``y + log(1 − e^(−y))``."""
    return y + torch.log(-torch.expm1(-y))


def scale_steps(
    raw: torch.Tensor,
    sizes: torch.Tensor,
    bias: torch.Tensor | float = 0.0,
    limits: tuple[float, float] = (0.0, math.inf),
    multiplier: torch.Tensor | None = None,
) -> torch.Tensor:
    """Raw step channels such that the mixer's ``Δ`` of a token of size ``s`` becomes ``min(s · Δ, hi)``.

    The mixer computes ``Δ = clamp(softplus(m · raw + bias), lo, hi)`` (``m`` the muP multiplier of Falcon-H1,
    else 1); this returns ``raw'`` with ``clamp(softplus(m · raw' + bias), lo, hi) = min(s · Δ, hi)``. Tokens of
    size 1 come back bit for bit.

    Args:
        raw: ``(b, T, h)`` the raw step channels (Mamba-2: the last ``h`` channels of ``in_proj``'s output;
            Mamba-1: ``dt_proj``'s output, ``h`` = its channels).
        sizes: ``(b, T)`` float sizes.
        bias: ``(h,)`` ``dt_bias`` (Mamba-2) or 0 (Mamba-1: the bias is inside ``dt_proj``).
        limits: the layer's ``(lo, hi)`` clamp of ``Δ`` (``time_step_limit``).
        multiplier: ``(h,)`` the factor the mixer applies to ``raw`` first, or ``None``.
    """
    work = _work_dtype(raw.dtype)
    m = 1.0 if multiplier is None else multiplier.to(raw.device, work)
    bias = bias.to(raw.device, work) if isinstance(bias, torch.Tensor) else bias
    lo, hi = float(limits[0]), float(limits[1])
    s = sizes.to(raw.device, work)[..., None]  # (b, T, 1)
    step = torch.nn.functional.softplus(raw.to(work) * m + bias).clamp(min=lo, max=hi)  # (b, T, h) the mixer's Δ
    target = (step * s).clamp(max=hi)
    scaled = ((softplus_inverse(target) - bias) / m).to(raw.dtype)
    return torch.where(s > 1, scaled, raw)
