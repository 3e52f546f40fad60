"""Sparsity and stability metrics (analysis.sparsity, analysis.stability) on hand-built score caches."""

from __future__ import annotations

import itertools
import json
import math
from fractions import Fraction

import pytest
import torch

from analysis.sparsity import (
    ceil_count,
    gini,
    layer_sparsity,
    mass_coverage,
    normalised_entropy,
    topk_mass,
)
from analysis.stability import (
    average_ranks,
    kendall_matrix,
    kendall_tau_b,
    layer_stability,
    spearman,
    spearman_matrix,
    survival_recall,
    topk_iou_matrix,
    topk_mask,
)
from hybridreduce.cache import ScoreCache
from hybridreduce.errors import InputError

# Hand-worked 5-token vector (scaled by 10, so normalisation is exercised): q = [.4, .1, .3, 0, .2].
HAND = torch.tensor([4.0, 1.0, 3.0, 0.0, 2.0])


def make_cache(kinds: list[str], scores: dict[int, torch.Tensor]) -> ScoreCache:
    """A ScoreCache with the given block kinds and ``block → (b, V)`` scores (normalised here)."""
    b, V = next(iter(scores.values())).shape if scores else (1, 4)
    cache = ScoreCache(kinds, torch.arange(V).repeat(b, 1))
    cache.scores = {i: (s / s.sum(-1, keepdim=True)).float() for i, s in scores.items()}
    return cache


def random_scores(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g) + 1e-3


# Sparsity: hand-worked values --------------------------------------------------------------------
def test_hand_mass_coverage():
    # sorted q = .4 .3 .2 .1 0, cumsum = .4 .7 .9 1 1
    # p=.5 → k=2 (0.7 ≥ .5); p=.8 → k=3; p=.9 → k=3 (0.9 ≥ .9 within tolerance); p=.95 → k=4; p=1 → k=4
    expected = {0.4: 1, 0.5: 2, 0.8: 3, 0.9: 3, 0.95: 4, 1.0: 4}
    for p, k in expected.items():
        assert mass_coverage(HAND, p).item() == pytest.approx(k / 5), p


def test_hand_entropy_gini_topk():
    # H = -(.4 ln .4 + .3 ln .3 + .2 ln .2 + .1 ln .1) = .366516 + .361192 + .321888 + .230259 = 1.279854
    # H / ln 5 = 1.279854 / 1.609438 = 0.795218
    assert normalised_entropy(HAND).item() == pytest.approx(0.795218, abs=1e-6)
    # ascending q = 0 .1 .2 .3 .4, weights 2i-V-1 = -4 -2 0 2 4: (0 - .2 + 0 + .6 + 1.6) / 5 = 0.4
    # (check: Σ_u<v |q_u - q_v| = 4·.1 + 3·.2 + 2·.3 + 1·.4 = 2.0; 2·2.0 / (2·25·0.2) = 0.4)
    assert gini(HAND).item() == pytest.approx(0.4)
    # frac .2 → k=1: .4;  frac .4 → k=2: .7;  frac .5 → k=ceil(2.5)=3: .9
    assert topk_mass(HAND, 0.2).item() == pytest.approx(0.4)
    assert topk_mass(HAND, 0.4).item() == pytest.approx(0.7)
    assert topk_mass(HAND, 0.5).item() == pytest.approx(0.9)


# Sparsity: properties ----------------------------------------------------------------------------
@pytest.mark.parametrize("V", [1, 3, 7, 10, 30, 100, 1000])
def test_uniform(V: int):
    x = torch.full((2, V), 1.0 / V, dtype=torch.float32)
    for p in (0.1, 0.25, 0.3, 0.5, 0.7, 0.8, 0.9, 1.0):
        k = math.ceil(Fraction(str(p)) * V)  # exact rational ceil
        assert torch.equal(mass_coverage(x, p), torch.full((2,), k / V, dtype=torch.float64)), (V, p)
        assert topk_mass(x, p) == pytest.approx(k / V)
        assert ceil_count(p, V) == max(1, k)
    assert gini(x) == pytest.approx(0.0, abs=1e-12)
    assert normalised_entropy(x) == pytest.approx(1.0 if V > 1 else 0.0)


