"""Language-aware importance from Mamba blocks: hidden attention rebuilt from primitives.

The taps observe the mixer's ``in_proj`` output and redo the cheap part of the mixer themselves (the
depthwise causal conv, its activation, the split into ``x, B, C, dt``, and ``Δ``), so the scores do
not depend on whether the scan ran on transformers' torch path or on mamba-ssm / causal-conv1d
kernels. Everything is computed in float32 whatever the model dtype; cumulative sums of ``Δ`` are
taken in float64 because their differences feed an exponential.

Mamba-2 (scalar ``A_h`` per head; ``B``, ``C`` per group ``g(h)``)::

    α_h[i, j] = (C_i · B_j) Δ_{j,h} exp(A_h Σ_{k=j+1..i} Δ_{k,h}),  j ≤ i     (exact)
    β_h[i, j] = |C_i · B_j| Δ_{j,h},                                 j ≤ i     (decay-free)
    y_i = Σ_j α_h[i, j] x_j + D_h x_i

Mamba-1 (diagonal ``A[c, n]``; ``B``, ``C`` shared by all channels)::

    α_c[i, j] = Σ_n C_i[n] B_j[n] Δ_j[c] exp(A[c, n] Σ_{k=j+1..i} Δ_k[c])
    β_c[i, j] = |C_i · B_j| Δ_j[c]

Importance of visual token ``j`` = reduce over heads/channels of reduce over query rows ``i`` of
``|α|`` (or ``β``), restricted to the visual tokens and renormalised.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import ScorerConfig, normalise, reduce_heads, reduce_rows


def _conv_act_mask(mixer: nn.Module, xs: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Depthwise causal conv + activation + padding mask, as the mixer does. ``xs``: ``(b, T, ch)``."""
    T = xs.shape[1]
    weight = mixer.conv1d.weight.float()  # [ch, 1, k]
    bias = mixer.conv1d.bias.float() if mixer.conv1d.bias is not None else None
    out = F.conv1d(xs.transpose(1, 2), weight, bias, padding=weight.shape[-1] - 1, groups=weight.shape[0])
    out = mixer.act(out[..., :T]).transpose(1, 2)
    if attention_mask is not None:
        out = out * attention_mask[:, :, None].to(out.dtype)
    return out


@dataclass
class Mamba2Primitives:
    """Selective-scan inputs of one Mamba-2 mixer call, float32.

    Shapes: ``x (b, T, h, p)``, ``B``/``C`` ``(b, T, g, n)``, ``dt`` = Δ ``(b, T, h)`` (softplus,
    bias and clamp applied), ``A (h,)`` negative, ``D (h,)``, ``gate`` = z ``(b, T, h·p)``.
    """

    x: torch.Tensor
    B: torch.Tensor
    C: torch.Tensor
    dt: torch.Tensor
    A: torch.Tensor
    D: torch.Tensor
    gate: torch.Tensor


