"""hybridreduce.calibrate: the label-free objective against a brute-force reference, the search, the files and
the command line (issue 17)."""

from __future__ import annotations

import json

import pytest
import torch

from hybridreduce import InputError, Schedule, reduce
from hybridreduce.calibrate import (
    MAX_FREE_STAGES,
    CalibrationScores,
    candidate_schedules,
    objective,
    reference_block,
    retained_mass,
    score_prompts,
    search,
    write_calibration,
)
from hybridreduce.cli import main
from hybridreduce.schedule import Plan

from .conftest import prompt, tiny_toy_spec


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


def _carried_loop(scores, blocks, plan, n) -> list[set]:
    """Plain loops, prompt ``n``: the tokens each stage carries, cut by cut the chooser's top-k among those still
    carried (stage 0: every token)."""
    V = scores.shape[2]
    per_stage = [set(range(V))]
    for point, k in zip(plan.prune_points, plan.stage_counts(V), strict=True):
        chooser = max(i for i, b in enumerate(blocks) if b < point)
        per_stage.append(set(sorted(per_stage[-1], key=lambda j: -float(scores[chooser, n, j]))[:k]))
    return per_stage


def _retained_mass_reference(scores, blocks, plan) -> list[float]:
    """Per prompt, each scored block's mass on the tokens its stage carries, averaged over the blocks."""
    L, N, V = scores.shape
    out = []
    for n in range(N):
        per_stage = _carried_loop(scores, blocks, plan, n)
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


def _reference_mass_loop(scores, blocks, plan, reference) -> list[float]:
    """Per prompt, the reference block's full-token mass on what the last block carries."""
    return [sum(float(scores[reference, n, j]) for j in _carried_loop(scores, blocks, plan, n)[-1])
            for n in range(scores.shape[1])]  # fmt: skip


def test_reference_mass_equals_the_loop_reference():
    blocks = [0, 2, 3, 5, 7]
    scores = _random_scores(len(blocks), 6, 40, seed=3)
    for plan, reference in ((Plan(9, (1, 4, 6), (0.5, 0.25, 0.1)), 3), (Plan(9, (8,), (0.3,)), 4)):
        got = retained_mass(scores, blocks, plan, reference=reference)
        ref = torch.tensor(_reference_mass_loop(scores, blocks, plan, reference), dtype=torch.float64)
        assert torch.allclose(got, ref, atol=1e-12), (got, ref)
    # with no cut the last block carries everything: the whole of the reference's mass
    whole = retained_mass(scores, blocks, Plan(9, (), ()), reference=2)
    assert torch.allclose(whole, torch.ones(6, dtype=torch.float64))


def test_the_reference_is_the_deepest_attention_block():
    kinds = ["ssm", "mlp", "attn", "ssm", "mlp", "attn", "ssm", "parallel", "ssm"]
    assert reference_block([0, 2, 3, 5, 6], kinds) == 3  # block 5
    assert reference_block([0, 2, 3, 5, 6, 7, 8], kinds) == 5  # a parallel block has attention
    assert reference_block([0, 3, 6], kinds) == 2  # none scored has attention: the deepest scored
    assert reference_block([0, 3], []) == 1  # kinds unknown (scores saved by an earlier version)
    with pytest.raises(InputError, match="no block"):
        reference_block([], kinds)


