"""Exact Mamba scores at moderate and long context, against float64 references.

The exact scorers (:func:`mamba2_log_scores`, :func:`mamba1_log_scores`) split the decay at a
reference query row and keep its long-range part as a float64 logarithm. They are checked against

1. the float64 loop references of every ``(i, j)`` pair (``*_hidden_attention_ref`` then
   ``importance_ref``) on a 64-token prompt whose query rows are interleaved with the visual tokens
   and ragged across the batch (several segments, padded query slots, two chunk sizes);
2. the float64 per-row references in log space (``*_log_importance_ref``) at 2,048 tokens, with
   query tokens between frames (``query="all_text"`` with frame separators);
3. a 16,384-token prompt with strong decay: no two visual tokens whose float64 scores differ may
   tie, which the former float32 computation fails on thousands of tokens.

Primitives are synthetic but shaped like trained mixers: ``Δ = softplus(dt + dt_bias)`` with
``dt_bias`` set from a log-uniform ``Δ`` per head/channel (the Mamba initialisation, here over
[0.01, 0.1] so that the decay over 16k tokens is strong), ``A`` from Mamba-2's ``[-16, -1]`` range
or Mamba-1's S4D-real ``A[c, n] = -(n + 1)``; ``B``, ``C`` of unit scale.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hybridreduce import ScorerConfig
from hybridreduce.scoring.config import normalise, reduce_heads, reduce_rows
from hybridreduce.scoring.mamba import (
    Mamba1Primitives,
    Mamba2Primitives,
    mamba1_hidden_attention,
    mamba1_importance,
    mamba1_log_scores,
    mamba2_hidden_attention,
    mamba2_importance,
    mamba2_log_scores,
)
from hybridreduce.scoring.reference import (
    importance_ref,
    mamba1_hidden_attention_ref,
    mamba1_log_importance_ref,
    mamba2_hidden_attention_ref,
    mamba2_log_importance_ref,
)

ATOL = 2e-6  # probabilities, as tests/test_scorers.py
# Log-probabilities: the row (Mamba-2) and state (Mamba-1) products are float32 sums of a few dozen
# terms, so a score's relative error is a few dozen float32 epsilons.
LOG_TOL = 64 * torch.finfo(torch.float32).eps  # 7.6e-6
REDUCTIONS = [("mean", "mean"), ("max", "max"), ("mean", "max"), ("max", "mean")]


def _dt(gen: torch.Generator, b: int, T: int, k: int, lo: float, hi: float) -> torch.Tensor:
    """``Δ (b, T, k) = softplus(dt + dt_bias)``, ``dt_bias`` = softplus⁻¹ of a log-uniform ``Δ`` in ``[lo, hi]``."""
    dt0 = torch.exp(torch.empty(k).uniform_(math.log(lo), math.log(hi), generator=gen))  # (k,)
    bias = dt0 + torch.log(-torch.expm1(-dt0))  # softplus⁻¹(dt0)
    return F.softplus(0.5 * torch.randn(b, T, k, generator=gen) + bias)


def _mamba2(b=1, T=64, h=8, g=2, n=16, dt_range=(0.01, 0.1), seed=0) -> Mamba2Primitives:
    gen = torch.Generator().manual_seed(seed)
    return Mamba2Primitives(
        x=torch.randn(b, T, h, 4, generator=gen),
        B=F.silu(torch.randn(b, T, g, n, generator=gen)),
        C=F.silu(torch.randn(b, T, g, n, generator=gen)),
        dt=_dt(gen, b, T, h, *dt_range),
        A=-torch.empty(h).uniform_(1.0, 16.0, generator=gen),
        D=torch.ones(h),
        gate=torch.zeros(b, T, h * 4),
    )


def _mamba1(b=1, T=64, c=16, n=8, dt_range=(0.01, 0.1), seed=0) -> Mamba1Primitives:
    gen = torch.Generator().manual_seed(seed)
    return Mamba1Primitives(
        x=torch.randn(b, T, c, generator=gen),
        B=torch.randn(b, T, n, generator=gen),
        C=torch.randn(b, T, n, generator=gen),
        dt=_dt(gen, b, T, c, *dt_range),
        A=-torch.arange(1, n + 1, dtype=torch.float32).expand(c, n).clone(),
        D=torch.ones(c),
        gate=torch.zeros(b, T, c),
    )


def _batch(q_rows: list[list[int]], v_cols: list[list[int]]):
    """Tensors ``q_index (b, Q)``, ``q_valid (b, Q)``, ``v_index (b, V)``; short rows padded with their last."""
    Q = max(len(r) for r in q_rows)
    q_index = torch.tensor([r + [r[-1]] * (Q - len(r)) for r in q_rows])
    q_valid = torch.tensor([[k < len(r) for k in range(Q)] for r in q_rows])
    return q_index, q_valid, torch.tensor(v_cols)


def _merged(scores: torch.Tensor, ref: torch.Tensor) -> int:
    """How many neighbouring pairs that ``scores (V,)`` ties are told apart by ``ref (V,)``.

    Ties form runs when sorted by ``scores``; a run holds two tokens with different ``ref`` iff two
    neighbours in it differ. 0 means: wherever ``ref`` differs, so does ``scores``.
    """
    order = scores.argsort(stable=True)
    s, r = scores[order], ref[order]
    return int(((s[1:] == s[:-1]) & (r[1:] != r[:-1])).sum())


def _inversions(log_scores: torch.Tensor, log_ref: torch.Tensor) -> int:
    """Neighbours in the reference order that ``log_scores`` ranks the other way round, among those
    the reference separates by more than the tolerance."""
    order = log_ref.argsort()
    s, r = log_scores[order], log_ref[order]
    return int(((s[1:] < s[:-1]) & (r[1:] - r[:-1] > 2 * LOG_TOL)).sum())


ARCHS = {
    "mamba2": (_mamba2, mamba2_importance, mamba2_log_scores, mamba2_hidden_attention_ref, mamba2_log_importance_ref),
    "mamba1": (_mamba1, mamba1_importance, mamba1_log_scores, mamba1_hidden_attention_ref, mamba1_log_importance_ref),
}


# -- 1. loop references, interleaved and ragged query rows ----------------------------------------
# Sample 0: query tokens between visual tokens (three segments); sample 1: two query rows (two
# segments), four padded query slots. Δ up to 0.5 so that the decay inside the 64 tokens is strong too.
T_SHORT = 64
Q_SHORT = [[10, 30, 31, 50, 62, 63], [40, 63]]
V_SHORT = [[j for j in range(2, 62) if j not in q][:40] for q in Q_SHORT]  # 40 visual tokens each


@pytest.fixture(scope="module")
def short_case():
    """Primitives and their float64 loop-reference hidden attention ``(b, h|c, T, T)``, per arch."""
    out = {}
    for arch, (make, *_, loop_ref, _log_ref) in ARCHS.items():
        p = make(b=2, T=T_SHORT, **({"h": 4, "n": 5} if arch == "mamba2" else {"c": 6, "n": 4}), dt_range=(0.05, 0.5))
        out[arch] = (p, loop_ref(p))
    return out


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("reduce", REDUCTIONS)
def test_exact_importance_matches_the_loop_reference_with_interleaved_queries(arch, reduce, short_case):
    p, alpha_ref = short_case[arch]
    importance = ARCHS[arch][1]
    q_index, q_valid, v_index = _batch(Q_SHORT, V_SHORT)
    ref = importance_ref(alpha_ref, Q_SHORT, V_SHORT, *reduce)
    for chunk in (1 << 24, 1024):  # one chunk per segment, and many
        cfg = ScorerConfig(mamba="exact", head_reduce=reduce[0], query_reduce=reduce[1], chunk_elements=chunk)
        got = importance(p, q_index, q_valid, v_index, cfg)
        err = float((got.double() - ref).abs().max())
        print(f"{arch} {reduce} chunk {chunk}: importance vs float64 loop reference, max abs err {err:.2e}")
        assert err < ATOL
        assert torch.allclose(got.double().sum(-1), torch.ones(2, dtype=torch.float64), atol=1e-6)
    # The float64 log-space reference used at long context agrees with the loop reference.
    log_ref = ARCHS[arch][4](p, Q_SHORT, V_SHORT, *reduce)
    assert float((log_ref.exp() - ref).abs().max()) < 1e-12


# -- 2. per-row float64 log reference at 2k tokens ------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("reduce", REDUCTIONS)
def test_log_scores_match_the_float64_log_reference_at_2k_tokens(arch, reduce):
    T = 2048
    make, importance, log_scores, _, log_ref_fn = ARCHS[arch]
    p = make(b=2, T=T, seed=1)
    # 15 frames of 128 tokens, each after a one-token separator, then a 24-token question: the
    # separators and the question are the query rows ("all_text"); sample 1 asks a shorter question.
    seps = [16 + 129 * f for f in range(15)]
    visual = [j for f in seps for j in range(f + 1, f + 129)]
    q_rows = [seps + list(range(T - 24, T)), seps + list(range(T - 10, T))]
    v_cols = [visual, visual]
    q_index, q_valid, v_index = _batch(q_rows, v_cols)
    cfg = ScorerConfig(mamba="exact", head_reduce=reduce[0], query_reduce=reduce[1])
    log_ref = log_ref_fn(p, q_rows, v_cols, *reduce)  # (b, V) float64 log-probabilities
    got = log_scores(p, q_index, q_valid, v_index, cfg)
    got = got - torch.logsumexp(got, dim=-1, keepdim=True)
    err = float((got - log_ref).abs().max())
    prob_err = float((importance(p, q_index, q_valid, v_index, cfg).double() - log_ref.exp()).abs().max())
    print(f"{arch} {reduce} T={T}: log-probability max abs err {err:.2e}, probability max abs err {prob_err:.2e}")
    assert err < LOG_TOL
    assert prob_err < ATOL


# -- 3. 16k tokens: no ties among tokens the float64 scores tell apart ----------------------------
T_LONG, N_TEXT = 16_384, 40  # 40 text tokens before the video, 40 query tokens after: 16,304 visual


def _long_positions(n_query: int):
    q_rows = [list(range(T_LONG - n_query, T_LONG))]
    v_cols = [list(range(N_TEXT, T_LONG - N_TEXT))]
    return (q_rows, v_cols, *_batch(q_rows, v_cols))


def _old_float32(hidden_attention, p, q_index, q_valid, v_index, cfg) -> torch.Tensor:
    """The exact importance as computed before log space: float32 ``α`` (chunked), reduced, renormalised."""
    parts = [
        reduce_rows(hidden_attention(p, q_index, v_index[:, s : s + 4096]).abs(), q_valid, cfg.query_reduce)
        for s in range(0, v_index.shape[1], 4096)
    ]
    return normalise(reduce_heads(torch.cat(parts, dim=-1), cfg.head_reduce))


@pytest.mark.parametrize("arch", ARCHS)
def test_no_ties_at_16k_tokens_where_float32_ties_thousands(arch):
    make, importance, log_scores, _, log_ref_fn = ARCHS[arch]
    p = make(b=1, T=T_LONG, seed=2)
    n_query = 40 if arch == "mamba2" else 16
    q_rows, v_cols, q_index, q_valid, v_index = _long_positions(n_query)
    V = v_index.shape[1]
    cfg = ScorerConfig(mamba="exact")
    log_ref = log_ref_fn(p, q_rows, v_cols)[0]  # (V,) float64 log-probabilities, finite for every token
    ref = log_ref.exp()  # (V,) the float64 scores; 0 below float64's range (e^-745)

    got = importance(p, q_index, q_valid, v_index, cfg)[0]
    log_got = log_scores(p, q_index, q_valid, v_index, cfg)[0]
    log_got = log_got - torch.logsumexp(log_got, dim=0)
    old = _old_float32(
        mamba2_hidden_attention if arch == "mamba2" else mamba1_hidden_attention, p, q_index, q_valid, v_index, cfg
    )[0]
    print(
        f"{arch} T={T_LONG}, |V|={V}, |Q|={n_query}: log-probabilities from {float(log_ref.min()):.0f} to "
        f"{float(log_ref.max()):.1f}, {int((ref == 0).sum())} tokens below float64's range; "
        f"float32 computation: {int((old == 0).sum())} zeros, {_merged(old, ref)} merged pairs; "
        f"log space: {int((got == 0).sum())} zeros, {_merged(got, ref)} merged pairs ({got.dtype}), "
        f"{_merged(log_got, log_ref)} among log scores; log-probability max abs err "
        f"{float((log_got - log_ref).abs().max()):.2e}"
    )
    # The check fails on the former float32 computation ...
    assert _merged(old, ref) > V // 10
    # ... and holds in log space: the probabilities tie nowhere the float64 scores differ, ...
    assert got.dtype == torch.float64
    assert _merged(got, ref) == 0
    assert abs(float(got.sum()) - 1.0) < 1e-12
    # ... the log scores tie nowhere at all, in the reference's order, at the reference's values.
    assert _merged(log_got, log_ref) == 0
    assert _inversions(log_got, log_ref) == 0
    assert float((log_got - log_ref).abs().max()) < LOG_TOL