@pytest.mark.parametrize("V", [1, 2, 5, 64])
def test_one_hot(V: int):
    x = torch.zeros(V)
    x[V // 2] = 3.0
    assert mass_coverage(x, 0.9).item() == pytest.approx(1 / V)
    assert gini(x).item() == pytest.approx((V - 1) / V)
    assert normalised_entropy(x).item() == 0.0
    assert topk_mass(x, 1 / V).item() == pytest.approx(1.0)


def test_sparsity_permutation_invariant_and_batched():
    x = random_scores(3, 4, 50)
    x[0, 0, :10] = 0.0  # zeros and ties
    x[1, 2, 5:20] = 0.5
    perm = torch.randperm(50, generator=torch.Generator().manual_seed(1))
    for fn in (
        lambda t: mass_coverage(t, 0.8),
        normalised_entropy,
        gini,
        lambda t: topk_mass(t, 0.25),
    ):
        full = fn(x)
        assert full.shape == (3, 4) and full.dtype == torch.float64
        torch.testing.assert_close(fn(x[..., perm]), full, rtol=0, atol=1e-12)
        torch.testing.assert_close(fn(x[1, 2]), full[1, 2], rtol=0, atol=1e-12)


def test_sparsity_ordering():
    # A peaked distribution is sparser than a flat one under every metric.
    flat, peaked = torch.ones(20), torch.linspace(0, 1, 20) ** 8
    assert mass_coverage(peaked, 0.8) < mass_coverage(flat, 0.8)
    assert normalised_entropy(peaked) < normalised_entropy(flat)
    assert gini(peaked) > gini(flat)
    assert topk_mass(peaked, 0.1) > topk_mass(flat, 0.1)


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (torch.tensor([0.5, float("nan"), 0.5]), "NaN or inf"),
        (torch.tensor([0.5, -0.1, 0.6]), "negative entries"),
        (torch.tensor([[0.5, 0.5], [0.0, 0.0]]), "all-zero vector"),
        (torch.zeros(3, 0), "nonempty last"),
        (torch.tensor(1.0), "nonempty last"),
        ([0.5, 0.5], "must be a torch.Tensor"),
    ],
)
def test_sparsity_bad_scores(bad, match: str):
    for fn in (lambda t: mass_coverage(t, 0.5), normalised_entropy, gini, lambda t: topk_mass(t, 0.5)):
        with pytest.raises(InputError, match=match):
            fn(bad)


@pytest.mark.parametrize("p", [0.0, -0.5, 1.5, float("nan"), True, "0.5"])
def test_bad_fraction(p):
    with pytest.raises(InputError, match=r"in \(0, 1\]"):
        mass_coverage(HAND, p)
    with pytest.raises(InputError, match=r"in \(0, 1\]"):
        topk_mass(HAND, p)


# layer_sparsity ----------------------------------------------------------------------------------
def test_layer_sparsity_report():
    kinds = ["ssm", "mlp", "attn", "moe", "ssm"]
    uniform = torch.ones(2, 10)
    one_hot = torch.zeros(2, 10)
    one_hot[:, 3] = 1.0
    cache = make_cache(kinds, {0: uniform, 2: one_hot, 4: random_scores(2, 10)})
    report = layer_sparsity(cache, ps=(0.5, 0.9), topk=(0.1,))
    assert [b.block for b in report.blocks] == [0, 2, 4]
    assert [b.kind for b in report.blocks] == ["ssm", "attn", "ssm"]
    assert report.metrics == ["k@0.5", "k@0.9", "entropy", "gini", "top0.1_mass"]
    assert [(s["block"], s["kind"]) for s in report.skipped] == [(1, "mlp"), (3, "moe")]
    assert all("does not score" in s["reason"] for s in report.skipped)

    u, h = report.blocks[0], report.blocks[1]
    assert u.stats["k@0.5"] == {"mean": 0.5, "std": 0.0, "min": 0.5, "max": 0.5}
    assert u.stats["entropy"]["mean"] == pytest.approx(1.0)
    assert h.stats["gini"]["mean"] == pytest.approx(0.9)
    assert h.stats["k@0.9"]["max"] == pytest.approx(0.1)
    assert h.per_sample["top0.1_mass"].shape == (2,)

    rows = report.to_rows()
    assert len(rows) == 3
    assert list(rows[0])[:4] == ["block", "kind", "n_visual", "batch"]
    assert rows[1]["gini_mean"] == pytest.approx(0.9) and rows[1]["batch"] == 2
    assert len({tuple(r) for r in rows}) == 1  # same columns in every row
    json.dumps(report.to_dict(), allow_nan=False)


