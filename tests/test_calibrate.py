"""hybridreduce.calibrate: the label-free objective against a brute-force reference, the search, the files and
the command line (issue 17)."""

from __future__ import annotations

import json

import pytest
import torch

from hybridreduce import InputError, Schedule, reduce
from hybridreduce.calibrate import (
    CalibrationScores,
    candidate_schedules,
    objective,
    retained_mass,
    score_prompts,
    search,
    write_calibration,
)
from hybridreduce.cli import main
from hybridreduce.schedule import Plan

from .conftest import tiny_toy_spec


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny toy run (three training steps): a train-toy directory calibrate can read."""
    from hybridreduce.toy.train import train

    out = tmp_path_factory.mktemp("toy_run")
    train(tiny_toy_spec(eval_every=3, eval_size=4, test_size=4), out, progress=False)
    return out


def _random_scores(L: int, N: int, V: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(L, N, V, generator=g, dtype=torch.float64) ** 4  # peaked, like real importance
    return x / x.sum(-1, keepdim=True)


def _retained_mass_reference(scores, blocks, plan) -> list[float]:
    """Plain loops: per prompt, cut by cut, the chooser's top-k among the tokens still carried."""
    L, N, V = scores.shape
    out = []
    for n in range(N):
        carried = set(range(V))
        per_stage = [set(carried)]
        for point, k in zip(plan.prune_points, plan.stage_counts(V), strict=True):
            chooser = max(i for i, b in enumerate(blocks) if b < point)
            ranked = sorted(carried, key=lambda j: -float(scores[chooser, n, j]))
            carried = set(ranked[:k])
            per_stage.append(set(carried))
        masses = []
        for i, b in enumerate(blocks):
            stage = sum(b >= p for p in plan.prune_points)
            masses.append(sum(float(scores[i, n, j]) for j in per_stage[stage]))
        out.append(sum(masses) / L)
    return out


def test_retained_mass_equals_the_loop_reference():
    blocks = [0, 2, 3, 5, 7]
    scores = _random_scores(len(blocks), 6, 40)
    plan = Plan(9, (1, 4, 6), (0.5, 0.25, 0.1))
    got = retained_mass(scores, blocks, plan)
    ref = torch.tensor(_retained_mass_reference(scores, blocks, plan), dtype=torch.float64)
    print(f"retained mass vs loop reference: max |diff| {(got - ref).abs().max():.1e}")
    assert torch.allclose(got, ref, atol=1e-12)


def test_retained_mass_rewards_a_chooser_that_agrees_with_the_later_blocks():
    """Block 0 ranks the tokens like every later block (stable) or in the opposite order (unstable)."""
    V = 20
    base = torch.softmax(torch.linspace(3, -3, V, dtype=torch.float64), 0)
    stable = base.expand(3, 1, V).clone()
    unstable = stable.clone()
    unstable[0, 0] = base.flip(0)
    plan = Plan(6, (1,), (0.25,))
    blocks = [0, 3, 5]
    good, bad = retained_mass(stable, blocks, plan), retained_mass(unstable, blocks, plan)
    kept = float(base[:5].sum())  # the top quarter holds this much of each later block's mass
    assert torch.allclose(good, torch.tensor([(1 + 2 * kept) / 3], dtype=torch.float64))
    assert float(bad) < float(good) - 0.3


def _scores(groups, blocks=(0, 2, 3, 5, 7), L=12) -> CalibrationScores:
    return CalibrationScores(list(blocks), L, [g for g in groups], "nemotron_h")


def test_search_chooses_the_best_feasible_layout_and_compares_the_presets():
    scores = _scores([_random_scores(5, 8, 64), _random_scores(5, 4, 48, seed=1)])
    cal = search(scores, keep=0.4)
    assert cal.n_prompts == 12 and sorted(cal.n_visual) == [48, 64]
    best = cal.candidates[0]
    assert best["objective"] == max(c["objective"] for c in cal.candidates) == cal.objective
    plan = cal.schedule.resolve(12)
    assert list(plan.prune_points) == best["prune_points"] and cal.schedule.name == "progressive-calibrated"
    assert objective(scores, plan)[0] == pytest.approx(cal.objective)
    assert set(cal.presets) == {"progressive", "fastv", "pyramiddrop"}
    n = len(candidate_schedules(12, scores.blocks, 0.4))
    assert len(cal.candidates) == n >= 10
    assert all(c["first_prune"] >= 1 for c in cal.candidates)


