"""analysis.diagnostics: share bias, query specificity and step correlation against float64 loop references, and a
planted case each measure must detect (a relevant-first keep set over-represents its class; identical scores under
two questions give specificity 1; a score equal to Δ gives correlation 1)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from analysis.diagnostics import (
    ShareBias,
    asked_colour_labels,
    capture_steps,
    diagnose_toy,
    diagnostics_dict,
    keep_mask,
    oracle_keep,
    query_specificity,
    question_sets,
    reduction_keep_sets,
    share_bias,
    step_correlation,
)
from analysis.relevance import NO_SCORES_KINDS
from hybridreduce import Schedule, capture, get_adapter, reduce
from hybridreduce.cache import ScoreCache
from hybridreduce.errors import InputError
from hybridreduce.toy import ToyDataset
from hybridreduce.toy.train_config import build_model

from .conftest import prompt, tiny_toy_spec

pytestmark = pytest.mark.usefixtures("one_thread")


# Float64 loop references ---------------------------------------------------------------------------
def _ref_ranks(v: list[float]) -> list[float]:
    return [sum(1.0 for w in v if w < x) + (sum(1.0 for w in v if w == x) + 1) / 2 for x in v]


def _ref_spearman(a: list[float], b: list[float]) -> float:
    ra, rb = _ref_ranks(a), _ref_ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    num = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    den = math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))
    return num / den if den else math.nan


def _ref_share(kept: list[bool], labels: list[bool], sizes: list[float]) -> tuple[float, float]:
    if not any(labels):
        return math.nan, math.nan
    total = sum(s for s, k in zip(sizes, kept, strict=True) if k)
    lab = sum(s for s, k, y in zip(sizes, kept, labels, strict=True) if k and y)
    return lab / total, sum(labels) / len(labels)


def _cache(scores: dict[int, torch.Tensor], kinds: list[str]) -> ScoreCache:
    b, V = next(iter(scores.values())).shape
    cache = ScoreCache(kinds, torch.arange(V).repeat(b, 1) + 2, {"mamba_mode": "decay_free"})
    cache.scores = dict(scores)
    return cache


# Share bias ------------------------------------------------------------------------------------------
def test_share_bias_equals_the_loop_reference():
    g = torch.Generator().manual_seed(0)
    b, V = 6, 20
    kept = torch.rand(b, V, generator=g) < 0.4
    kept[:, 0] = True
    labels = torch.rand(b, V, generator=g) < 0.2
    labels[3] = False  # a sample without the class: NaN, left out of the summary
    sizes = 1 + torch.randint(0, 4, (b, V), generator=g).to(torch.float64)
    for w in (None, sizes):
        got = share_bias(kept, labels, w)
        ww = torch.ones(b, V, dtype=torch.float64) if w is None else w
        for i in range(b):
            ref = _ref_share(kept[i].tolist(), labels[i].tolist(), ww[i].tolist())
            for x, y in zip((got.kept_share[i].item(), got.true_share[i].item()), ref, strict=True):
                assert (math.isnan(x) and math.isnan(y)) or x == pytest.approx(y, abs=1e-12), (i, x, y)
        assert got.summary()["n"] == b - 1


def test_a_labelled_first_keep_set_over_represents_its_class_and_a_random_one_does_not():
    g = torch.Generator().manual_seed(1)
    labels = torch.rand(400, 64, generator=g) < 0.08
    labels[:, 0] = True
    first = share_bias(oracle_keep(labels, 0.25, first=True), labels).summary()
    rand = share_bias(oracle_keep(labels, 0.25, first=False), labels).summary()
    assert first["over_fraction"] == 1.0 and first["mean_bias"] > 0.1
    assert first["ratio"] == pytest.approx(4.0, rel=0.05)  # all of the class fits: its share grows by 1/keep
    assert abs(rand["mean_bias"]) < 0.01 and 0.2 < rand["over_fraction"] < 0.8
    print(f"labelled first: {first}\nrandom: {rand}")


def test_merging_removed_tokens_into_their_own_class_restores_the_true_share():
    labels = torch.tensor([[1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    kept = torch.zeros_like(labels)
    kept[0, [0, 3]] = True  # one token of the class, one of the rest
    dropped = share_bias(kept, labels)
    assert dropped.kept_share.item() == 0.5 and dropped.true_share.item() == 0.25
    sizes = torch.ones(1, 12, dtype=torch.float64)
    sizes[0, 0], sizes[0, 3] = 3, 9  # each removed token merged into the kept token of its class
    merged = share_bias(kept, labels, sizes)
    assert merged.bias.item() == pytest.approx(0.0, abs=1e-15)


def test_keep_mask_and_the_keep_sets_of_a_reduction(tiny_models):
    model = tiny_models("nemotron_h")
    ids, vm = prompt(visual=24, batch=2)
    with torch.no_grad(), reduce(model, Schedule.preset("progressive", keep=0.5), visual_mask=vm) as red:
        model(ids)
    sets = reduction_keep_sets(red)
    assert sorted(sets) == sorted(red.kept_positions)
    visual = vm[0].nonzero().squeeze(1).tolist()
    for point, (kept, sizes) in sets.items():
        assert sizes is None
        for i in range(2):  # loop reference: the visual index of each kept position
            ref = [False] * len(visual)
            for pos in red.kept_positions[point][i].tolist():
                ref[visual.index(pos)] = True
            assert kept[i].tolist() == ref
    with pytest.raises(InputError, match="positions of visual tokens"):
        keep_mask(torch.tensor([[0, 1]]), vm[:1])


def test_share_bias_refuses_bad_input():
    kept = torch.ones(2, 5, dtype=torch.bool)
    with pytest.raises(InputError, match="same"):
        share_bias(kept, torch.ones(2, 6, dtype=torch.bool))
    with pytest.raises(InputError, match="keeps no visual token"):
        share_bias(torch.zeros(2, 5, dtype=torch.bool), kept)
    with pytest.raises(InputError, match="at least 1"):
        share_bias(kept, kept, torch.zeros(2, 5))
    with pytest.raises(InputError, match="boolean"):
        share_bias(kept.float() * 0.5, kept)
    assert ShareBias(torch.tensor([math.nan]), torch.tensor([math.nan])).summary()["n"] == 0


# Query specificity -------------------------------------------------------------------------------
def test_query_specificity_equals_the_loop_reference_and_detects_identical_rankings():
    g = torch.Generator().manual_seed(2)
    n_videos, n_questions, V = 3, 3, 10
    ignores = torch.rand(n_videos, 1, V, generator=g).expand(-1, n_questions, -1).reshape(-1, V)  # same every question
    listens = torch.rand(n_videos * n_questions, V, generator=g)
    listens[1, :4] = 0.5  # ties
    cache = _cache({0: ignores.clone(), 1: listens}, ["ssm", "attn"])
    groups = torch.arange(n_videos * n_questions).view(n_videos, n_questions)
    got = query_specificity(cache, groups)
    assert torch.equal(got[0], torch.ones(n_videos, dtype=torch.float64))
    for v in range(n_videos):
        rows = [listens[int(k)].tolist() for k in groups[v]]
        pairs = [_ref_spearman(rows[i], rows[j]) for i in range(n_questions) for j in range(i + 1, n_questions)]
        assert got[1][v].item() == pytest.approx(sum(pairs) / len(pairs), abs=1e-12)
    assert got[1].mean() < 0.9
    with pytest.raises(InputError, match="at least two questions"):
        query_specificity(cache, groups[:, :1])
    with pytest.raises(InputError, match="index samples"):
        query_specificity(cache, groups + 5)


# Step sizes ------------------------------------------------------------------------------------------
def test_capture_steps_records_delta_and_removes_its_hooks(tiny_models):
    model = tiny_models("nemotron_h")
    ids, vm = prompt(batch=2)
    specs = [s for s in get_adapter(model).blocks if s.ssm is not None]
    projected = {}
    refs = [s.ssm.in_proj.register_forward_hook(lambda m, a, o, i=s.index: projected.__setitem__(i, o)) for s in specs]
    try:
        with torch.no_grad(), capture_steps(model) as steps:
            model(ids)
    finally:
        for h in refs:
            h.remove()
    assert sorted(steps) == [s.index for s in specs]
    for s in specs:  # float64 reference: Δ = softplus(dt + dt_bias) clamped, mean over heads
        mixer, h = s.ssm, s.ssm.num_heads
        dt = projected[s.index][..., -h:].double() + mixer.dt_bias.double()
        lo, hi = mixer.time_step_limit
        ref = F.softplus(dt).clamp(min=float(lo), max=float(hi)).mean(-1)
        assert torch.allclose(steps[s.index].double(), ref, atol=1e-6), (steps[s.index].double() - ref).abs().max()
    assert all(not s.ssm.in_proj._forward_hooks for s in specs)
    with pytest.raises(RuntimeError, match="boom"), capture_steps(model):
        raise RuntimeError("boom")
    assert all(not s.ssm.in_proj._forward_hooks for s in specs)


def test_step_correlation_equals_the_loop_reference_and_a_score_equal_to_delta_gives_one(tiny_models):
    model = tiny_models("nemotron_h")
    ids, vm = prompt(batch=2)
    with torch.no_grad(), capture(model, vm) as cache, capture_steps(model) as steps:
        model(ids)
    got = step_correlation(cache, steps)
    assert sorted(got) == sorted(steps)
    for block, rho in got.items():
        for i in range(2):
            dt = steps[block][i][vm[i]].tolist()
            assert rho[i].item() == pytest.approx(_ref_spearman(cache[block][i].tolist(), dt), abs=1e-12)
    planted = _cache({b: steps[b][vm].view(2, -1) * 3 + 1 for b in steps}, cache.block_kinds)
    planted.visual_positions = cache.visual_positions
    for rho in step_correlation(planted, steps).values():
        assert torch.allclose(rho, torch.ones(2, dtype=torch.float64))
    with pytest.raises(InputError, match="no Mamba block"):
        step_correlation(cache, {})


# The toy model --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def toy():
    spec = tiny_toy_spec()
    return build_model(spec, seed=0).eval(), ToyDataset(spec.data, "val", 8, vocab=spec.vocab)


def test_question_sets_ask_distinct_questions_about_one_video(toy):
    _, ds = toy
    batch, groups = question_sets(ds, range(4), 3)
    assert groups.shape[1] == 3 and groups.shape[0] >= 1
    for row in groups.tolist():
        assert all(torch.equal(batch["pixels"][row[0]], batch["pixels"][k]) for k in row)
        questions = {tuple(batch["input_ids"][k][batch["attention_mask"][k].bool()].tolist()) for k in row}
        assert len(questions) == 3
    with pytest.raises(InputError, match="n_questions"):
        question_sets(ds, range(2), 1)


def test_asked_colour_labels_mark_the_counted_colour(toy):
    _, ds = toy
    labels = asked_colour_labels(ds, range(8))
    for i in range(8):
        sample = ds[i]
        if sample.qtype == "count":  # every token of the counted colour is relevant
            rel = torch.zeros(ds.cfg.n_visual, dtype=torch.bool)
            for t, r, c in sample.relevant:
                rel[t * ds.cfg.tokens_per_frame + r * ds.cfg.cols + c] = True
            assert torch.equal(labels[i], rel)
        assert labels[i].any()


def test_diagnose_toy_end_to_end(toy):
    model, ds = toy
    schedules = {"progressive": Schedule.preset("progressive", keep=0.5)}
    diag = diagnose_toy(model, ds, samples=4, videos=3, n_questions=2, schedules=schedules, keep=0.5, batch_size=4)
    out = diagnostics_dict(diag)
    assert set(out["share_bias"]) == {"progressive", "oracle_labelled_first", "oracle_random"}
    assert out["share_bias"]["oracle_labelled_first"]["0"]["over_fraction"] == 1.0
    kinds = get_adapter(model).kinds
    assert {r["block"] for r in out["step_correlation"]} == {i for i, k in enumerate(kinds) if k == "ssm"}
    assert {r["block"] for r in out["query_specificity"]} == {i for i, k in enumerate(kinds) if k in ("ssm", "attn")}
    with pytest.raises(InputError, match="taken by the oracle"):
        diagnose_toy(model, ds, 2, 2, 2, {"oracle_random": schedules["progressive"]}, 0.5)


# hybridreduce analyze: the optional diagnostics section ---------------------------------------------
def test_the_diagnostics_setting_is_optional_and_checked():
    from analysis.config import DIAGNOSTICS_DEFAULTS, AnalysisConfig

    assert AnalysisConfig().diagnostics is None
    on = AnalysisConfig(diagnostics=True)
    assert on.diagnostics == DIAGNOSTICS_DEFAULTS
    assert AnalysisConfig.from_dict(on.to_dict()).diagnostics == DIAGNOSTICS_DEFAULTS
    assert AnalysisConfig(diagnostics={"questions": 3}).diagnostics["questions"] == 3
    for bad, match in (
        ({"question": 3}, "keys"),
        ({"questions": 1}, "questions"),
        ({"keep": 1.5}, "keep"),
        (3, "mapping"),
    ):
        with pytest.raises(InputError, match=match):
            AnalysisConfig(diagnostics=bad)


def test_diagnostics_section_of_a_tiny_model_and_its_plots(tiny_models, tmp_path):
    from analysis.config import AnalysisConfig
    from analysis.plots import plot_query_specificity, plot_share_bias, plot_step_correlation
    from analysis.sections import diagnostics_section

    model = tiny_models("nemotron_h")
    config = AnalysisConfig(model={"tiny": "nemotron_h"}, samples=2, diagnostics={"videos": 3, "questions": 3})
    section = diagnostics_section(model, config)
    kinds = get_adapter(model).kinds
    assert "share_bias" not in section  # random prompts carry no token labels
    assert [r["block"] for r in section["query_specificity"]] == [
        i for i, k in enumerate(kinds) if k not in NO_SCORES_KINDS
    ]
    assert [r["block"] for r in section["step_correlation"]] == [i for i, k in enumerate(kinds) if k == "ssm"]
    assert all(r["n"] == 3 for r in section["query_specificity"])
    metrics = {"diagnostics": section}
    paths = plot_query_specificity(metrics, tmp_path, ("png",)) + plot_step_correlation(metrics, tmp_path, ("png",))
    assert all(p.stat().st_size > 5000 for p in paths)
    with pytest.raises(InputError, match="labelled tokens"):
        plot_share_bias(metrics, tmp_path, ("png",))
    with pytest.raises(InputError, match="no diagnostics section"):
        diagnostics_section(model, AnalysisConfig(model={"tiny": "nemotron_h"}))


def test_diagnostics_section_of_a_toy_model_measures_the_share_bias_under_the_runs_schedule(toy, tmp_path):
    from analysis.config import AnalysisConfig
    from analysis.plots import plot_share_bias
    from analysis.sections import diagnostics_section

    model, ds = toy
    config = AnalysisConfig(samples=4, batch_size=4, split="val", keep=0.5, diagnostics={"videos": 2, "questions": 2})
    section = diagnostics_section(model, config, ds.cfg, ds.vocab)
    assert set(section["share_bias"]) == {"progressive", "oracle_labelled_first", "oracle_random"}
    assert section["settings"]["schedules"]["progressive"]["keep"] == 0.5
    (path,) = plot_share_bias({"diagnostics": section}, tmp_path, ("png",))
    assert path.stat().st_size > 5000


# scripts/why_diagnostics.py -----------------------------------------------------------------------------
def test_why_diagnostics_script_on_a_tiny_checkpoint(tmp_path, capsys):
    import sys
    from pathlib import Path

    from hybridreduce.toy.train import train

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import why_diagnostics

    run = tmp_path / "run"
    train(tiny_toy_spec(eval_every=3, eval_size=4, test_size=4), run, progress=False, command="pytest")
    out = tmp_path / "figures"
    args = ["--checkpoint", str(run), "--samples", "4", "--videos", "2", "--questions", "2", "--keep", "0.5"]
    args += ["--out", str(out)]
    result = why_diagnostics.main(args)
    assert json_equal(out / "why_diagnostics.json", result)
    section = result["variants"]["static"]
    assert set(section["share_bias"]) == {*why_diagnostics.SCHEDULES, "oracle_labelled_first", "oracle_random"}
    assert sorted(p.name for p in out.glob("*.png")) == [f"why_static_{n}.png" for n in sorted(why_diagnostics.PLOTS)]
    assert "specificity" in capsys.readouterr().out


def json_equal(path, value) -> bool:
    import json

    return json.loads(path.read_text()) == json.loads(json.dumps(value))


def test_analyze_writes_the_diagnostics_section(tmp_path):
    """``diagnostics: true`` in an analysis config puts the section into metrics.json (a sharded run leaves it out:
    its merge loads no model)."""
    import json

    from analysis.config import AnalysisConfig
    from analysis.run import collect

    config = AnalysisConfig(
        model={"tiny": "nemotron_h"}, samples=2, batch_size=2, diagnostics={"videos": 2, "questions": 2}
    )
    metrics = collect(config, tmp_path / "run", progress=False)
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(metrics["diagnostics"]) == set(written["diagnostics"]) >= {"query_specificity", "step_correlation"}
    assert not [e for e in written["errors"] if e["stage"] == "diagnostics"]
