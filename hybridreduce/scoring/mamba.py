"""Language-aware importance from Mamba blocks: hidden attention rebuilt from primitives.

The taps observe the mixer's ``in_proj`` output and redo the cheap part of the mixer themselves (the
depthwise causal conv, its activation, the split into ``x, B, C, dt``, and ``Δ``), so the scores do
not depend on whether the scan ran on transformers' torch path or on mamba-ssm / causal-conv1d
kernels. The primitives are float32 whatever the model dtype; cumulative sums of ``Δ`` are taken in
float64 because their differences feed an exponential.

Mamba-2 (scalar ``A_h`` per head; ``B``, ``C`` per group ``g(h)``)::

    α_h[i, j] = (C_i · B_j) Δ_{j,h} exp(A_h Σ_{k=j+1..i} Δ_{k,h}),  j ≤ i     (exact)
    β_h[i, j] = |C_i · B_j| Δ_{j,h},                                 j ≤ i     (decay-free)
    y_i = Σ_j α_h[i, j] x_j + D_h x_i

Mamba-1 (diagonal ``A[c, n]``; ``B``, ``C`` shared by all channels)::

    α_c[i, j] = Σ_n C_i[n] B_j[n] Δ_j[c] exp(A[c, n] Σ_{k=j+1..i} Δ_k[c])
    β_c[i, j] = |C_i · B_j| Δ_j[c]

Importance of visual token ``j`` = reduce over heads/channels of reduce over query rows ``i`` of
``|α|`` (or ``β``), restricted to the visual tokens and renormalised.

Exact importance in log space. On long prompts the decay ``exp(A Σ Δ)`` from the query rows back to
early visual tokens is far below float32's range (≈ e^-103): computed directly, thousands of tokens
score exactly 0 and top-k among them falls back to the earliest. The exact scorers therefore work
with ``log`` scores and split the decay at a reference position ``r`` between the key and the rows::

    exp(A (cum_i - cum_j)) = exp(A (cum_i - cum_r)) · exp(A (cum_r - cum_j)),   cum_t = Σ_{k≤t} Δ_k

with ``r`` = the first query row at or after ``j``. Every row that sees ``j`` has ``i ≥ r``, so both
factors are ≤ 1. The long-range factor ``exp(A (cum_r - cum_j))`` (the one that underflows) is kept
as its logarithm in float64; the row factor ``exp(A (cum_i - cum_r))`` only spans the query rows
and is applied in float32 inside a matrix product over the rows (Mamba-2) or the state (Mamba-1).
Visual tokens are processed in *segments* that share ``r`` in every sample (one segment when the
query rows follow the visual tokens; one per stretch between interleaved query tokens). The result
is a float64 log score per token, normalised with ``logsumexp``: :func:`mamba2_log_scores`,
:func:`mamba1_log_scores`; ``mamba*_importance`` returns its probabilities (float32 when float32 keeps
every distinction, float64 otherwise: see :func:`normalise_log`). A token then ties at 0 only where its
probability is below float64's range (≈ e^-745 of the total). That does happen: with Mamba-2's
initial ``A ∈ [-16, -1]`` and ``Δ ∈ [0.01, 0.1]``, 7,154 of 16,304 visual tokens of a 16k prompt
(``tests/test_scorers_long.py``); the log scores never tie, so rank by them where it matters.

:func:`mamba2_hidden_attention` and :func:`mamba1_hidden_attention` compute ``α`` itself (float32,
for reconstructing the scan output on short inputs); the importance no longer goes through them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..merge import scale_steps
from ..registry import frozen_registry
from .config import ScorerConfig, normalise, reduce_heads, reduce_rows


def _conv_act_mask(
    mixer: nn.Module, xs: torch.Tensor, attention_mask: torch.Tensor | None, first: int = 0
) -> torch.Tensor:
    """Depthwise causal conv + activation + padding mask, as the mixer does. ``xs``: ``(b, T, ch)`` float32.

    The conv, of kernel width ``kw``, is written as ``kw`` shifted multiply-adds,
    ``out[t] = bias + Σ_j w[kw-1-j] · xs[t-j]`` for ``j = 0 .. kw-1`` (``xs[t-j] = 0`` before the sequence), which
    is what ``conv1d(padding=kw-1)[..., :T]`` computes; on CPU it takes half the time of a grouped ``conv1d`` with
    ``ch`` groups of one channel, and it works on the ``(b, T, ch)`` layout directly (no transposes). ``xs`` holds
    the conv's channels ``first ..`` (the conv is depthwise: each channel is its own filter)."""
    weight = mixer.conv1d.weight.float()[first:, 0, :]  # (ch, kw)
    kw = weight.shape[-1]
    out = xs * weight[:, kw - 1]
    for j in range(1, min(kw, xs.shape[1])):
        out[:, j:] += xs[:, :-j] * weight[:, kw - 1 - j]
    if mixer.conv1d.bias is not None:
        out = out + mixer.conv1d.bias.float()[first:]
    out = mixer.act(out)
    if attention_mask is not None:
        out = out * attention_mask[:, :, None].to(out.dtype)
    return out


