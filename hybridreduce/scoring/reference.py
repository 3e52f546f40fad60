"""Float64 reference implementations with plain loops.

These back every fast path in the tests and in ``hybridreduce verify``: they upcast to float64 and
loop over positions the way the formulas read, trading speed for obviousness (like mamba-ssm's
``*_ref`` functions). Use them on short sequences only.
"""

from __future__ import annotations

import math

import torch

from .mamba import Mamba1Primitives, Mamba2Primitives


def mamba2_scan_ref(p: Mamba2Primitives) -> torch.Tensor:
    """Sequential Mamba-2 recurrence ``h_i = exp(Δ_i A) h_{i-1} + Δ_i B_i x_iᵀ``, ``y_i = C_i h_i + D x_i``.

    Returns ``y`` of shape ``(b, T, h, p)`` in float64.
    """
    x, B, C, dt = p.x.double(), p.B.double(), p.C.double(), p.dt.double()
    A, D = p.A.double(), p.D.double()
    b, T, h, hd = x.shape
    rep = h // B.shape[2]
    Bh, Ch = B.repeat_interleave(rep, dim=2), C.repeat_interleave(rep, dim=2)  # [b, T, h, n]
    state = torch.zeros(b, h, hd, B.shape[-1], dtype=torch.float64)
    ys = []
    for i in range(T):
        dA = torch.exp(dt[:, i] * A)  # [b, h]
        state = state * dA[..., None, None] + (dt[:, i, :, None, None] * x[:, i, :, :, None] * Bh[:, i, :, None, :])
        ys.append((state * Ch[:, i, :, None, :]).sum(-1) + D[:, None] * x[:, i])
    return torch.stack(ys, dim=1)


def mamba2_hidden_attention_ref(p: Mamba2Primitives, decay: bool = True) -> torch.Tensor:
    """Full hidden attention ``(b, h, T, T)`` in float64, one query row ``i`` and key ``j`` at a time."""
    B, C, dt, A = p.B.double(), p.C.double(), p.dt.double(), p.A.double()
    b, T, g, _ = B.shape
    h = dt.shape[-1]
    out = torch.zeros(b, h, T, T, dtype=torch.float64)
    for head in range(h):
        grp = head // (h // g)
        for i in range(T):
            for j in range(i + 1):
                cb = (C[:, i, grp] * B[:, j, grp]).sum(-1)  # [b]
                if decay:
                    out[:, head, i, j] = cb * dt[:, j, head] * torch.exp(A[head] * dt[:, j + 1 : i + 1, head].sum(-1))
                else:
                    out[:, head, i, j] = cb.abs() * dt[:, j, head]
    return out


def mamba1_scan_ref(p: Mamba1Primitives) -> torch.Tensor:
    """Sequential Mamba-1 recurrence; returns ``y (b, T, c)`` in float64 (before the gate)."""
    x, B, C, dt = p.x.double(), p.B.double(), p.C.double(), p.dt.double()
    A, D = p.A.double(), p.D.double()
    b, T, c = x.shape
    state = torch.zeros(b, c, A.shape[1], dtype=torch.float64)
    ys = []
    for i in range(T):
        state = state * torch.exp(dt[:, i, :, None] * A) + dt[:, i, :, None] * B[:, i, None, :] * x[:, i, :, None]
        ys.append((state * C[:, i, None, :]).sum(-1) + D * x[:, i])
    return torch.stack(ys, dim=1)


def mamba1_hidden_attention_ref(p: Mamba1Primitives, decay: bool = True) -> torch.Tensor:
    """Full per-channel hidden attention ``(b, c, T, T)`` in float64."""
    B, C, dt, A = p.B.double(), p.C.double(), p.dt.double(), p.A.double()
    b, T, _ = B.shape
    c = A.shape[0]
    out = torch.zeros(b, c, T, T, dtype=torch.float64)
    for i in range(T):
        for j in range(i + 1):
            if decay:
                seg = dt[:, j + 1 : i + 1].sum(1)  # [b, c]
                terms = C[:, i, None, :] * B[:, j, None, :] * torch.exp(seg[..., None] * A)  # [b, c, n]
                out[:, :, i, j] = terms.sum(-1) * dt[:, j]
            else:
                out[:, :, i, j] = (C[:, i] * B[:, j]).sum(-1).abs()[:, None] * dt[:, j]
    return out


