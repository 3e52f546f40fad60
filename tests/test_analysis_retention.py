"""The stateful retention probe: probe fitting on synthetic features, targets, and a run on a tiny toy model."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import replace

import pytest
import torch

from analysis.probes import bootstrap_stderr, fit_ridge, multilabel_probe, r2_score, regression_probe, roc_auc
from analysis.retention import dropped_targets, retention_probe
from analysis.retention_report import CONDITIONS, FEATURES, GROUPS, TARGETS
from hybridreduce import InputError
from hybridreduce.toy import ToyDataset
from hybridreduce.toy.demo import load_toy
from hybridreduce.toy.train import train

from .conftest import tiny_toy_spec

torch.set_num_threads(1)

BLOCKS, KEEPS, SELECTORS = [1, 3], [0.25, 1.0], ["random", "progressive"]
N_TRAIN, N_TEST = 16, 8


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    out = tmp_path_factory.mktemp("retention_run")
    spec = tiny_toy_spec(eval_every=3, eval_size=4, test_size=4)
    train(spec, out, progress=False, command="pytest")
    model, data = load_toy(out)
    return model, ToyDataset(data, "test", N_TRAIN + N_TEST)


@pytest.fixture(scope="module")
def report(toy):
    model, ds = toy
    return retention_probe(model, ds, BLOCKS, KEEPS, SELECTORS, n_train=N_TRAIN, n_test=N_TEST, batch_size=12)


# Probe fitting -------------------------------------------------------------------------------------
def _planted(n: int = 300, d: int = 12, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.linspace(0.5, 4.0, d, dtype=torch.float64) + 2.0
    w = torch.randn(d, generator=g, dtype=torch.float64)
    noise = torch.randn(n, generator=g, dtype=torch.float64)
    return x, w, noise


def test_ridge_recovers_a_planted_linear_signal():
    x, w, noise = _planted()
    y = x @ w + 3.0 + 0.01 * noise
    probe = fit_ridge(x[:200], y[:200])
    assert probe.weight.dtype == torch.float64 and probe.coef.shape == (12, 1)
    assert torch.allclose(probe.coef[:, 0], w, atol=5e-3), (probe.coef[:, 0] - w).abs().max()
    assert abs(probe.intercept.item() - 3.0) < 0.05
    assert torch.allclose(probe.predict(x[200:])[:, 0], y[200:], atol=0.05)
    # the fit is the closed-form ridge solution at the chosen penalty (normal equations on standardised features)
    xs = (x[:200] - probe.mean) / probe.scale
    lam = probe.alpha[0].item() * 200
    w_ref = torch.linalg.solve(xs.T @ xs + lam * torch.eye(12, dtype=torch.float64), xs.T @ (y[:200] - y[:200].mean()))
    assert torch.allclose(probe.weight[:, 0], w_ref, atol=1e-10) and probe.bias.item() == pytest.approx(y[:200].mean())
    res = regression_probe(x[:200], y[:200], x[200:], y[200:])
    assert res["metric"] == "r2" and res["score"] > 0.9999 and res["baseline"] <= 0.0
    # several outputs at once, each with its own penalty: the signal and pure noise
    both = fit_ridge(x[:200], torch.stack([y, noise], dim=1)[:200])
    assert both.alpha[0] < both.alpha[1]
    assert torch.allclose(both.coef[:, 0], probe.coef[:, 0])


def test_ridge_gives_chance_on_noise():
    x, _, noise = _planted(seed=1)
    res = regression_probe(x[:200], noise[:200], x[200:], noise[200:])
    assert res["score"] < 0.05 and res["baseline"] <= 0.0
    labels = (torch.randn(300, 4, generator=torch.Generator().manual_seed(2)) > 0).double()
    res = multilabel_probe(x[:200], labels[:200], x[200:], labels[200:])
    assert res["n_labels"] == 4 and abs(res["score"] - 0.5) < 0.12
    assert res["accuracy"] < res["majority"] + 0.1


def test_multilabel_probe_recovers_linear_labels():
    x, w, _ = _planted(seed=3)
    z = x - x.mean(0)
    labels = torch.stack([(z @ w > 0), (z[:, 0] > 0), (z[:, 0] < 0) & (z[:, 1] > 10)], dim=1).double()
    res = multilabel_probe(x[:200], labels[:200], x[200:], labels[200:])
    # the third label is empty in both splits: left out of the AUC mean
    assert res["metric"] == "auc" and res["n_labels"] == 2 and res["score"] > 0.97
    assert res["accuracy"] > 0.9 > res["majority"] - 0.3


def test_auc_and_r2_by_hand():
    assert roc_auc(torch.tensor([0, 0, 1, 1]), torch.tensor([0.1, 0.4, 0.35, 0.8])) == 0.75
    assert roc_auc(torch.tensor([0, 1, 0, 1]), torch.tensor([1.0, 1.0, 1.0, 1.0])) == 0.5
    assert roc_auc(torch.tensor([1, 0, 1]), torch.tensor([0.2, 0.2, 0.9])) == 0.75
    assert roc_auc(torch.tensor([1, 1]), torch.tensor([0.2, 0.3])) is None
    assert r2_score(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 2.0, 3.0])) == 1.0
    assert r2_score(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 2.0, 2.0])) == 0.0
    assert r2_score(torch.tensor([2.0, 2.0]), torch.tensor([1.0, 2.0])) is None


def test_bootstrap_stderr_of_a_mean_is_sigma_over_root_n():
    x = torch.randn(400, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    se = bootstrap_stderr(lambda i: x[i].mean().item(), len(x), rounds=400)
    assert se == pytest.approx(x.std().item() / 20, rel=0.15)
    assert bootstrap_stderr(lambda i: x[i].mean().item(), len(x), rounds=400) == se  # seeded: deterministic
    assert bootstrap_stderr(lambda i: None, len(x)) is None  # undefined on every resample
    # probes report it next to their held-out score
    x2, w, noise = _planted()
    res = regression_probe(x2[:200], (x2 @ w + noise)[:200], x2[200:], (x2 @ w + noise)[200:])
    assert 0 < res["stderr"] < 0.1
    labels = (x2[:, :2] > x2[:, :2].mean(0)).double()
    res = multilabel_probe(x2[:200], labels[:200], x2[200:], labels[200:])
    assert res["n_labels"] == 2 and 0 < res["stderr"] < 0.1


def test_ridge_input_errors():
    with pytest.raises(InputError, match="at least 3 training samples"):
        fit_ridge(torch.randn(2, 3), torch.randn(2))
    with pytest.raises(InputError, match="to match x"):
        fit_ridge(torch.randn(5, 3), torch.randn(4))
    with pytest.raises(InputError, match="non-finite"):
        fit_ridge(torch.full((5, 3), float("nan")), torch.randn(5))


def test_dropped_targets_by_hand():
    # 2 samples, 6 tokens, 3 colours; -1 is background
    colours = torch.tensor([[0, 0, 1, -1, 2, -1], [-1, 1, 1, -1, -1, 2]])
    kept = torch.tensor([[1, 0, 0, 1, 0, 1], [0, 0, 1, 1, 1, 1]], dtype=torch.bool)
    t = dropped_targets(colours, kept, 3)
    assert t["dropped_event_tokens"].tolist() == [3.0, 1.0]
    # sample 0: colour 0 is also kept, 1 and 2 only dropped; sample 1: colour 1 is also kept, 2 kept
    assert t["dropped_only_colours"].tolist() == [[0.0, 1.0, 1.0], [0.0, 0.0, 0.0]]
    nothing = dropped_targets(colours, torch.ones_like(kept), 3)
    assert nothing["dropped_event_tokens"].sum() == 0 and nothing["dropped_only_colours"].sum() == 0


# The run on a tiny toy model ------------------------------------------------------------------------
def test_report_has_every_entry(report, toy):
    model, ds = toy
    n = N_TRAIN + N_TEST
    keys = {(p.block, p.keep, p.selector, p.condition, p.feature, p.target) for p in report.probes}
    configs = [(b, k, s) for b in BLOCKS for k in KEEPS for s in SELECTORS]
    expected = {(*c, cond, f, t) for c in configs for cond in CONDITIONS for f in FEATURES for t in TARGETS}
    assert keys == expected and len(report.probes) == len(expected)
    for p in report.probes:
        assert p.kind == report.block_kinds[p.block]
        assert p.n_kept == (12 if p.keep == 0.25 else 48)
        if p.score is not None and p.metric == "auc":
            assert 0.0 <= p.score <= 1.0 and p.baseline == 0.5
        if p.accuracy is not None:
            assert 0.0 <= p.accuracy <= 1.0 and 0.0 <= p.majority <= 1.0
    for b in BLOCKS:
        for k in KEEPS:
            for s in SELECTORS:
                rows = [t for t in report.task if (t.block, t.keep, t.selector) == (b, k, s)]
                assert [t.group for t in rows] == list(GROUPS)
                by = {t.group: t for t in rows}
                assert by["all"].n + by["some"].n + by["none"].n == by["total"].n == n
                for t in rows:
                    for a in (t.accuracy, t.input_drop_accuracy, t.full_accuracy):
                        assert (a is None) == (t.n == 0)
                        assert a is None or 0.0 <= a <= 1.0
    # at a real cut, the probe targets are not constant and every condition is scored
    p = report.probe(3, 0.25, "random", "cut", "visual_mean", "dropped_event_tokens")
    assert p.score is not None and p.note is None and p.target_mean > 0
    # the cut and the control read different streams (blocks < 3 saw the dropped tokens in the cut only)
    cut, control = (report.probe(3, 0.25, "random", c, "answer", "dropped_event_tokens") for c in ("cut", "input_drop"))
    assert cut.score != control.score
    # full-token accuracy is one number per sample, whatever the configuration
    totals = {t.full_accuracy for t in report.task if t.group == "total"}
    assert len(totals) == 1


def test_report_serialises(report):
    d = report.to_dict()
    text = json.dumps(d, allow_nan=False)
    assert json.loads(text)["blocks"] == BLOCKS and d["n_train"] == N_TRAIN
    for table in ("probe", "summary", "task"):
        rows = report.to_rows(table)
        assert rows and all(set(r) == set(rows[0]) for r in rows)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    summary = report.summary()
    assert len(summary) == len(BLOCKS) * len(KEEPS) * len(SELECTORS) * len(FEATURES) * len(TARGETS)
    for row in summary:
        if row["score_cut"] is not None and row["score_input_drop"] is not None:
            assert row["retained"] == pytest.approx(row["score_cut"] - row["score_input_drop"])
            se = (row["stderr_cut"], row["stderr_input_drop"])
            assert row["retained_stderr"] == pytest.approx((se[0] ** 2 + se[1] ** 2) ** 0.5)
    with pytest.raises(InputError, match="table must be"):
        report.to_rows("probes")


def test_keep_one_drops_nothing(report):
    for t in report.task:
        if t.keep == 1.0:
            assert {"all": 24, "some": 0, "none": 0, "total": 24}[t.group] == t.n
            if t.n:  # keep = 1 is bit-identical to the untouched model, and so is the control
                assert t.accuracy == t.input_drop_accuracy == t.full_accuracy
    for p in report.probes:
        if p.keep == 1.0:
            assert p.target_mean == 0.0 and p.score is None and "keep = 1" in p.note


def test_bad_inputs(toy):
    model, ds = toy
    kw = {"n_train": N_TRAIN, "n_test": N_TEST, "progress": False}
    with pytest.raises(InputError, match=r"cut block 0 is out of range.*input_drop control"):
        retention_probe(model, ds, [0], **kw)
    with pytest.raises(InputError, match=r"cut block 12 is out of range: .*\[1, 11\]"):
        retention_probe(model, ds, [12], **kw)
    with pytest.raises(InputError, match="twice"):
        retention_probe(model, ds, [2, 2], **kw)
    for bad in (0.0, 1.5, -0.1, float("nan")):
        with pytest.raises(InputError, match=r"outside \(0, 1\]"):
            retention_probe(model, ds, [2], keeps=[bad], **kw)
    with pytest.raises(InputError, match="unknown selector"):
        retention_probe(model, ds, [2], selectors=["fastv"], **kw)
    with pytest.raises(InputError, match="too few samples to fit a probe"):
        retention_probe(model, ds, [2], n_train=4, n_test=N_TEST, progress=False)
    with pytest.raises(InputError, match="too few samples to fit a probe"):
        retention_probe(model, ds, [2], n_train=N_TRAIN, n_test=1, progress=False)
    with pytest.raises(InputError, match="the dataset has only 24"):
        retention_probe(model, ds, [2], n_train=N_TRAIN, n_test=N_TEST + 1, progress=False)
    with pytest.raises(InputError, match=r"needs the embedded toy VLM .*got Linear"):
        retention_probe(torch.nn.Linear(2, 2), ds, [2], **kw)
    with pytest.raises(InputError, match="needs a hybridreduce.toy.ToyDataset"):
        retention_probe(model, list(ds), [2], **kw)
    other = ToyDataset(replace(tiny_toy_spec().data, frames=16), "test", 24)
    with pytest.raises(
        InputError, match="model was built for 12 frames of 2x2 patches of 8px but the dataset has 16 frames"
    ):
        retention_probe(model, other, [2], **kw)