@dataclass
class Mamba2Primitives:
    """Selective-scan inputs of one Mamba-2 mixer call, float32.

    Shapes: ``x (b, T, h, p)``, ``B``/``C`` ``(b, T, g, n)``, ``dt`` = Δ ``(b, T, h)`` (softplus,
    bias and clamp applied), ``A (h,)`` negative, ``D (h,)``, ``gate`` = z ``(b, T, h·p)``. ``x`` and ``gate`` are
    ``None`` when built without them (``with_x=False``: what scoring needs).
    """

    x: torch.Tensor | None
    B: torch.Tensor
    C: torch.Tensor
    dt: torch.Tensor
    A: torch.Tensor
    D: torch.Tensor
    gate: torch.Tensor | None


def mamba2_primitives(
    mixer: nn.Module, projected: torch.Tensor, attention_mask: torch.Tensor | None = None, with_x: bool = True
) -> Mamba2Primitives:
    """Rebuild ``x, B, C, Δ`` from a Mamba-2 mixer's ``in_proj`` output.

    Args:
        mixer: a stock Mamba-2 mixer (Nemotron-H, Bamba, Falcon-H1, Granite hybrid, Zamba2, Mamba2).
        projected: ``(b, T, 2·d_inner + 2·g·n + h)`` the ``in_proj`` output of the current call.
        attention_mask: ``(b, T)`` padding mask the mixer received, or ``None``.
        with_x: also rebuild ``x`` and the gate ``z``. The importance needs only ``B``, ``C`` and ``Δ``
            (:func:`mamba2_importance`); without ``x`` the convolution runs on the ``2·g·n`` channels of ``B`` and
            ``C`` alone, a third of its channels on the usual shapes (``d_inner = 2·d``), with the same values.
    """
    d_inner, conv_dim, h = mixer.intermediate_size, mixer.conv_dim, mixer.num_heads
    g, n, p = mixer.n_groups, mixer.ssm_state_size, mixer.head_dim
    start = 0 if with_x else 2 * d_inner  # [z (d_inner) | x (d_inner) B C (2·g·n) | Δ (h)]
    zxbcdt = projected[..., start:].float()
    mup = getattr(mixer, "mup_vector", None)  # Falcon-H1 scales in_proj's output by muP multipliers.
    if mup is not None:
        zxbcdt = zxbcdt * mup.float()[..., start:]
    b, T = zxbcdt.shape[:2]
    if with_x:
        gate, xBC, dt = zxbcdt.split([d_inner, conv_dim, h], dim=-1)
        x, B, C = _conv_act_mask(mixer, xBC, attention_mask).split([d_inner, g * n, g * n], dim=-1)
        x = x.reshape(b, T, h, p)
    else:
        BC, dt = zxbcdt.split([2 * g * n, h], dim=-1)
        B, C = _conv_act_mask(mixer, BC, attention_mask, first=d_inner).split([g * n, g * n], dim=-1)
        x = gate = None
    lo, hi = mixer.time_step_limit
    dt = F.softplus(dt + mixer.dt_bias.float()).clamp(min=float(lo), max=float(hi))
    return Mamba2Primitives(
        x=x,
        B=B.reshape(b, T, g, n),
        C=C.reshape(b, T, g, n),
        dt=dt,
        A=-torch.exp(mixer.A_log.float()),
        D=mixer.D.float(),
        gate=gate,
    )