def test_layer_sparsity_not_scored_attention_block():
    cache = make_cache(["attn", "attn"], {1: torch.ones(1, 4)})
    report = layer_sparsity(cache)
    assert report.skipped == [
        {"block": 0, "kind": "attn", "reason": "no scores recorded for this block (it was not scored in this forward)"}
    ]
    assert report.blocks[0].stats["k@0.5"]["std"] == 0.0  # one sample: population std is 0, not NaN


def test_layer_sparsity_errors():
    with pytest.raises(InputError, match="no scored blocks.*score a model with attention or Mamba blocks"):
        layer_sparsity(make_cache(["mlp", "moe"], {}))
    with pytest.raises(InputError, match="expected a hybridreduce.ScoreCache"):
        layer_sparsity(torch.ones(2, 1, 4))
    bad = make_cache(["attn", "ssm"], {0: torch.ones(1, 4), 1: torch.ones(1, 4)})
    bad.scores[1] = torch.tensor([[0.5, float("nan"), 0.25, 0.25]])
    with pytest.raises(InputError, match="scores of block 1 contains NaN"):
        layer_sparsity(bad)
    with pytest.raises(InputError, match=r"each p in ps must be a number in \(0, 1\]"):
        layer_sparsity(make_cache(["attn"], {0: torch.ones(1, 4)}), ps=(0.5, 2.0))


# Stability: references ---------------------------------------------------------------------------
def ref_ranks(v: list[float]) -> list[float]:
    """Average 1-based ranks by counting (float64, plain loops)."""
    return [sum(w < x for w in v) + (sum(w == x for w in v) + 1) / 2 for x in v]


def ref_spearman(a: list[float], b: list[float]) -> float:
    ra, rb = ref_ranks(a), ref_ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    va = sum((x - ma) ** 2 for x in ra)
    vb = sum((y - mb) ** 2 for y in rb)
    return cov / math.sqrt(va * vb)


def ref_kendall_tau_b(a: list[float], b: list[float]) -> float:
    concordant = discordant = tied_a = tied_b = 0
    n = len(a)
    for u, v in itertools.combinations(range(n), 2):
        da, db = a[u] - a[v], b[u] - b[v]
        tied_a += da == 0
        tied_b += db == 0
        if da * db > 0:
            concordant += 1
        elif da * db < 0:
            discordant += 1
    n0 = n * (n - 1) // 2
    return (concordant - discordant) / math.sqrt((n0 - tied_a) * (n0 - tied_b))


def test_rank_correlations_match_bruteforce_with_ties():
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 5, (4, 3, 13), generator=g).double() / 4 + 0.01 * (torch.rand(4, 1, 1, generator=g) > 0.5)
    x[2, 1] = x[0, 1] * 2  # an identical ranking
    rho, tau = spearman_matrix(x), kendall_matrix(x, chunk_elements=100)  # chunks of one row
    torch.testing.assert_close(kendall_matrix(x), tau, rtol=0, atol=1e-12)
    worst = 0.0
    for s, i, j in itertools.product(range(3), range(4), range(4)):
        a, b = x[i, s].tolist(), x[j, s].tolist()
        worst = max(
            worst, abs(rho[s, i, j].item() - ref_spearman(a, b)), abs(tau[s, i, j].item() - ref_kendall_tau_b(a, b))
        )
    print(f"max |fast - reference| = {worst:.2e}")
    assert worst < 1e-12
    assert rho[1, 0, 2].item() == pytest.approx(1.0) and tau[1, 0, 2].item() == pytest.approx(1.0)


def test_average_ranks():
    assert average_ranks(torch.tensor([3.0, 1.0, 3.0])).tolist() == [2.5, 1.0, 2.5]
    x = torch.randint(0, 3, (2, 5, 9), generator=torch.Generator().manual_seed(0)).float()
    ranks = average_ranks(x)
    for row, r in zip(x.reshape(-1, 9).tolist(), ranks.reshape(-1, 9).tolist(), strict=True):
        assert r == ref_ranks(row)


