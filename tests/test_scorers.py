"""Fast scorers against the float64 loop references, on random primitives and masks."""

from __future__ import annotations

import pytest
import torch

from hybridreduce import InputError, ScorerConfig
from hybridreduce.scoring.attention import attention_importance, attention_rows
from hybridreduce.scoring.mamba import (
    Mamba1Primitives,
    Mamba2Primitives,
    mamba1_hidden_attention,
    mamba1_importance,
    mamba2_hidden_attention,
    mamba2_importance,
)
from hybridreduce.scoring.reference import (
    attention_rows_ref,
    importance_ref,
    mamba1_hidden_attention_ref,
    mamba1_scan_ref,
    mamba2_hidden_attention_ref,
    mamba2_scan_ref,
)

ATOL = 2e-6


def _rand_mamba2(b=2, T=19, h=4, p=3, g=2, n=5, seed=0) -> Mamba2Primitives:
    torch.manual_seed(seed)
    return Mamba2Primitives(
        x=torch.randn(b, T, h, p),
        B=torch.randn(b, T, g, n),
        C=torch.randn(b, T, g, n),
        dt=torch.rand(b, T, h) * 0.5 + 0.01,
        A=-torch.rand(h) * 2 - 0.1,
        D=torch.randn(h),
        gate=torch.randn(b, T, h * p),
    )


def _rand_mamba1(b=2, T=17, c=6, n=4, seed=0) -> Mamba1Primitives:
    torch.manual_seed(seed)
    return Mamba1Primitives(
        x=torch.randn(b, T, c),
        B=torch.randn(b, T, n),
        C=torch.randn(b, T, n),
        dt=torch.rand(b, T, c) * 0.5 + 0.01,
        A=-torch.rand(c, n) * 2 - 0.1,
        D=torch.randn(c),
        gate=torch.randn(b, T, c),
    )


def _positions(T, b=2):
    q_rows = [[T - 3, T - 2, T - 1], [T - 4, T - 2, T - 1]]
    v_cols = [list(range(2, 12)), list(range(3, 13))]
    return q_rows, v_cols, torch.tensor(q_rows), torch.ones(b, 3, dtype=torch.bool), torch.tensor(v_cols)


# -- Mamba-2 -----------------------------------------------------------------------------------------
def test_mamba2_exact_alpha_matches_reference_and_reconstructs_the_scan():
    p = _rand_mamba2()
    T = p.x.shape[1]
    idx = torch.arange(T).expand(2, T)
    alpha = mamba2_hidden_attention(p, idx, idx)
    ref = mamba2_hidden_attention_ref(p)
    err = (alpha.double() - ref).abs().max()
    print(f"mamba2 alpha max err {err:.2e}")
    assert err < ATOL
    y = torch.einsum("bhij,bjhp->bihp", ref, p.x.double()) + p.D.double()[:, None] * p.x.double()
    assert torch.allclose(y, mamba2_scan_ref(p), atol=1e-10)
    assert bool((alpha.triu(1) == 0).all()), "hidden attention must be causal"


@pytest.mark.parametrize("mode", ["exact", "decay_free"])
@pytest.mark.parametrize("reduce", [("mean", "mean"), ("max", "max"), ("mean", "max"), ("max", "mean")])
def test_mamba2_importance_matches_reference(mode, reduce):
    p = _rand_mamba2()
    q_rows, v_cols, q_index, q_valid, v_index = _positions(p.x.shape[1])
    cfg = ScorerConfig(mamba=mode, head_reduce=reduce[0], query_reduce=reduce[1])
    got = mamba2_importance(p, q_index, q_valid, v_index, cfg)
    ref = importance_ref(mamba2_hidden_attention_ref(p, decay=mode == "exact"), q_rows, v_cols, *reduce)
    assert (got.double() - ref).abs().max() < ATOL
    assert torch.allclose(got.sum(-1), torch.ones(2, dtype=got.dtype))  # exact scores are float64


def test_mamba2_chunking_does_not_change_scores():
    p = _rand_mamba2(T=40)
    _, _, q_index, q_valid, _ = _positions(40)
    v_index = torch.arange(0, 36).expand(2, 36)
    whole = mamba2_importance(p, q_index, q_valid, v_index, ScorerConfig(mamba="exact"))
    chunked = mamba2_importance(p, q_index, q_valid, v_index, ScorerConfig(mamba="exact", chunk_elements=1024))
    assert torch.equal(whole, chunked) or (whole - chunked).abs().max() < 1e-7