def _planted(n: int = 8, V: int = 32, seed: int = 0) -> tuple[CalibrationScores, torch.Tensor]:
    """A 10-block model scored at blocks 0, 2, 4 (attention), 6 and 8. Each prompt has 4 relevant tokens: Mamba
    blocks 2 and 8 and attention block 4 rank them first; block 6 ranks them last (as the blocks that depth
    up-scaling added do on the toy model); block 0 is noise. Importance of the other tokens is nearly flat."""
    g = torch.Generator().manual_seed(seed)
    blocks, kinds = [0, 2, 4, 6, 8], ["ssm", "mlp", "ssm", "mlp", "attn", "mlp", "ssm", "mlp", "ssm", "mlp"]
    relevant = torch.zeros(n, V, dtype=torch.bool)
    for i in range(n):
        relevant[i, torch.randperm(V, generator=g)[:4]] = True
    flat = 1.0 + 0.1 * torch.rand(len(blocks), n, V, generator=g, dtype=torch.float64)
    flat[1] += 2.0 * relevant  # block 2: relevant first, by a little (a dense Mamba block)
    flat[2] += 40.0 * relevant  # block 4 (attention): sparse, on the relevant tokens
    flat[3] -= 0.5 * relevant  # block 6: relevant last
    flat[4] += 2.0 * relevant  # block 8
    scores = flat / flat.sum(-1, keepdim=True)
    return CalibrationScores(blocks, 10, [scores], "nemotron_h", kinds), relevant


def test_the_reference_objective_places_cuts_where_blocks_rank_what_the_deepest_attention_needs():
    """On planted scores a cut scored by block 6 drops the relevant tokens. Free cuts under the reference objective
    avoid it and keep them all."""
    scores, relevant = _planted()
    cal = search(scores, keep=0.5, target="reference", placement="free")
    plan = cal.schedule.resolve(10)
    assert cal.reference == 4 and cal.target == "reference" and cal.placement == "free"
    assert cal.schedule.stages == tuple(plan.prune_points) == tuple(cal.candidates[0]["prune_points"])
    assert all(not 6 < p <= 8 for p in plan.prune_points), plan  # no cut is scored by block 6
    for n in range(relevant.shape[0]):  # replay the cuts: every relevant token reaches the last block
        last = _carried_loop(scores.groups[0], scores.blocks, plan, n)[-1]
        assert set(relevant[n].nonzero().flatten().tolist()) <= last, n
    # the preset's first cut (block 1, scored by block 0's noise) and the own-mass choice carry far less of it
    own = search(scores, keep=0.5, target="own", placement="free")
    assert objective(scores, own.schedule.resolve(10), "reference")[0] < cal.objective - 0.2
    assert cal.presets["progressive"] < 0.1


def test_free_placement_tries_every_feasible_list_of_cuts():
    import itertools

    blocks, L, keep = [0, 2, 3, 5, 7], 12, 0.4
    free = candidate_schedules(L, blocks, keep, placement="free")
    expected = set()
    for n in range(1, MAX_FREE_STAGES + 1):
        for cuts in itertools.combinations(range(1, L), n):
            for shape in ("geometric",) if n == 1 else ("geometric", "linear"):
                try:
                    Schedule(keep=keep, stages=cuts, shape=shape).resolve(L)
                except InputError:
                    continue
                expected.add((cuts, shape))
    assert {(s.stages, s.shape) for s in free} == expected and len(free) == len(expected) > 100
    spread = {tuple(s.resolve(L).prune_points) for s in candidate_schedules(L, blocks, keep, max_stages=3)}
    assert spread <= {s.stages for s in free}  # every spread layout of up to 3 cuts is among the free ones
    with pytest.raises(InputError, match="placement"):
        candidate_schedules(L, blocks, keep, placement="anywhere")
    with pytest.raises(InputError, match="objective"):
        search(_scores([_random_scores(5, 8, 32)]), 0.25, target="mine")