# Stability: hand-worked values -------------------------------------------------------------------
def test_hand_rank_correlations():
    a = torch.tensor([4.0, 1.0, 3.0, 0.0, 2.0])
    b = torch.tensor([3.0, 2.0, 4.0, 0.0, 1.0])
    # ranks a = 5 2 4 1 3, ranks b = 4 3 5 1 2, d = 1 -1 -1 0 1, Σd² = 4: ρ = 1 - 6·4 / (5·24) = 0.8
    assert spearman(a, b).item() == pytest.approx(0.8)
    # pairs (u,v): 01 C, 02 D, 03 C, 04 C, 12 C, 13 C, 14 D, 23 C, 24 C, 34 C → (8 - 2) / 10 = 0.6
    assert kendall_tau_b(a, b).item() == pytest.approx(0.6)

    t = torch.tensor([2.0, 1.0, 2.0, 0.0, 1.0])  # ties: {0, 2} and {1, 4}
    # ranks t = 4.5 2.5 4.5 1 2.5 (mean 3): z_t = 1.5 -.5 1.5 -2 -.5, z_b = 1 0 2 -2 -1
    # <z_t, z_b> = 1.5 + 0 + 3 + 4 + .5 = 9, |z_t|² = 9, |z_b|² = 10: ρ = 9 / sqrt(90) = 0.948683
    assert spearman(t, b).item() == pytest.approx(9 / math.sqrt(90))
    # pairs: 02 and 14 tied in t; the other 8 concordant, none discordant; n0 = 10, n1 = 2, n2 = 0
    # τ_b = 8 / sqrt((10 - 2)(10 - 0)) = 8 / sqrt(80) = 0.894427
    assert kendall_tau_b(t, b).item() == pytest.approx(8 / math.sqrt(80))