def test_ragged_queries_ignore_padding_slots():
    """A sample with fewer queries: its padded slots repeat a real row and must not count."""
    p = _rand_mamba2()
    T = p.x.shape[1]
    q_index = torch.tensor([[T - 3, T - 2, T - 1], [T - 1, T - 1, T - 1]])
    q_valid = torch.tensor([[True, True, True], [True, False, False]])
    v_index = torch.arange(2, 12).expand(2, 10)
    for reduce in ("mean", "max"):
        cfg = ScorerConfig(mamba="exact", query_reduce=reduce)
        got = mamba2_importance(p, q_index, q_valid, v_index, cfg)
        ref = importance_ref(
            mamba2_hidden_attention_ref(p),
            [[T - 3, T - 2, T - 1], [T - 1]],
            [list(range(2, 12))] * 2,
            query_reduce=reduce,
        )
        assert (got.double() - ref).abs().max() < ATOL


# -- Mamba-1 -----------------------------------------------------------------------------------------
def test_mamba1_exact_alpha_matches_reference_and_reconstructs_the_scan():
    p = _rand_mamba1()
    T = p.x.shape[1]
    idx = torch.arange(T).expand(2, T)
    for chunk in (1 << 24, 1024):  # one channel block, and many
        alpha = mamba1_hidden_attention(p, idx, idx, chunk_elements=chunk)
        ref = mamba1_hidden_attention_ref(p)
        assert (alpha.double() - ref).abs().max() < ATOL
    y = torch.einsum("bcij,bjc->bic", ref, p.x.double()) + p.D.double() * p.x.double()
    assert torch.allclose(y, mamba1_scan_ref(p), atol=1e-10)


@pytest.mark.parametrize("mode", ["exact", "decay_free"])
@pytest.mark.parametrize("reduce", [("mean", "mean"), ("max", "max"), ("mean", "max")])
def test_mamba1_importance_matches_reference(mode, reduce):
    p = _rand_mamba1()
    q_rows, v_cols, q_index, q_valid, v_index = _positions(p.x.shape[1])
    cfg = ScorerConfig(mamba=mode, head_reduce=reduce[0], query_reduce=reduce[1], chunk_elements=2048)
    got = mamba1_importance(p, q_index, q_valid, v_index, cfg)
    ref = importance_ref(mamba1_hidden_attention_ref(p, decay=mode == "exact"), q_rows, v_cols, *reduce)
    assert (got.double() - ref).abs().max() < ATOL


def test_decay_free_differs_from_exact():
    """The two Mamba scorers are different signals (a check that they are not silently the same)."""
    p = _rand_mamba2()
    _, _, q_index, q_valid, v_index = _positions(p.x.shape[1])
    exact = mamba2_importance(p, q_index, q_valid, v_index, ScorerConfig(mamba="exact"))
    free = mamba2_importance(p, q_index, q_valid, v_index, ScorerConfig(mamba="decay_free"))
    assert (exact - free).abs().max() > 1e-3


# -- attention ---------------------------------------------------------------------------------------
def _qk(b=2, h=4, h_kv=2, T=11, S=11, p=8, seed=0):
    torch.manual_seed(seed)
    return torch.randn(b, h, T, p), torch.randn(b, h_kv, S, p)


def _causal(b, T, S):
    return (torch.arange(S)[None, :] <= (S - T + torch.arange(T))[:, None]).expand(b, T, S)