def test_scores_keep_the_block_kinds_through_a_file(tmp_path):
    scores, _ = _planted(n=4)
    back = CalibrationScores.load(scores.save(tmp_path / "s.pt"))
    assert back.kinds == scores.kinds and back.blocks == scores.blocks
    old = {"blocks": scores.blocks, "num_blocks": 10, "groups": scores.groups, "model_type": "nemotron_h"}
    torch.save(old, tmp_path / "old.pt")  # written before the kinds were saved
    assert CalibrationScores.load(tmp_path / "old.pt").kinds == []


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
    cal = search(scores, 0.5, target="own")
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
    free = tmp_path / "free.yaml"
    free_args = [*args, "--out", str(free), "--objective", "reference", "--placement", "free"]
    assert main(free_args) == 2  # issue 26: schedule.yaml's calibration.json is not replaced silently
    assert "already holds calibration.json" in capsys.readouterr().err and not free.exists()
    assert main([*free_args, "--overwrite"]) == 0
    assert "J_ref" in capsys.readouterr().out and "reference block" in free.read_text()
    record = json.loads((tmp_path / "calibration.json").read_text())
    assert (record["target"], record["placement"]) == ("reference", "free")
    assert Schedule.load(free).stages == tuple(record["candidates"][0]["prune_points"])
    for bad, message in (
        (["--keep", "0"], "keep"),
        (["--size", "2"], "size"),
        (["--budget", "mean"], "budget"),
        (["--data", "questions.jsonl"], "takes --data toy"),
        (["--variant", "foggy"], "the checkpoint knows"),
        (["--objective", "mine"], "objective (--objective) must be one of own, reference"),
        (["--placement", "anywhere"], "placement (--placement) must be one of spread, free"),
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


def test_simulated_ema_cuts_follow_the_engine(tiny_models):
    """DESIGN decision 16: calibrate simulates the engine's cuts through the same Plan, ``ema`` included. On one
    prompt, a schedule with ``ema`` keeps in the engine exactly the tokens the simulation carries (the first cut
    only: later blocks see fewer tokens in the engine, the simulation keeps full-token scores by design)."""
    from hybridreduce import capture, reduce
    from hybridreduce.calibrate import retained_mass

    model = tiny_models("nemotron_h")  # blocks: ssm mlp attn moe ssm attn
    ids, vm = prompt(batch=1)  # 4 text, 24 visual, 8 question tokens
    sched = Schedule(keep=None, shape="explicit", ratios=(0.5,), stages=(3,), ema=0.3)
    plan = sched.resolve(6)
    with capture(model, vm) as cache, torch.no_grad():
        model(ids)
    scores = cache.stack()  # (L, 1, V)
    with reduce(model, sched, visual_mask=vm) as red, torch.no_grad():
        model(ids)
    kept = red.kept_positions[3][0].tolist()
    # The simulation's carried set: run retained_mass with the last block as reference and read which tokens count.
    ref = cache.layers.index(5)
    one_hot = torch.eye(24)  # probe each token: its mass survives iff the token is carried
    carried = []
    for j in range(24):
        probe = scores.clone()
        probe[ref, 0] = one_hot[j]
        carried.append(bool(retained_mass(probe, cache.layers, plan, reference=ref, ema=0.3)[0] > 0.5))
    simulated = [int(cache.visual_positions[0, j]) for j in range(24) if carried[j]]
    assert simulated == kept
    # Without ema the simulation ranks by block 2 alone, which keeps a different set on this prompt.
    plain = []
    for j in range(24):
        probe = scores.clone()
        probe[ref, 0] = one_hot[j]
        plain.append(bool(retained_mass(probe, cache.layers, plan, reference=ref)[0] > 0.5))
    assert plain != carried


def test_the_default_objective_is_the_reference():
    """Issue 30: the default objective was chosen on val with merging (experiments/merging/objectives.py): the
    reference objective's layouts answer far better than the own-mass objective's on every embedded checkpoint and
    variant measured (docs/guides/calibrating.md has the table). search(), calibrate() and the command default to it."""
    import inspect

    from hybridreduce.calibrate import calibrate
    from hybridreduce.cli import build_parser

    assert inspect.signature(search).parameters["target"].default == "reference"
    assert inspect.signature(calibrate).parameters["target"].default == "reference"
    args = build_parser().parse_args(["calibrate", "--model", "toy", "--data", "toy", "--out", "x.yaml"])
    assert args.objective == "reference"