def mamba2_log_importance_ref(
    p: Mamba2Primitives,
    q_rows: list[list[int]],
    v_cols: list[list[int]],
    head_reduce: str = "mean",
    query_reduce: str = "mean",
) -> torch.Tensor:
    """Exact Mamba-2 importance as log-probabilities ``(b, V)``, float64, for prompts of any length.

    Straight from the formula, one query row at a time (all heads and visual tokens at once)::

        log|α_h[i, j]| = log|C_i·B_j| + log Δ_{j,h} + A_h Σ_{k=j+1..i} Δ_{k,h}      (j ≤ i; -inf otherwise)

    then reduced over the rows and the heads in log space (mean: ``logsumexp - log count``; max) and
    normalised with ``logsumexp``. No reference position, no segments, no chunks: this is what
    :func:`hybridreduce.scoring.mamba.mamba2_log_scores` factorises. ``q_rows[b]``/``v_cols[b]`` as
    in :func:`importance_ref`. Memory ``|Q|·V·h`` float64 per sample.
    """
    B, C, dt, A = p.B.double(), p.C.double(), p.dt.double(), p.A.double()
    b, _, g, _ = B.shape
    h = dt.shape[-1]
    cum = dt.cumsum(dim=1)  # [b, T, h]  Σ_{k≤t} Δ_k
    out = torch.zeros(b, len(v_cols[0]), dtype=torch.float64)
    for bi in range(b):
        cols = torch.tensor(v_cols[bi])
        rows = []
        for i in q_rows[bi]:
            cb = (C[bi, i][None] * B[bi, cols]).sum(-1).abs().repeat_interleave(h // g, dim=1)  # [V, h]
            seg = cum[bi, i] - cum[bi, cols]  # [V, h]  Σ_{k=j+1..i} Δ_k
            log_a = cb.log() + dt[bi, cols].log() + A * seg
            rows.append(log_a.masked_fill((cols > i)[:, None], float("-inf")))
        per_row = torch.stack(rows)  # [Q, V, h]
        r = per_row.amax(0) if query_reduce == "max" else torch.logsumexp(per_row, 0) - math.log(len(rows))
        s = r.amax(-1) if head_reduce == "max" else torch.logsumexp(r, -1) - math.log(h)  # [V]
        out[bi] = s - torch.logsumexp(s, 0)
    return out


def mamba1_log_importance_ref(
    p: Mamba1Primitives,
    q_rows: list[list[int]],
    v_cols: list[list[int]],
    head_reduce: str = "mean",
    query_reduce: str = "mean",
) -> torch.Tensor:
    """Exact Mamba-1 importance as log-probabilities ``(b, V)``, float64, for prompts of any length.

    One query row at a time, all channels and visual tokens at once, with ``e_n = A[c, n] Σ_{k=j+1..i} Δ_k[c]``::

        log|α_c[i, j]| = log Δ_j[c] + max_n e_n + log|Σ_n C_i[n] B_j[n] exp(e_n - max_n e_n)|   (j ≤ i)

    (the signed sum over the state scaled by its largest exponential, so nothing underflows), then
    reduced over rows and channels in log space and normalised with ``logsumexp``. No reference
    position, no segments, no matrix products: this is what
    :func:`hybridreduce.scoring.mamba.mamba1_log_scores` factorises. Memory ``V·c·n`` float64.
    """
    B, C, dt, A = p.B.double(), p.C.double(), p.dt.double(), p.A.double()
    b = B.shape[0]
    c = A.shape[0]
    cum = dt.cumsum(dim=1)  # [b, T, c]
    out = torch.zeros(b, len(v_cols[0]), dtype=torch.float64)
    for bi in range(b):
        cols = torch.tensor(v_cols[bi])
        rows = []
        for i in q_rows[bi]:
            e = (cum[bi, i] - cum[bi, cols])[..., None] * A  # [V, c, n]
            top = e.amax(-1)  # [V, c]
            terms = (C[bi, i] * B[bi, cols])[:, None, :] * torch.exp(e - top[..., None])  # [V, c, n]
            log_a = dt[bi, cols].log() + top + terms.sum(-1).abs().log()  # [V, c]
            rows.append(log_a.masked_fill((cols > i)[:, None], float("-inf")))
        per_row = torch.stack(rows)  # [Q, V, c]
        r = per_row.amax(0) if query_reduce == "max" else torch.logsumexp(per_row, 0) - math.log(len(rows))
        s = r.amax(-1) if head_reduce == "max" else torch.logsumexp(r, -1) - math.log(c)  # [V]
        out[bi] = s - torch.logsumexp(s, 0)
    return out


def attention_rows_ref(query: torch.Tensor, key: torch.Tensor, allowed: torch.Tensor, scaling: float) -> torch.Tensor:
    """Full attention probabilities ``(b, h, T, S)`` in float64 from an explicit bool mask.

    Args:
        query: ``(b, h, T, p)``; key: ``(b, h_kv, S, p)``; allowed: ``(b, T, S)`` bool.
    """
    q, k = query.double(), key.double()
    b, h, T, _ = q.shape
    rep = h // k.shape[1]
    out = torch.zeros(b, h, T, k.shape[2], dtype=torch.float64)
    for bi in range(b):
        for head in range(h):
            kh = k[bi, head // rep]
            for i in range(T):
                logits = [float(q[bi, head, i] @ kh[j]) * scaling for j in range(kh.shape[0])]
                keep = [j for j in range(kh.shape[0]) if allowed[bi, i, j]]
                if not keep:  # a padding row that attends to nothing: left at zero
                    continue
                m = max(logits[j] for j in keep)
                z = sum(math.exp(logits[j] - m) for j in keep)
                for j in keep:
                    out[bi, head, i, j] = math.exp(logits[j] - m) / z
    return out


def importance_ref(
    weights: torch.Tensor,
    q_rows: list[list[int]],
    v_cols: list[list[int]],
    head_reduce: str = "mean",
    query_reduce: str = "mean",
) -> torch.Tensor:
    """Reference aggregation of per-head weights ``(b, h, T, T)`` into importance ``(b, V)``.

    ``q_rows[b]`` and ``v_cols[b]`` list the query rows and visual columns of each sample. Absolute
    values are taken (exact Mamba hidden attention can be negative), rows are reduced first, then
    heads, then the vector is renormalised to sum to one. Float64, loops.
    """
    b, h = weights.shape[:2]
    out = torch.zeros(b, len(v_cols[0]), dtype=torch.float64)
    for bi in range(b):
        for vj, col in enumerate(v_cols[bi]):
            per_head = []
            for head in range(h):
                vals = [abs(float(weights[bi, head, row, col])) for row in q_rows[bi]]
                per_head.append(max(vals) if query_reduce == "max" else sum(vals) / len(vals))
            out[bi, vj] = max(per_head) if head_reduce == "max" else sum(per_head) / len(per_head)
        out[bi] /= out[bi].sum()
    return out