@pytest.mark.parametrize("mask_form", ["none", "bool4d", "float4d", "padding2d"])
def test_attention_scorer_matches_reference(mask_form):
    b, T, S = 2, 11, 11
    query, key = _qk(b=b, T=T, S=S)
    allowed = _causal(b, T, S).clone()
    pad = torch.ones(b, S, dtype=torch.bool)
    pad[1, :2] = False  # sample 1 is left-padded by two tokens
    if mask_form == "none":
        mask = None
    else:
        allowed = allowed & pad[:, None, :]
        if mask_form == "bool4d":
            mask = allowed[:, None]
        elif mask_form == "float4d":
            mask = torch.zeros(b, 1, T, S).masked_fill(~allowed[:, None], torch.finfo(torch.float32).min)
        else:
            mask = pad.long()
    q_index = torch.tensor([[8, 9, 10], [7, 9, 10]])
    rows = attention_rows(query, key, mask, 0.35, q_index)
    ref = attention_rows_ref(query, key, allowed, 0.35)
    expected = ref.gather(2, q_index[:, None, :, None].expand(b, 4, 3, S))
    assert (rows.double() - expected).abs().max() < ATOL
    imp = attention_importance(
        rows, torch.ones(b, 3, dtype=torch.bool), torch.arange(2, 8).expand(b, 6), ScorerConfig()
    )
    ref_imp = importance_ref(ref, q_index.tolist(), [list(range(2, 8))] * 2)
    assert (imp.double() - ref_imp).abs().max() < ATOL


def test_attention_scorer_with_cache_offset():
    """Decoding-style shapes: T queries after S - T cached keys; causal alignment is bottom-right."""
    query, key = _qk(T=3, S=10)
    rows = attention_rows(query, key, None, 0.3, torch.tensor([[0, 2], [1, 2]]))
    ref = attention_rows_ref(query, key, _causal(2, 3, 10), 0.3)
    expected = ref.gather(2, torch.tensor([[0, 2], [1, 2]])[:, None, :, None].expand(2, 4, 2, 10))
    assert (rows.double() - expected).abs().max() < ATOL


# -- config ------------------------------------------------------------------------------------------
def test_scorer_config_parsing(tmp_path):
    assert ScorerConfig.parse(None) == ScorerConfig()
    assert ScorerConfig.parse("exact").mamba == "exact"
    assert ScorerConfig.parse({"head_reduce": "max"}).head_reduce == "max"
    path = tmp_path / "s.yaml"
    path.write_text("scorer:\n  mamba: exact\n  query_reduce: max\n")
    assert ScorerConfig.parse(str(path)) == ScorerConfig(mamba="exact", query_reduce="max")
    with pytest.raises(InputError, match="one of"):
        ScorerConfig(mamba="fancy")
    with pytest.raises(InputError, match="unknown scorer settings"):
        ScorerConfig.parse({"mamba_mode": "exact"})
    with pytest.raises(InputError, match="does not exist"):
        ScorerConfig.from_yaml(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- mamba\n- exact\n")
    with pytest.raises(InputError, match="must hold a mapping"):
        ScorerConfig.from_yaml(tmp_path / "list.yaml")
    (tmp_path / "broken.yaml").write_text("scorer: [unclosed\n")
    with pytest.raises(InputError, match="not valid YAML"):
        ScorerConfig.from_yaml(tmp_path / "broken.yaml")


def test_shipped_scorer_configs_load():
    from pathlib import Path

    configs = sorted((Path(__file__).parents[1] / "configs" / "scorers").glob("*.yaml"))
    assert configs, "configs/scorers/ should ship the scorer presets"
    modes = {ScorerConfig.from_yaml(c).mamba for c in configs}
    assert modes == {"exact", "decay_free"}


@pytest.mark.parametrize("arch", ["nemotron_h", "falcon_h1", "zamba2"])
def test_primitives_without_x_are_the_same_B_C_and_delta(arch, tiny_models):
    """Scoring builds the primitives without ``x`` (the conv on B and C's channels only): the same values, bit for
    bit, as the full rebuild; Falcon-H1 also scales by its muP vector, Zamba2 by no bias-free conv."""
    from hybridreduce import get_adapter
    from hybridreduce.scoring.mamba import mamba2_primitives

    spec = next(s for s in get_adapter(tiny_models(arch)).blocks if s.ssm is not None)
    g = torch.Generator().manual_seed(0)
    projected = torch.randn(2, 11, spec.ssm.in_proj.out_features, generator=g)
    mask = torch.ones(2, 11, dtype=torch.long)
    mask[1, :3] = 0
    full = mamba2_primitives(spec.ssm, projected, mask)
    lean = mamba2_primitives(spec.ssm, projected, mask, with_x=False)
    assert lean.x is None and lean.gate is None and full.x is not None
    for name in ("B", "C", "dt", "A", "D"):
        assert torch.equal(getattr(lean, name), getattr(full, name)), name