def test_bad_calibrations_are_refused():
    with pytest.raises(InputError, match="at least 4 prompts"):
        search(_scores([_random_scores(5, 3, 32)]), 0.25)
    with pytest.raises(InputError, match="no layout can carry"):  # the first scoring block is block 9 of 12
        search(_scores([_random_scores(1, 8, 32)], blocks=(9,)), 0.25)
    with pytest.raises(InputError, match="keep must be"):
        search(_scores([_random_scores(5, 8, 32)]), 1.5)
    with pytest.raises(InputError, match="budget"):
        search(_scores([_random_scores(5, 8, 32)]), 0.25, budget="mean")


def test_calibration_on_a_toy_model_writes_a_schedule_that_runs(run_dir, tmp_path):
    """score_prompts on toy prompts, the YAML (provenance comments) loads and runs under reduce."""
    from hybridreduce.toy import ToyDataset
    from hybridreduce.toy.demo import calibration_batches, load_toy_spec

    model, spec = load_toy_spec(run_dir)
    data = ToyDataset(spec.configs[0], "val", 8, vocab=spec.vocab)
    scores = score_prompts(model, calibration_batches(data, 4))
    assert scores.n_prompts == 8 and scores.blocks and all(g.dtype == torch.float64 for g in scores.groups)
    assert torch.allclose(scores.groups[0].sum(-1), torch.ones(1, dtype=torch.float64))
    cal = search(scores, 0.5)
    paths = write_calibration(cal, tmp_path / "cal" / "schedule.yaml", command="pytest")
    assert [p.name for p in paths] == ["schedule.yaml", "calibration.json", "calibration.png", "calibration.pdf"]
    text = paths[0].read_text()
    assert "# command: pytest" in text and "retained importance mass" in text
    sched = Schedule.load(paths[0])
    assert sched == cal.schedule
    assert json.loads(paths[1].read_text())["objective"] == pytest.approx(cal.objective)
    batch = data.batch(range(2))
    with reduce(model, sched) as red, torch.no_grad():
        model(batch["input_ids"], pixel_values=batch["pixels"], attention_mask=batch["attention_mask"])
    assert red.average_keep == pytest.approx(0.5, abs=0.05)


def test_cli_calibrate(run_dir, tmp_path, capsys):
    out = tmp_path / "schedule.yaml"
    args = ["calibrate", "--model", str(run_dir), "--data", "toy", "--size", "8", "--keep", "0.5", "--no-progress"]
    assert main([*args, "--out", str(out)]) == 0
    assert "chosen: first cut before block" in capsys.readouterr().out
    assert Schedule.load(out).name == "progressive-calibrated"
    before = out.read_bytes()
    assert main([*args, "--out", str(out)]) == 2  # no silent overwrite
    assert "--overwrite" in capsys.readouterr().err and out.read_bytes() == before
    for bad, message in (
        (["--keep", "0"], "keep"),
        (["--size", "2"], "size"),
        (["--budget", "mean"], "budget"),
        (["--data", "questions.jsonl"], "takes --data toy"),
        (["--variant", "foggy"], "the checkpoint knows"),
    ):
        assert main([*args, "--out", str(tmp_path / "x.yaml"), *bad]) == 2, bad
        assert message in capsys.readouterr().err, bad
    assert main([*args, "--out", str(tmp_path / "x.txt")]) == 2
    assert not (tmp_path / "x.yaml").exists()


def test_scores_of_a_failing_calibration_are_saved(run_dir, tmp_path, capsys, monkeypatch):
    """A batch whose samples carry different numbers of visual tokens fails; the scores before it are kept."""
    from hybridreduce.toy import demo

    real = demo.calibration_batches

    def mixed(dataset, batch_size=32):
        batches = list(real(dataset, 4))
        bad = dict(batches[-1])
        bad["visual_mask"] = bad["visual_mask"].clone()
        bad["visual_mask"][0, bad["visual_mask"][0].nonzero()[0]] = False  # one sample loses a visual token
        return [*batches[:-1], bad]

    monkeypatch.setattr(demo, "calibration_batches", mixed)
    out = tmp_path / "schedule.yaml"
    args = ["calibrate", "--model", str(run_dir), "--data", "toy", "--size", "8", "--no-progress"]
    assert main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "different numbers of visual tokens" in err and "saved in" in err
    saved = CalibrationScores.load(tmp_path / "schedule.scores.partial.pt")
    assert saved.n_prompts == 4 and not out.exists()