def _gather_t(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Gather along the time axis (dim 1) of ``t (b, T, ...)`` with ``index (b, n_positions)``."""
    shape = index.shape + t.shape[2:]
    idx = index.reshape(*index.shape, *([1] * (t.dim() - 2))).expand(shape)
    return t.gather(1, idx)


# -- exact scores in log space: shared pieces ---------------------------------------------------------
_NO_ROW = torch.iinfo(torch.long).max  # "no query row at or after this token"


@dataclass
class _Segment:
    """Visual columns ``[start, stop)`` that share, in every sample, the first query row at or after them.

    ``r``: ``(b,)`` long, that row's position (0 where the sample has none: then ``rows`` is all false).
    ``rows``: ``(b, Q)`` bool, the query rows that see every column of the segment: valid and ``≥ r``.
    """

    start: int
    stop: int
    r: torch.Tensor
    rows: torch.Tensor


def _segments(q_index: torch.Tensor, q_valid: torch.Tensor, v_index: torch.Tensor, max_cols: int) -> list[_Segment]:
    """Cut the visual columns into runs with one reference row ``r`` per sample.

    ``r(j)`` = the first valid query position ``≥ j``. Within a run no query row lies between a column
    ``j`` and its ``r``, so the rows that see ``j`` (``i ≥ j``) are exactly the rows ``i ≥ r``: one
    row mask per run. When the query rows follow the visual tokens (``query="after_visual"``, ``"last"``)
    there is one run; interleaved query tokens (``"all_text"`` with frame separators) start a new run
    at each of them. Runs are cut further to at most ``max_cols`` columns (memory).

    Args:
        q_index: ``(b, Q)`` long, query positions; q_valid: ``(b, Q)`` bool; v_index: ``(b, V)`` long.
    """
    V = v_index.shape[1]
    qs = torch.where(q_valid, q_index, torch.full_like(q_index, _NO_ROW)).sort(dim=1).values  # (b, Q) ascending
    slot = torch.searchsorted(qs, v_index.contiguous())  # (b, V) first slot with qs ≥ the column's position
    nxt = torch.cat([qs, torch.full_like(qs[:, :1], _NO_ROW)], dim=1).gather(1, slot)  # (b, V) r(j)
    change = (nxt[:, 1:] != nxt[:, :-1]).any(dim=0)  # (V - 1,) a run ends in some sample
    cuts = [0, *(change.nonzero().flatten() + 1).tolist(), V]
    segments = []
    for lo, hi in zip(cuts[:-1], cuts[1:], strict=True):
        r = nxt[:, lo]  # (b,)
        has = r != _NO_ROW
        rows = q_valid & has[:, None] & (q_index >= r[:, None])  # (b, Q)
        r = torch.where(has, r, torch.zeros_like(r))
        segments += [_Segment(s, min(s + max_cols, hi), r, rows) for s in range(lo, hi, max_cols)]
    return segments


def _log_reduce_heads(log_s: torch.Tensor, how: str) -> torch.Tensor:
    """:func:`reduce_heads` in log space: ``(b, h, V)`` → ``(b, V)``.

    ``log mean_h e^L = logsumexp_h L - log h``;  ``log max_h e^L = max_h L``.
    """
    if how == "max":
        return log_s.amax(dim=1)
    return torch.logsumexp(log_s, dim=1) - math.log(log_s.shape[1])


def normalise_log(log_scores: torch.Tensor) -> torch.Tensor:
    """Probabilities ``(b, V)`` float64 from log scores ``(b, V)``: ``exp(L - logsumexp_V L)``.

    float64 (exact scores only; the decay-free proxy stays float32): on long prompts the tokens far behind
    the query rows have probabilities below float32's range (≈ 1e-45) and would all tie at 0.
    """
    log_scores = log_scores.double()
    return torch.exp(log_scores - torch.logsumexp(log_scores, dim=-1, keepdim=True))  # (b, V) float64


def mamba2_hidden_attention(
    p: Mamba2Primitives, q_index: torch.Tensor, k_index: torch.Tensor, decay: bool = True
) -> torch.Tensor:
    """Hidden attention of the rows ``q_index`` over the columns ``k_index``.

    Args:
        p: primitives from :func:`mamba2_primitives`.
        q_index: ``(b, Q)`` long, query positions.
        k_index: ``(b, S)`` long, key positions.
        decay: exact ``α`` if true, else the decay-free ``β = |C·B| Δ``.
    Returns:
        ``(b, h, Q, S)`` float32; zero where the key comes after the query.
    """
    h, g = p.dt.shape[-1], p.B.shape[2]
    Cq = _gather_t(p.C, q_index)  # [b, Q, g, n]
    Bk = _gather_t(p.B, k_index)  # [b, S, g, n]
    CB = torch.einsum("bqgn,bkgn->bgqk", Cq, Bk).repeat_interleave(h // g, dim=1)  # [b, h, Q, S]
    dtk = _gather_t(p.dt, k_index).transpose(1, 2)[:, :, None, :]  # [b, h, 1, S]
    causal = (k_index[:, None, :] <= q_index[:, :, None])[:, None]  # [b, 1, Q, S]
    if not decay:
        return (CB.abs() * dtk).masked_fill(~causal, 0.0)
    cum = torch.cumsum(p.dt.double(), dim=1)  # [b, T, h]; float64: differences feed exp().
    seg = _gather_t(cum, q_index).transpose(1, 2)[..., :, None] - _gather_t(cum, k_index).transpose(1, 2)[..., None, :]
    # seg[b, h, i, j] = Σ_{k=j+1..i} Δ_k (negative for j > i, masked below before exp can overflow).
    seg = seg.clamp_min(0).float()
    return (CB * dtk * torch.exp(p.A[None, :, None, None] * seg)).masked_fill(~causal, 0.0)


def mamba2_log_scores(
    p: Mamba2Primitives, q_index: torch.Tensor, q_valid: torch.Tensor, v_index: torch.Tensor, cfg: ScorerConfig
) -> torch.Tensor:
    """Log of the exact Mamba-2 importance before normalisation, in float64.

    With ``r`` the first query row at or after ``j`` (see the module docstring)::

        L[j]      = log reduce_h reduce_{i∈Q} |α_h[i, j]|
        |α_h[i,j]| = Δ_{j,h} exp(A_h (cum_r - cum_j)) · |C_i·B_j| w_h(i)
        w_h(i)    = exp(A_h (cum_i - cum_r)) ∈ (0, 1]   for i ≥ r (0 for rows before r: they do not see j)

    so ``L[j] = reduce_h [log Δ_{j,h} + A_h (cum_r - cum_j) + log reduce_i |C_i·B_j| w_h(i)]``. The
    first two terms are float64 (never underflow). ``C_i·B_j`` is a signed sum, taken in float64 (in
    float32 a nearly cancelling one loses its relative precision: log errors of 1e-5 were measured);
    the row reduction of its magnitude is a float32 matrix product per group (mean) or a
    product-and-max (max), sums of positive terms. The reduction over heads is a ``logsumexp`` (mean)
    or a max. Float64 reference, one row at a time:
    :func:`hybridreduce.scoring.reference.mamba2_log_importance_ref`.

    Args:
        p: primitives from :func:`mamba2_primitives`.
        q_index: ``(b, Q)`` long query positions; q_valid: ``(b, Q)`` bool, real query slots.
        v_index: ``(b, V)`` long visual positions.
        cfg: ``head_reduce``, ``query_reduce`` and ``chunk_elements`` are used.
    Returns:
        ``(b, V)`` float64; ``-inf`` where no query row sees the token.
    Memory: per segment of ``V_seg ≤ chunk_elements / (b·h·Q)`` columns, the largest tensors are ``C·B``
    ``(b, g, Q, V_seg)`` (float64, then float32) and, for the max over rows, the ``(b, h, Q, V_seg)`` float32
    products: at most ``chunk_elements`` elements each, whatever the prompt length.
    """
    b, Q = q_index.shape
    h, g = p.dt.shape[-1], p.B.shape[2]
    hg = h // g  # heads per group; head k·hg + m reads group k (as repeat_interleave)
    V = v_index.shape[1]
    A = p.A.double()  # (h,)
    Cq = _gather_t(p.C, q_index).double()  # (b, Q, g, n)
    # float64: differences of long sums of Δ are the decay's exponent.
    cum = torch.cumsum(p.dt.double(), dim=1)  # (b, T, h)
    cum_q = _gather_t(cum, q_index)  # (b, Q, h)
    count = q_valid.sum(dim=1).clamp_min(1).float()  # (b,) the mean over rows divides by the real rows
    out = torch.empty(b, V, dtype=torch.float64, device=p.dt.device)
    step = max(1, cfg.chunk_elements // max(1, b * h * Q))
    for seg in _segments(q_index, q_valid, v_index, step):
        cols = v_index[:, seg.start : seg.stop]  # (b, V_seg)
        cum_r = _gather_t(cum, seg.r[:, None])  # (b, 1, h)
        # Row factor w_h(i): exponent in float64, factor in float32 — it spans only the query rows (1 at
        # row r); a row whose factor underflows weighs < e^-87 of row r's.
        log_w = (A * (cum_q - cum_r)).masked_fill(~seg.rows[..., None], float("-inf"))  # (b, Q, h)
        w = log_w.exp().float().reshape(b, Q, g, hg).permute(0, 2, 1, 3)  # (b, g, Q, hg)
        # C·B is a signed sum over the state: float64, so that near-cancelling pairs keep their
        # relative precision; its magnitude is then weighed in float32 (positive sums only).
        CB = torch.einsum("bqgn,bvgn->bgqv", Cq, _gather_t(p.B, cols).double()).abs().float()  # (b, g, Q, V_seg)
        if cfg.query_reduce == "max":
            R = (CB[:, :, None] * w.transpose(2, 3)[..., None]).amax(dim=3)  # (b, g, hg, V_seg)
        else:
            R = (CB.transpose(2, 3) @ w).transpose(2, 3) / count[:, None, None, None]  # (b, g, hg, V_seg)
        R = R.reshape(b, h, -1).double()  # (b, h, V_seg)
        # Long-range factor, float64 and in log space: log Δ_{j,h} + A_h (cum_r - cum_j) ≤ log Δ_{j,h}.
        log_dv = _gather_t(p.dt, cols).double().log() + A * (cum_r - _gather_t(cum, cols))  # (b, V_seg, h)
        L = log_dv.transpose(1, 2) + R.log()  # (b, h, V_seg); R = 0 (no row sees j) → -inf
        out[:, seg.start : seg.stop] = _log_reduce_heads(L, cfg.head_reduce)
    return out


def mamba2_importance(
    p: Mamba2Primitives, q_index: torch.Tensor, q_valid: torch.Tensor, v_index: torch.Tensor, cfg: ScorerConfig
) -> torch.Tensor:
    """Importance ``(b, V)`` of the visual tokens from a Mamba-2 mixer (sums to one per sample).

    ``decay_free``: float32. ``exact``: probabilities from :func:`mamba2_log_scores` through
    :func:`normalise_log` — float64 where float32 would tie the tokens far behind the query rows at 0.
    """
    h, g = p.dt.shape[-1], p.B.shape[2]
    if cfg.mamba == "decay_free":
        # β_h[i, j] = |C_i·B_j|_{g(h)} Δ_{j,h}: Δ does not depend on i, so reduce |C·B| over the rows
        # first (per group) and multiply by Δ afterwards; exact for both mean and max.
        CB = torch.einsum("bqgn,bvgn->bgqv", _gather_t(p.C, q_index), _gather_t(p.B, v_index)).abs()
        causal = (v_index[:, None, :] <= q_index[:, :, None])[:, None]
        r = reduce_rows(CB.masked_fill(~causal, 0.0), q_valid, cfg.query_reduce)  # [b, g, V]
        w = r.repeat_interleave(h // g, dim=1) * _gather_t(p.dt, v_index).transpose(1, 2)  # [b, h, V]
        return normalise(reduce_heads(w, cfg.head_reduce))
    return normalise_log(mamba2_log_scores(p, q_index, q_valid, v_index, cfg))


@dataclass
class Mamba1Primitives:
    """Selective-scan inputs of one Mamba-1 mixer call, float32.

    Shapes: ``x (b, T, c)``, ``B``/``C`` ``(b, T, n)``, ``dt`` = Δ ``(b, T, c)``, ``A (c, n)``
    negative, ``D (c,)``, ``gate`` = z ``(b, T, c)``.
    """

    x: torch.Tensor
    B: torch.Tensor
    C: torch.Tensor
    dt: torch.Tensor
    A: torch.Tensor
    D: torch.Tensor
    gate: torch.Tensor


def mamba1_primitives(
    mixer: nn.Module, projected: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> Mamba1Primitives:
    """Rebuild ``x, B, C, Δ`` from a Mamba-1 (Jamba) mixer's ``in_proj`` output ``(b, T, 2c)``.

    After the conv, Δ, B and C come from the mixer's own submodules: ``x_proj``, the layer's
    RMS norms on each of them (``dt_layernorm``, ``b_layernorm``, ``c_layernorm``) and ``dt_proj``.
    """
    x, gate = projected.float().chunk(2, dim=-1)
    x = _conv_act_mask(mixer, x, attention_mask)
    rank, n = mixer.time_step_rank, mixer.ssm_state_size
    w_dtype = mixer.x_proj.weight.dtype
    ts, B, C = mixer.x_proj(x.to(w_dtype)).float().split([rank, n, n], dim=-1)
    norms = [getattr(mixer, name, None) for name in ("dt_layernorm", "b_layernorm", "c_layernorm")]
    if norms[0] is not None:
        ts, B, C = (norm(t.to(w_dtype)).float() for norm, t in zip(norms, (ts, B, C), strict=True))
    dt = F.softplus(F.linear(ts, mixer.dt_proj.weight.float(), mixer.dt_proj.bias.float()))
    return Mamba1Primitives(x=x, B=B, C=C, dt=dt, A=-torch.exp(mixer.A_log.float()), D=mixer.D.float(), gate=gate)


def mamba1_hidden_attention(
    p: Mamba1Primitives,
    q_index: torch.Tensor,
    k_index: torch.Tensor,
    decay: bool = True,
    chunk_elements: int = 1 << 24,
) -> torch.Tensor:
    """Per-channel hidden attention ``(b, c, Q, S)`` of Mamba-1 (``S`` key positions), chunked over channels.

    The exact form costs ``Q·S·c·n``; channels are processed in blocks so that no temporary holds
    more than ``chunk_elements`` elements (at least one channel at a time).
    """
    b, Q = q_index.shape
    S = k_index.shape[1]
    c, n = p.A.shape
    Cq, Bk = _gather_t(p.C, q_index), _gather_t(p.B, k_index)  # [b, Q, n], [b, S, n]
    dtk = _gather_t(p.dt, k_index)  # [b, S, c]
    causal = (k_index[:, None, :] <= q_index[:, :, None])[:, None]  # [b, 1, Q, S]
    if not decay:
        CB = torch.einsum("bqn,bkn->bqk", Cq, Bk).abs()
        return (CB[:, None] * dtk.permute(0, 2, 1)[:, :, None, :]).masked_fill(~causal, 0.0)
    cum = torch.cumsum(p.dt.double(), dim=1)  # [b, T, c]
    cq, ck = _gather_t(cum, q_index), _gather_t(cum, k_index)
    out = torch.empty(b, c, Q, S, dtype=torch.float32, device=p.x.device)
    step = max(1, chunk_elements // max(1, b * Q * S * n))
    for c0 in range(0, c, step):
        sl = slice(c0, c0 + step)
        seg = (cq[:, :, None, sl] - ck[:, None, :, sl]).clamp_min(0).float()  # [b, Q, S, cc]
        decay_f = torch.exp(seg[..., None] * p.A[sl][None, None, None])  # [b, Q, S, cc, n]
        a = torch.einsum("bqkcn,bqn,bkn->bcqk", decay_f, Cq, Bk) * dtk[:, :, sl].permute(0, 2, 1)[:, :, None, :]
        out[:, sl] = a
    return out.masked_fill(~causal, 0.0)


def mamba1_log_scores(
    p: Mamba1Primitives, q_index: torch.Tensor, q_valid: torch.Tensor, v_index: torch.Tensor, cfg: ScorerConfig
) -> torch.Tensor:
    """Log of the exact Mamba-1 importance before normalisation, in float64.

    With ``r`` the first query row at or after ``j`` (module docstring), ``d_c(j) = cum_r[c] - cum_j[c] ≥ 0``
    and ``Ā_c = max_n A[c, n]`` (the slowest-decaying state of channel ``c``)::

        α_c[i, j] = Δ_j[c] · exp(Ā_c d_c(j)) · M_c[i, j]
        M_c[i, j] = Σ_n (C_i[n] u_cn(i)) (B_j[n] v_cn(j))                       a (Q, n) @ (n, V_seg) product
        u_cn(i)   = exp(A[c, n] (cum_i[c] - cum_r[c]))  ∈ (0, 1]   rows i ≥ r (0 before r)
        v_cn(j)   = exp((A[c, n] - Ā_c) d_c(j))         ∈ (0, 1]

        L[j] = reduce_c [log Δ_j[c] + Ā_c d_c(j) + log reduce_i |M_c[i, j]|]

    ``Ā_c d_c(j)`` — the decay that underflows on long prompts — stays a float64 logarithm. Factoring
    out the slowest state's decay leaves the sum over ``n`` at its natural scale: at row ``r`` the
    slowest state's term has ``u·v = 1``; a state whose term underflows in float32 is ``e^-87``
    below the slowest one of the same channel. The sum over ``n`` keeps the signs of ``C·B``, like the
    scan. ``d`` is a float64 difference rounded once to float32; ``u``, ``v`` and the product are
    float32: a term ``e^-x`` carries a relative error ``≈ x·1.2e-7``, i.e. at most ``5e-8`` of the
    dominant term, and where the signed sum nearly cancels its relative error grows by
    ``Σ_n |term| / |Σ_n term|`` (as for the direct form, and the scan itself, in float32). Measured
    against the float64 reference: log-probabilities within ≈ 2e-6 (``tests/test_scorers_long.py``);
    a float64 product halves that at twice the time.

    Cost: ``b·c·Q·n·V`` multiply-adds in a batched matrix product and ``b·c·n·(V + Q)`` exponentials,
    against ``b·c·Q·n·V`` exponentials for the direct form (:func:`mamba1_hidden_attention`).

    Args:
        p: primitives from :func:`mamba1_primitives`.
        q_index: ``(b, Q)`` long query positions; q_valid: ``(b, Q)`` bool, real query slots.
        v_index: ``(b, V)`` long visual positions.
        cfg: ``head_reduce``, ``query_reduce`` and ``chunk_elements`` are used.
    Returns:
        ``(b, V)`` float64; ``-inf`` where no query row sees the token.
    Memory: per segment of ``V_seg ≤ chunk_elements / (b·c·max(n, Q))`` columns, the two largest tensors
    are the ``(b, c, n, V_seg)`` factor ``B_j v_cn(j)`` and the ``(b, c, Q, V_seg)`` product ``M``, float32,
    at most ``chunk_elements`` elements each: 8·chunk_elements bytes together (128 MiB at the default
    2^24), whatever the prompt length. The rest is ``(b, c, V_seg)`` or ``(b, c, Q, n)``.
    Float64 reference, one row at a time: :func:`hybridreduce.scoring.reference.mamba1_log_importance_ref`.
    """
    b, Q = q_index.shape
    c, n = p.A.shape
    V = v_index.shape[1]
    A = p.A.double()  # (c, n)
    A_slow = A.amax(dim=1)  # (c,) Ā_c, the least negative
    A_gap = (A - A_slow[:, None]).float()  # (c, n) A[c, n] - Ā_c ≤ 0
    count = q_valid.sum(dim=1).clamp_min(1).float()  # (b,) the mean over rows divides by the real rows
    Cq = _gather_t(p.C, q_index)  # (b, Q, n)
    # float64: differences of long sums of Δ are the decay's exponent.
    cum = torch.cumsum(p.dt.double(), dim=1)  # (b, T, c)
    cum_q = _gather_t(cum, q_index)  # (b, Q, c)
    out = torch.empty(b, V, dtype=torch.float64, device=p.dt.device)
    step = max(1, cfg.chunk_elements // max(1, b * c * max(n, Q)))
    for seg in _segments(q_index, q_valid, v_index, step):
        cols = v_index[:, seg.start : seg.stop]  # (b, V_seg)
        cum_r = _gather_t(cum, seg.r[:, None])  # (b, 1, c)
        # Row factor u: exponent from float64 differences, factor in float32 — it spans only the query
        # rows (1 at row r), so a row's term underflows only e^-87 below row r's.
        log_u = A[None, :, None, :] * (cum_q - cum_r).transpose(1, 2)[..., None]  # (b, c, Q, n) ≤ 0 on seen rows
        log_u = log_u.masked_fill(~seg.rows[:, None, :, None], float("-inf"))
        lhs = Cq[:, None] * log_u.float().exp()  # (b, c, Q, n)   C_i[n] u_cn(i)
        d = (cum_r - _gather_t(cum, cols)).transpose(1, 2)  # (b, c, V_seg) ≥ 0, float64
        # Column factor v in float32 (the largest tensor here): d rounded once, then (A - Ā) d and exp.
        rhs = (A_gap[None, :, :, None] * d.float()[:, :, None, :]).exp_()  # (b, c, n, V_seg)   v_cn(j)
        rhs *= _gather_t(p.B, cols).transpose(1, 2)[:, None]  # (b, c, n, V_seg)   B_j[n] v_cn(j)
        M = (lhs @ rhs).abs_()  # (b, c, Q, V_seg) float32 |M_c[i, j]|
        # Rows that do not see the segment (and padded query slots) have lhs = 0, so M = 0 there: the
        # plain sum / max over rows is reduce_rows (mean over the real rows, as the reference).
        R = (
            M.amax(dim=2) if cfg.query_reduce == "max" else M.sum(dim=2) / count[:, None, None]
        ).double()  # (b, c, V_seg)
        log_dv = _gather_t(p.dt, cols).double().log().transpose(1, 2) + A_slow[None, :, None] * d  # (b, c, V_seg)
        L = log_dv + R.log()  # (b, c, V_seg); R = 0 (no row sees j) → -inf
        out[:, seg.start : seg.stop] = _log_reduce_heads(L, cfg.head_reduce)
    return out


def mamba1_importance(
    p: Mamba1Primitives, q_index: torch.Tensor, q_valid: torch.Tensor, v_index: torch.Tensor, cfg: ScorerConfig
) -> torch.Tensor:
    """Importance ``(b, V)`` of the visual tokens from a Mamba-1 mixer (sums to one per sample).

    ``decay_free``: float32. ``exact``: probabilities from :func:`mamba1_log_scores` through
    :func:`normalise_log` (float64 where float32 would tie tokens).
    """
    if cfg.mamba == "decay_free":
        # β_c[i, j] = |C_i·B_j| Δ_j[c] factorises: reduce |C·B| over rows, then Δ over channels.
        CB = torch.einsum("bqn,bvn->bqv", _gather_t(p.C, q_index), _gather_t(p.B, v_index)).abs()
        causal = v_index[:, None, :] <= q_index[:, :, None]
        r = reduce_rows(CB.masked_fill(~causal, 0.0)[:, None], q_valid, cfg.query_reduce)[:, 0]  # [b, V]
        dtv = _gather_t(p.dt, v_index)  # [b, V, c]
        scale = dtv.amax(dim=-1) if cfg.head_reduce == "max" else dtv.mean(dim=-1)
        return normalise(r * scale)
    return normalise_log(mamba1_log_scores(p, q_index, q_valid, v_index, cfg))


# -- the SSM kinds: how each scores, and where its steps are (for size-aware merging) ------------------------------
def _score_mamba2(mixer: nn.Module, projected: torch.Tensor, mask, pos, cfg: ScorerConfig) -> torch.Tensor:
    prims = mamba2_primitives(mixer, projected, mask, with_x=False)
    return mamba2_importance(prims, pos.q_index, pos.q_valid, pos.v_index, cfg)


def _score_mamba1(mixer: nn.Module, projected: torch.Tensor, mask, pos, cfg: ScorerConfig) -> torch.Tensor:
    prims = mamba1_primitives(mixer, projected, mask)
    return mamba1_importance(prims, pos.q_index, pos.q_valid, pos.v_index, cfg)


def _scale_mamba2(mixer: nn.Module, projected: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """``in_proj``'s output with the step channels ``[z | xBC | dt (h)]`` of each token scaled by its size."""
    h = mixer.num_heads
    mup = getattr(mixer, "mup_vector", None)  # Falcon-H1 multiplies in_proj's output by muP multipliers first
    raw = scale_steps(projected[..., -h:], sizes, mixer.dt_bias, mixer.time_step_limit,
                      None if mup is None else mup[..., -h:])  # fmt: skip
    return torch.cat([projected[..., :-h], raw], dim=-1)


@dataclass(frozen=True)
class SsmKind:
    """What the toolkit needs of one kind of selective-scan mixer (:attr:`BlockSpec.ssm_type
    <hybridreduce.adapters.base.BlockSpec.ssm_type>`).

    Attributes:
        name: the kind (``"mamba2"``, ``"mamba1"``).
        score: ``(mixer, in_proj output (b, T, ·), padding (b, T) | None, positions, scorer) → (b, V)`` importance.
        step_module: the submodule whose output holds the raw steps (``in_proj`` for Mamba-2), which the size-aware
            engine hooks; ``None`` where no module emits them. Mamba-1 (Jamba): transformers multiplies
            ``dt_proj.weight`` into the low-rank step input itself (``dt_proj`` never runs as a module) and the
            rank-``r`` input has no preimage for a per-channel scaling, so its steps stay unscaled.
        scale_steps: ``(mixer, that output, sizes (b, T)) → output`` with each token's ``Δ`` times its size
            (:func:`hybridreduce.merge.scale_steps`).
    """

    name: str
    score: Callable
    step_module: Callable[[nn.Module], nn.Module] | None = None
    scale_steps: Callable | None = None


#: ``ssm_type`` → :class:`SsmKind` (read-only).
SSM_KINDS: Mapping[str, SsmKind] = frozen_registry(
    (
        SsmKind("mamba2", _score_mamba2, lambda mixer: mixer.in_proj, _scale_mamba2),
        SsmKind("mamba1", _score_mamba1),
    ),
    "SSM kind",
)