def mamba2_primitives(
    mixer: nn.Module, projected: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> Mamba2Primitives:
    """Rebuild ``x, B, C, Δ`` from a Mamba-2 mixer's ``in_proj`` output.

    Args:
        mixer: a stock Mamba-2 mixer (Nemotron-H, Bamba, Falcon-H1, Granite hybrid, Zamba2, Mamba2).
        projected: ``(b, T, 2·d_inner + 2·g·n + h)`` the ``in_proj`` output of the current call.
        attention_mask: ``(b, T)`` padding mask the mixer received, or ``None``.
    """
    zxbcdt = projected.float()
    mup = getattr(mixer, "mup_vector", None)  # Falcon-H1 scales in_proj's output by muP multipliers.
    if mup is not None:
        zxbcdt = zxbcdt * mup.float()
    d_inner, conv_dim, h = mixer.intermediate_size, mixer.conv_dim, mixer.num_heads
    g, n, p = mixer.n_groups, mixer.ssm_state_size, mixer.head_dim
    gate, xBC, dt = zxbcdt.split([d_inner, conv_dim, h], dim=-1)
    xBC = _conv_act_mask(mixer, xBC, attention_mask)
    x, B, C = xBC.split([d_inner, g * n, g * n], dim=-1)
    b, T = x.shape[:2]
    lo, hi = mixer.time_step_limit
    dt = F.softplus(dt + mixer.dt_bias.float()).clamp(min=float(lo), max=float(hi))
    return Mamba2Primitives(
        x=x.reshape(b, T, h, p),
        B=B.reshape(b, T, g, n),
        C=C.reshape(b, T, g, n),
        dt=dt,
        A=-torch.exp(mixer.A_log.float()),
        D=mixer.D.float(),
        gate=gate,
    )


def _gather_t(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Gather along the time axis (dim 1) of ``t (b, T, ...)`` with ``index (b, K)``."""
    shape = index.shape + t.shape[2:]
    idx = index.reshape(*index.shape, *([1] * (t.dim() - 2))).expand(shape)
    return t.gather(1, idx)


def mamba2_hidden_attention(
    p: Mamba2Primitives, q_index: torch.Tensor, k_index: torch.Tensor, decay: bool = True
) -> torch.Tensor:
    """Hidden attention of the rows ``q_index`` over the columns ``k_index``.

    Args:
        p: primitives from :func:`mamba2_primitives`.
        q_index: ``(b, Q)`` long, query positions.
        k_index: ``(b, K)`` long, key positions.
        decay: exact ``α`` if true, else the decay-free ``β = |C·B| Δ``.
    Returns:
        ``(b, h, Q, K)`` float32; zero where the key comes after the query.
    """
    h, g = p.dt.shape[-1], p.B.shape[2]
    Cq = _gather_t(p.C, q_index)  # [b, Q, g, n]
    Bk = _gather_t(p.B, k_index)  # [b, K, g, n]
    CB = torch.einsum("bqgn,bkgn->bgqk", Cq, Bk).repeat_interleave(h // g, dim=1)  # [b, h, Q, K]
    dtk = _gather_t(p.dt, k_index).transpose(1, 2)[:, :, None, :]  # [b, h, 1, K]
    causal = (k_index[:, None, :] <= q_index[:, :, None])[:, None]  # [b, 1, Q, K]
    if not decay:
        return (CB.abs() * dtk).masked_fill(~causal, 0.0)
    cum = torch.cumsum(p.dt.double(), dim=1)  # [b, T, h]; float64: differences feed exp().
    seg = _gather_t(cum, q_index).transpose(1, 2)[..., :, None] - _gather_t(cum, k_index).transpose(1, 2)[..., None, :]
    # seg[b, h, i, j] = Σ_{k=j+1..i} Δ_k (negative for j > i, masked below before exp can overflow).
    seg = seg.clamp_min(0).float()
    return (CB * dtk * torch.exp(p.A[None, :, None, None] * seg)).masked_fill(~causal, 0.0)


def mamba2_importance(
    p: Mamba2Primitives, q_index: torch.Tensor, q_valid: torch.Tensor, v_index: torch.Tensor, cfg: ScorerConfig
) -> torch.Tensor:
    """Importance ``(b, V)`` of the visual tokens from a Mamba-2 mixer (sums to one per sample)."""
    b, Q = q_index.shape
    h, g = p.dt.shape[-1], p.B.shape[2]
    V = v_index.shape[1]
    if cfg.mamba == "decay_free":
        # β_h[i, j] = |C_i·B_j|_{g(h)} Δ_{j,h}: Δ does not depend on i, so reduce |C·B| over the rows
        # first (per group) and multiply by Δ afterwards; exact for both mean and max.
        CB = torch.einsum("bqgn,bvgn->bgqv", _gather_t(p.C, q_index), _gather_t(p.B, v_index)).abs()
        causal = (v_index[:, None, :] <= q_index[:, :, None])[:, None]
        r = reduce_rows(CB.masked_fill(~causal, 0.0), q_valid, cfg.query_reduce)  # [b, g, V]
        w = r.repeat_interleave(h // g, dim=1) * _gather_t(p.dt, v_index).transpose(1, 2)  # [b, h, V]
        return normalise(reduce_heads(w, cfg.head_reduce))
    step = max(1, cfg.chunk_elements // max(1, b * h * Q))
    parts = []
    for start in range(0, V, step):
        alpha = mamba2_hidden_attention(p, q_index, v_index[:, start : start + step], decay=True)
        parts.append(reduce_rows(alpha.abs(), q_valid, cfg.query_reduce))  # [b, h, v]
    return normalise(reduce_heads(torch.cat(parts, dim=-1), cfg.head_reduce))


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
    r, n = mixer.time_step_rank, mixer.ssm_state_size
    w_dtype = mixer.x_proj.weight.dtype
    ts, B, C = mixer.x_proj(x.to(w_dtype)).float().split([r, n, n], dim=-1)
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
    """Per-channel hidden attention ``(b, c, Q, K)`` of Mamba-1, chunked over channels.

    The exact form costs ``Q·K·c·n``; channels are processed in blocks so that no temporary holds
    more than ``chunk_elements`` elements (at least one channel at a time).
    """
    b, Q = q_index.shape
    K = k_index.shape[1]
    c, n = p.A.shape
    Cq, Bk = _gather_t(p.C, q_index), _gather_t(p.B, k_index)  # [b, Q, n], [b, K, n]
    dtk = _gather_t(p.dt, k_index)  # [b, K, c]
    causal = (k_index[:, None, :] <= q_index[:, :, None])[:, None]  # [b, 1, Q, K]
    if not decay:
        CB = torch.einsum("bqn,bkn->bqk", Cq, Bk).abs()
        return (CB[:, None] * dtk.permute(0, 2, 1)[:, :, None, :]).masked_fill(~causal, 0.0)
    cum = torch.cumsum(p.dt.double(), dim=1)  # [b, T, c]
    cq, ck = _gather_t(cum, q_index), _gather_t(cum, k_index)
    out = torch.empty(b, c, Q, K, dtype=torch.float32, device=p.x.device)
    step = max(1, chunk_elements // max(1, b * Q * K * n))
    for c0 in range(0, c, step):
        sl = slice(c0, c0 + step)
        seg = (cq[:, :, None, sl] - ck[:, None, :, sl]).clamp_min(0).float()  # [b, Q, K, cc]
        decay_f = torch.exp(seg[..., None] * p.A[sl][None, None, None])  # [b, Q, K, cc, n]
        a = torch.einsum("bqkcn,bqn,bkn->bcqk", decay_f, Cq, Bk) * dtk[:, :, sl].permute(0, 2, 1)[:, :, None, :]
        out[:, sl] = a
    return out.masked_fill(~causal, 0.0)


def mamba1_importance(
    p: Mamba1Primitives, q_index: torch.Tensor, q_valid: torch.Tensor, v_index: torch.Tensor, cfg: ScorerConfig
) -> torch.Tensor:
    """Importance ``(b, V)`` of the visual tokens from a Mamba-1 mixer (sums to one per sample)."""
    b, Q = q_index.shape
    c, n = p.A.shape
    if cfg.mamba == "decay_free":
        # β_c[i, j] = |C_i·B_j| Δ_j[c] factorises: reduce |C·B| over rows, then Δ over channels.
        CB = torch.einsum("bqn,bvn->bqv", _gather_t(p.C, q_index), _gather_t(p.B, v_index)).abs()
        causal = v_index[:, None, :] <= q_index[:, :, None]
        r = reduce_rows(CB.masked_fill(~causal, 0.0)[:, None], q_valid, cfg.query_reduce)[:, 0]  # [b, V]
        dtv = _gather_t(p.dt, v_index)  # [b, V, c]
        scale = dtv.amax(dim=-1) if cfg.head_reduce == "max" else dtv.mean(dim=-1)
        return normalise(r * scale)
    V = v_index.shape[1]
    # Bound both the [b, c, Q, v] result and the [b, Q, v, c_chunk, n] temporary of each chunk.
    step = max(1, cfg.chunk_elements // max(1, b * c * Q))
    parts = []
    for start in range(0, V, step):
        alpha = mamba1_hidden_attention(p, q_index, v_index[:, start : start + step], True, cfg.chunk_elements)
        parts.append(reduce_rows(alpha.abs(), q_valid, cfg.query_reduce))  # [b, c, v]
    return normalise(reduce_heads(torch.cat(parts, dim=-1), cfg.head_reduce))