def test_hand_topk_iou_and_survival():
    a = torch.tensor([4.0, 1.0, 3.0, 0.0, 2.0])
    c = torch.tensor([1.0, 4.0, 3.0, 0.0, 2.0])
    x = torch.stack([a, c]).unsqueeze(1)  # [L=2, b=1, V=5]
    # frac .4 → k = 2: T_a = {0, 2}, T_c = {1, 2}; IoU = |{2}| / |{0, 1, 2}| = 1/3
    iou = topk_iou_matrix(x, 0.4)[0]
    torch.testing.assert_close(iou, torch.tensor([[1.0, 1 / 3], [1 / 3, 1.0]], dtype=torch.float64))
    # equal k: R = |T_i ∩ T_j| / 2 = 1/2 off the diagonal
    torch.testing.assert_close(survival_recall(x, 0.4)[0], torch.tensor([[1.0, 0.5], [0.5, 1.0]], dtype=torch.float64))
    # keep .6 at a → K_a = {0, 2, 4}: K_a ∩ T_a = 2/2, K_a ∩ T_c = {2} → 1/2
    # keep .8 at c → K_c = {1, 2, 4, 0}: K_c ∩ T_a = {0, 2} → 2/2, K_c ∩ T_c = 2/2
    expected = torch.tensor([[1.0, 0.5], [1.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(survival_recall(x, 0.4, keep_ratios=[0.6, 0.8])[0], expected)
    torch.testing.assert_close(survival_recall(x, 0.4, {7: 0.6, 9: 0.8}, blocks=[7, 9])[0], expected)
    torch.testing.assert_close(survival_recall(x, 0.4, lambda blk: 0.6 if blk == 0 else 0.8)[0], expected)


def test_topk_ties_go_to_earlier_token():
    x = torch.tensor([1.0, 2.0, 2.0, 2.0, 0.0])
    assert topk_mask(x, 2).tolist() == [False, True, True, False, False]
    assert topk_mask(x, 4).tolist() == [True, True, True, True, False]
    # uniform scores: every layer picks the same first ceil(frac·V) tokens
    iou = topk_iou_matrix(torch.ones(3, 2, 30), 0.1)
    assert torch.equal(iou, torch.ones(2, 3, 3, dtype=torch.float64))


# Stability: properties ---------------------------------------------------------------------------
def test_identical_and_reversed_rankings():
    base = torch.randperm(40, generator=torch.Generator().manual_seed(0)).double() + 1.0  # distinct, positive
    x = torch.stack([base, base**2, 1.0 / base]).unsqueeze(1)  # same, same (monotone), reversed
    rho, tau = spearman_matrix(x)[0], kendall_matrix(x)[0]
    for m in (rho, tau):
        assert m[0, 1].item() == pytest.approx(1.0) and m[0, 0].item() == pytest.approx(1.0)
        assert m[0, 2].item() == pytest.approx(-1.0) and m[1, 2].item() == pytest.approx(-1.0)
        torch.testing.assert_close(m, m.T)
    for frac in (0.1, 0.25):
        assert topk_iou_matrix(x, frac)[0, 0, 1].item() == 1.0
        assert survival_recall(x, frac)[0, 0, 1].item() == 1.0
        assert survival_recall(x, frac)[0, 0, 2].item() == 0.0  # reversed: disjoint top sets


def test_constant_vector_is_nan():
    x = torch.stack([torch.ones(1, 6), torch.arange(1.0, 7.0).unsqueeze(0)])
    assert spearman_matrix(x)[0, 0, 1].isnan() and kendall_matrix(x)[0, 0, 1].isnan()
    assert spearman_matrix(x)[0, 1, 1].item() == pytest.approx(1.0)


# layer_stability ---------------------------------------------------------------------------------
def test_layer_stability_report():
    kinds = ["attn", "mlp", "ssm", "ssm"]
    s = random_scores(3, 2, 24)
    s[2] = s[0] ** 3  # block 3 ranks exactly as block 0
    s[1, 1] = 1.0  # block 2, sample 1: constant → NaN, skipped in the sample mean
    cache = make_cache(kinds, {0: s[0], 2: s[1], 3: s[2]})
    report = layer_stability(cache, topk=(0.25,), keep_ratios={0: 0.5, 2: 0.5, 3: 0.25})
    assert report.blocks == [0, 2, 3] and report.kinds == ["attn", "ssm", "ssm"]
    assert (report.n_visual, report.batch) == (24, 2)
    assert report.spearman.shape == (3, 3) and report.per_sample["kendall"].shape == (2, 3, 3)
    assert report.spearman[0, 2].item() == pytest.approx(1.0)
    assert report.kendall[0, 2].item() == pytest.approx(1.0)
    assert report.iou[0.25][0, 2].item() == 1.0
    # block 2's mean ignores the NaN sample: it equals sample 0
    assert report.spearman[0, 1].item() == pytest.approx(report.per_sample["spearman"][0, 0, 1].item())
    # keep 0.5 at block 0 contains the top 25% of block 3 (same ranking)
    assert report.survival[0.25][0, 2].item() == 1.0
    assert report.keep_ratios == [0.5, 0.5, 0.25]
    d = report.to_dict(per_sample=True)
    json.dumps(d, allow_nan=False)
    assert d["per_sample"]["spearman"][1][0][1] is None
    assert set(d["iou"]) == {"0.25"}

    stacked = layer_stability(cache.stack(), topk=(0.25,), blocks=[0, 2, 3], kendall=False)
    assert stacked.kendall is None and stacked.kinds == ["?"] * 3
    torch.testing.assert_close(stacked.spearman, report.spearman, equal_nan=True)


def test_layer_stability_errors():
    with pytest.raises(InputError, match="no scored blocks.*score a model with attention or Mamba blocks"):
        layer_stability(make_cache(["mlp"], {}))
    with pytest.raises(InputError, match=r"shape \(layers, batch, n_visual\)"):
        layer_stability(torch.ones(3, 4))
    with pytest.raises(InputError, match="negative entries"):
        layer_stability(-torch.ones(2, 1, 4))
    with pytest.raises(InputError, match="give one per layer"):
        layer_stability(torch.ones(2, 1, 4), blocks=[0])
    with pytest.raises(InputError, match="keep_ratios has 1 entries for 2 layers"):
        survival_recall(torch.rand(2, 1, 4) + 0.1, 0.5, keep_ratios=[0.5])
    with pytest.raises(InputError, match=r"keep_ratios has no entry for blocks \[1\]"):
        survival_recall(torch.rand(2, 1, 4) + 0.1, 0.5, keep_ratios={0: 0.5})
    with pytest.raises(InputError, match=r"each keep ratio must be a number in \(0, 1\]"):
        survival_recall(torch.rand(2, 1, 4) + 0.1, 0.5, keep_ratios=[0.5, 0.0])
    with pytest.raises(InputError, match="same shape"):
        spearman(torch.rand(4), torch.rand(5))
    ragged = make_cache(["attn", "ssm"], {0: torch.ones(1, 4), 1: torch.ones(1, 5)})
    with pytest.raises(InputError, match="different score shapes"):
        layer_stability(ragged)
