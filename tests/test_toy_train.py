"""train-toy and the demo on a tiny toy model: training batches, a few steps, the run files, the demo table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from hybridreduce import InputError, Schedule, reduce
from hybridreduce.cli import main
from hybridreduce.toy import PALETTE, ToyDataset
from hybridreduce.toy.demo import (
    DEMO_METHODS,
    DemoMethod,
    answers_correct,
    demo_method,
    evaluate_method,
    format_table,
    load_toy,
    run_demo,
    write_outputs,
)
from hybridreduce.toy.evaluate import AnswerSheet, accuracy_line, accuracy_table, answer_logits, evaluate
from hybridreduce.toy.losses import PositionHeads, training_batch, training_losses
from hybridreduce.toy.model import ToyVLM
from hybridreduce.toy.questions import FIRST_WORDS, ORDER_WORDS, follow_up_questions, quadrant, time_bin
from hybridreduce.toy.train import train
from hybridreduce.toy.train_config import build_model, spec_from_dict

from .conftest import tiny_mixed_raw, tiny_toy_raw, tiny_toy_spec

TRAIN = {"follow_ups": 2, "evs_prob": 0.5, "content_weight": 1.0, "position_weight": 1.0}


def _spec(**train):
    return tiny_toy_spec(**(TRAIN | train))


@pytest.fixture(scope="module")
def spec():
    return _spec()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, spec):
    out = tmp_path_factory.mktemp("toy_run")
    spec.train.eval_every, spec.train.eval_size, spec.train.test_size = 2, 8, 8
    train(spec, out, progress=False, command="pytest")
    return out


def test_follow_up_questions_are_answered_by_the_video(spec):
    ds = ToyDataset(spec.data, "train", 24)
    rng = np.random.default_rng(0)
    p = spec.data.patch
    seen = set()
    for sample in ds:
        for words, qtype, answer in follow_up_questions(sample, spec.data, rng, 6):
            seen.add(qtype)
            events = [e for e in sample.events if e.colour in words]
            if qtype == "colour":
                t, cell = int(words[5]), words[7]
                r, c = int(cell[1]), int(cell[3])
                centre = sample.video[t, r * p + p // 2, c * p + p // 2]
                assert tuple(centre) == PALETTE[answer]
            elif qtype == "count":
                assert int(answer) == len(events) >= 2
            else:
                assert len(events) == 1
                e = events[0]
                expected = f"bin{time_bin(spec.data, e.start)}" if qtype == "when" else "r{}c{}".format(*e.cells[0])
                if qtype == "where" and spec.data.where_answer == "quadrant":
                    expected = quadrant(spec.data, *e.cells[0])
                assert answer == expected
    assert seen == {"colour", "when", "where", "count"}


def test_training_batch_layout(spec):
    ds = ToyDataset(spec.data, "train", 8)
    batch = training_batch(ds, [0, 1, 2], follow_ups=3, rng=np.random.default_rng(0))
    marker = ds.vocab.answer_marker_id
    ids = batch["input_ids"]
    assert batch["targets"].shape == (3, 4)
    assert ((ids == marker).sum(1) == 4).all() and (ids[:, -1] == marker).all()
    for k in range(3):
        enc = ds.encoded(k)
        real = ids[k][batch["attention_mask"][k].bool()]
        n = int(enc["attention_mask"].sum())
        assert torch.equal(real[:n], enc["input_ids"][-n:])  # the dataset's own question comes first
        assert batch["targets"][k, 0] == enc["answer_id"]
        # the token after each non-final <answer> is that question's target
        after = real[1:][real[:-1] == marker]
        assert torch.equal(after, batch["targets"][k, :-1])
    assert torch.equal(batch["visual_mask"], ids == ds.vocab.video_id)


def test_a_few_training_steps_lower_the_loss(spec):
    model = build_model(spec).train()
    ds = ToyDataset(spec.data, "train", 16)
    batch = training_batch(ds, range(16), follow_ups=2, rng=np.random.default_rng(0))
    heads = PositionHeads(model.config)
    opt = torch.optim.AdamW([*model.parameters(), *heads.parameters()], lr=3e-3)
    losses = []
    for _ in range(8):
        answer, content, position, _ = training_losses(model, batch, heads=heads)
        loss = answer + content + position
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.85 * losses[0], losses
    answer, content, position, _ = training_losses(model, batch, evs_rate=0.6, heads=heads)  # EVS uptraining runs
    assert torch.isfinite(answer) and content > 0 and position > 0
    assert training_losses(model, batch, with_content=False)[1:] == (0, 0, 0)  # no content loss, no heads


def test_content_targets_follow_the_video(spec):
    ds = ToyDataset(spec.data, "train", 4)
    batch = training_batch(ds, range(4), follow_ups=0, rng=np.random.default_rng(0))
    v = ds.vocab
    for k in range(4):
        sample = ds[k]
        expected = torch.full((spec.data.n_visual,), v.video_id)
        R, C = spec.data.rows, spec.data.cols
        for e in sample.events:
            for t, r, c in e.tokens:
                expected[t * R * C + r * C + c] = v.token_id(e.colour)
        assert torch.equal(batch["contents"][k], expected)


def test_resume_continues_exactly(tmp_path):
    spec = _spec(steps=4, eval_every=2)
    spec.train.eval_size = spec.train.test_size = 4
    whole = train(spec, tmp_path / "whole", progress=False)
    assert train(spec, tmp_path / "parts", progress=False, max_minutes=0) is None  # stops at the first eval
    log = [json.loads(line) for line in (tmp_path / "parts" / "train_log.jsonl").read_text().splitlines()]
    assert log[-1] == {"event": "stop", "step": 2, "reason": "max_minutes=0"}
    resumed = train(spec, tmp_path / "parts", progress=False, resume=True)
    assert resumed["accuracy"] == whole["accuracy"]
    a = ToyVLM.from_pretrained(tmp_path / "whole").state_dict()
    b = ToyVLM.from_pretrained(tmp_path / "parts").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(InputError, match="nothing to resume"):
        train(spec, tmp_path / "fresh", progress=False, resume=True)
    with pytest.raises(InputError, match="differs"):
        train(_spec(steps=5, eval_every=2), tmp_path / "parts", progress=False, resume=True)


def test_a_branch_continues_the_run_it_branches_from(tmp_path):
    """A branch with the same settings is the uninterrupted run; one under in-LM reduction differs only after the
    saved step, and says so in its log; a branch that would change what the steps draw is refused."""
    spec = _spec(steps=4, eval_every=2)
    spec.train.eval_size = spec.train.test_size = 4
    whole = train(spec, tmp_path / "whole", progress=False)
    assert train(spec, tmp_path / "trunk", progress=False, max_minutes=0) is None  # saved at step 2
    with (tmp_path / "trunk" / "train_log.jsonl").open("a") as log:  # a step trained past the checkpoint
        log.write(json.dumps({"event": "train", "step": 3}) + "\n")
    same = train(spec, tmp_path / "same", progress=False, branch_from=tmp_path / "trunk")
    assert same["accuracy"] == whole["accuracy"]
    a = ToyVLM.from_pretrained(tmp_path / "whole").state_dict()
    b = ToyVLM.from_pretrained(tmp_path / "same").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(line) for line in (tmp_path / "same" / "train_log.jsonl").read_text().splitlines()]
    branch = next(r for r in log if r["event"] == "branch")
    assert log[0]["event"] == "start" and log[log.index(branch) - 1]["event"] == "stop"  # the trunk's history to 2
    assert branch["step"] == 2 and branch["changed"] == {} and branch["from"] == str(tmp_path / "trunk")
    assert [r["step"] for r in log if r["event"] == "train"] == [1, 2, 3, 4]  # not the trunk's step 3 (dropped)

    treated = _spec(steps=4, eval_every=2, reduce_prob=0.5)
    treated.train.eval_size = treated.train.test_size = 4
    train(treated, tmp_path / "reduced", progress=False, branch_from=tmp_path / "trunk")
    log = [json.loads(line) for line in (tmp_path / "reduced" / "train_log.jsonl").read_text().splitlines()]
    assert next(r for r in log if r["event"] == "branch")["changed"] == {"reduce_prob": [0.0, 0.5]}
    c = ToyVLM.from_pretrained(tmp_path / "reduced").state_dict()
    assert not all(torch.equal(a[k], c[k]) for k in a)  # the treatment changed the steps after the branch
    assert train(treated, tmp_path / "reduced", progress=False, resume=True)["n"] == 4  # and the branch resumes

    with pytest.raises(InputError, match="train.lr"):  # the optimiser's path: not the same run
        train(_spec(steps=4, eval_every=2, lr=1e-2), tmp_path / "lr", progress=False, branch_from=tmp_path / "trunk")
    with pytest.raises(InputError, match="already holds"):
        train(spec, tmp_path / "same", progress=False, branch_from=tmp_path / "trunk")
    with pytest.raises(InputError, match="no trainer_state"):
        train(spec, tmp_path / "new", progress=False, branch_from=tmp_path / "nowhere")
    with pytest.raises(InputError, match="cannot also resume"):
        train(spec, tmp_path / "same", progress=False, branch_from=tmp_path / "trunk", resume=True)


def test_train_writes_a_loadable_run(run_dir, spec):
    names = {p.name for p in run_dir.iterdir()}
    assert {"model.safetensors", "config.json", "train_config.yaml", "train_log.jsonl", "eval.json"} <= names
    log = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    assert log[0]["event"] == "start" and log[0]["command"] == "pytest"
    steps = [r["step"] for r in log if r["event"] == "train"]
    assert steps == [1, 2, 3] and all(np.isfinite(r["answer_loss"]) for r in log if r["event"] == "train")
    assert [r["step"] for r in log if r["event"] == "eval" and r.get("split") == "val"] == [2, 3]
    final = json.loads((run_dir / "eval.json").read_text())
    assert final["split"] == "test" and final["n"] == 8 and 0 <= final["accuracy"] <= 1
    model, data = load_toy(run_dir)
    assert data == spec.data and isinstance(model, ToyVLM)


def test_train_is_seeded(tmp_path, run_dir):
    spec = _spec()
    spec.train.eval_every, spec.train.eval_size, spec.train.test_size = 2, 8, 8
    train(spec, tmp_path, progress=False, command="pytest")
    assert (tmp_path / "model.safetensors").read_bytes() == (run_dir / "model.safetensors").read_bytes()


def test_bad_training_configs():
    with pytest.raises(InputError, match="unknown sections"):
        spec_from_dict({"optim": {}})
    with pytest.raises(InputError, match="unknown settings"):
        spec_from_dict({"train": {"stepz": 3}})
    with pytest.raises(InputError, match="follow_ups"):
        spec_from_dict({"train": {"follow_ups": -1}})
    with pytest.raises(InputError, match="evs_max_rate"):
        spec_from_dict({"train": {"evs_max_rate": 1.0}})
    with pytest.raises(InputError, match="not a train-toy checkpoint"):
        load_toy("/nonexistent")


def test_reduce_reads_the_visual_mask_from_the_model(run_dir):
    model, data = load_toy(run_dir)
    batch = ToyDataset(data, "test", 4).batch(range(4))
    args = dict(pixel_values=batch["pixels"], attention_mask=batch["attention_mask"])
    with torch.no_grad():
        with reduce(model, "progressive") as implicit:
            a = model(batch["input_ids"], **args).logits
        with reduce(model, "progressive", visual_mask=batch["visual_mask"]) as explicit:
            b = model(batch["input_ids"], **args).logits
        assert torch.equal(a, b)
        assert all(torch.equal(implicit.kept_positions[p], explicit.kept_positions[p]) for p in explicit.kept_positions)
        embeds = model.embed(batch["input_ids"], batch["pixels"])
        with reduce(model, "progressive"), pytest.raises(InputError, match="no input_ids"):
            model(inputs_embeds=embeds, attention_mask=batch["attention_mask"])


def test_answer_sheet_is_multiple_choice(spec):
    ds = ToyDataset(spec.data, "test", 4)
    sheet = AnswerSheet(ds.vocab)
    batch = ds.batch(range(4))
    logits = torch.zeros(4, ds.vocab.size)
    logits[:, ds.vocab.pad_id] = 10.0  # a non-candidate word is never chosen
    for i, q in enumerate(batch["qtype"]):
        logits[i, sheet.candidates[q][batch["answer_index"][i]]] = 1.0
    assert torch.equal(sheet.choose(logits, batch["qtype"]), batch["answer_index"])


def test_evaluation_helpers(run_dir):
    model, data = load_toy(run_dir)
    ds = ToyDataset(data, "test", 8)
    batch = ds.batch(range(8))
    with torch.no_grad():
        full = model(batch["input_ids"], pixel_values=batch["pixels"], attention_mask=batch["attention_mask"])
        assert torch.equal(answer_logits(model, batch), full.logits[:, -1].float())
        assert answer_logits(model, batch, evs_rate=0.5).shape == (8, ds.vocab.size)
    result = evaluate(model, ds, batch_size=3)
    assert result["n"] == 8 and set(result["per_type"]) <= set(data.qtypes)
    table = accuracy_table([True, False, True], ["colour", "count", "count"])
    assert table == {
        "accuracy": 2 / 3,
        "n": 3,
        "per_type": {"colour": {"accuracy": 1.0, "n": 1}, "count": {"accuracy": 0.5, "n": 2}},
    }
    assert accuracy_line("val", table) == "val: accuracy 0.667 on 3 (colour 1.000 count 0.500)"
    assert (
        accuracy_line("val", {"variants": {"static": table, "clutter": table}})
        .splitlines()[1]
        .startswith("val clutter: accuracy 0.667")
    )


def test_demo_methods_state_their_schedule_and_budget_split(run_dir):
    import hybridreduce.toy.demo as demo

    assert all(f"    {m} " in demo.__doc__ for m in DEMO_METHODS)  # the module docstring's table lists each
    for keep in (0.5, 0.25, 0.125, 0.3):
        for m in DEMO_METHODS.values():
            evs_keep, lm_keep = m.split_budget(keep)
            assert evs_keep * lm_keep == pytest.approx(keep) and (evs_keep < 1) == m.evs and (lm_keep < 1) == m.in_lm
        assert DEMO_METHODS["evs+progressive"].split_budget(keep) == (keep**0.5, keep**0.5)
        assert DEMO_METHODS["evs"].split_budget(keep) == (keep, 1.0)
        assert DEMO_METHODS["fastv"].split_budget(keep) == (1.0, keep)
    merged = ("+merge", "+merge-nosize")
    assert [m for m, r in DEMO_METHODS.items() if r.evs] == [
        "evs",
        "evs+progressive",
        *(f"evs+progressive{t}" for t in merged),
    ]
    assert [m for m, r in DEMO_METHODS.items() if r.calibrated] == [
        "progressive-calibrated",
        *(f"progressive-calibrated{t}" for t in merged),
    ]
    for name, record in DEMO_METHODS.items():  # each merging method is its base method with merging settings
        if "+merge" in name:
            base = DEMO_METHODS[name.split("+merge")[0]]
            aware = not name.endswith("-nosize")
            assert record.settings == {**base.settings, "combine": "merge", "size_aware": aware}
            assert (record.preset, record.calibrated, record.evs, record.budget_split) == (
                base.preset,
                base.calibrated,
                base.evs,
                base.budget_split,
            )
    assert DEMO_METHODS["progressive-exact"].scorer == "exact" and DEMO_METHODS["progressive"].scorer is None
    model, _ = load_toy(run_dir)
    attn = DEMO_METHODS["progressive-attn-only"].schedule(0.25, model, budget="final")
    assert attn == Schedule.preset("progressive", keep=0.25, budget="final", score="attention", first_prune=3)
    assert DEMO_METHODS["evs+progressive"].schedule(0.5, model) == Schedule.preset("progressive", keep=0.5)
    assert demo_method("full") is demo.FULL and not demo.FULL.in_lm and not demo.FULL.evs
    own = demo_method("late", Schedule.preset("fastv"))
    assert own.in_lm and own.scorer is None and demo_method(own) is own
    with pytest.raises(InputError, match="has no in-LM schedule"):
        demo_method("late")
    with pytest.raises(InputError, match="has no in-LM schedule"):
        DEMO_METHODS["evs"].schedule(0.25, model)
    with pytest.raises(InputError, match="calibrate_schedules"):
        DEMO_METHODS["progressive-calibrated"].schedule(0.25, model)
    with pytest.raises(AssertionError):
        DemoMethod("bad", preset="progressive", evs=True, budget_split="lm")
    with pytest.raises(InputError, match="unknown demo methods"):
        run_demo(run_dir, size=2, methods=("evs-only",), progress=False)


#: Methods whose first cut comes too late in the 12-block tiny model to carry an average keep of 0.25.
LATE_CUTS = ("fastv", "pyramiddrop", "progressive-attn-only", "progressive-depth")


def test_demo_runs_every_method(run_dir, tmp_path):
    summary = run_demo(run_dir, size=8, keeps=(0.5, 0.25), batch_size=4, progress=False)
    rows = summary["results"]
    assert rows[0]["method"] == "full" and rows[0]["speedup"] == 1.0 and rows[0]["relevant_kept"] == 1.0
    assert [(r["method"], r["keep"]) for r in rows[1:]] == [(m, k) for k in (0.5, 0.25) for m in DEMO_METHODS]
    for r in rows[1:]:
        assert 0 <= r["accuracy"] <= 1 and r["speedup"] > 0 and 0 <= r["relevant_kept"] <= 1
        if r["note"]:  # a layout that cannot meet the average budget runs at the final budget, and says so
            assert r["method"] in LATE_CUTS and r["keep"] == 0.25, r
            assert r["achieved_keep"] > r["keep"] + 0.05
        else:
            assert abs(r["achieved_keep"] - r["keep"]) < 0.05, r  # every other method meets the average budget
    assert {r["method"] for r in rows if r["note"]} == set(LATE_CUTS)
    assert {r["variant"] for r in rows} == {"static"} and set(summary["variants"]) == {"static"}
    table = format_table(summary)
    assert "evs+progressive" in table and "final" in table
    paths = write_outputs(summary, tmp_path)
    for p in paths:
        assert p.stat().st_size > 1000, p
    assert json.loads((tmp_path / "summary.json").read_text())["results"][0]["method"] == "full"


def test_demo_on_val_answers_val_questions(run_dir, monkeypatch):
    """``split="val"`` (where settings are chosen) builds its questions from the val split, and says so."""
    import hybridreduce.toy.demo as demo_module

    asked = []

    class Recording(ToyDataset):
        def __init__(self, cfg, split, *args, **kwargs):
            asked.append(split)
            super().__init__(cfg, split, *args, **kwargs)

    monkeypatch.setattr(demo_module, "ToyDataset", Recording)
    for split in ("val", "test"):
        asked.clear()
        summary = run_demo(run_dir, size=4, keeps=(0.5,), methods=("random",), progress=False, split=split)
        assert summary["split"] == split and asked == [split], asked
    with pytest.raises(InputError, match="'val' .* or 'test'"):
        run_demo(run_dir, size=2, keeps=(0.5,), methods=("random",), progress=False, split="train")


def test_answers_correct_are_the_outcomes_behind_the_accuracy(run_dir):
    model, data = load_toy(run_dir)
    ds = ToyDataset(data, "test", 8)
    sheet = AnswerSheet(ds.vocab)
    batches = [ds.batch(range(0, 5)), ds.batch(range(5, 8))]
    for method, keep in (("full", 1.0), ("progressive", 0.25), ("progressive-exact", 0.25), ("evs", 0.25)):
        correct = answers_correct(model, batches, method, keep, sheet)
        assert correct.shape == (8,) and correct.dtype == torch.bool
        assert correct.double().mean().item() == evaluate_method(model, batches, method, keep, sheet).accuracy
    # a schedule of one's own: the same outcomes as a plain forward under reduce
    late = Schedule.preset("progressive", keep=0.25, budget="final", first_prune=8)
    batch = ds.batch(range(8))
    with torch.no_grad(), reduce(model, late):
        logits = model(batch["input_ids"], pixel_values=batch["pixels"], attention_mask=batch["attention_mask"]).logits
    expected = sheet.choose(logits[:, -1].float(), batch["qtype"]) == batch["answer_index"]
    assert torch.equal(answers_correct(model, [batch], "progressive", 0.25, sheet, schedule=late), expected)


def test_cli_train_toy_and_demo(tmp_path, capsys):
    cfg = tmp_path / "toy.yaml"
    import yaml

    raw = tiny_toy_raw(**TRAIN, eval_every=1, eval_size=4, test_size=4)
    cfg.write_text(yaml.safe_dump(raw))
    run = tmp_path / "run"
    assert main(["train-toy", "--config", str(cfg), "--out", str(run), "--steps", "1", "--no-progress"]) == 0
    assert "held-out" in capsys.readouterr().out
    warm = ["train-toy", "--config", str(cfg), "--out", str(tmp_path / "warm"), "--steps", "1", "--no-progress"]
    assert main([*warm, "--init-from", str(run)]) == 0
    assert f"init_from: {run}" in (tmp_path / "warm" / "train_config.yaml").read_text()
    assert main([*warm, "--init-from", str(tmp_path / "missing"), "--overwrite"]) == 2
    assert "missing" in capsys.readouterr().err
    before = (run / "model.safetensors").read_bytes()
    assert main(["train-toy", "--config", str(cfg), "--out", str(run), "--steps", "1", "--no-progress"]) == 2
    assert "--resume" in capsys.readouterr().err and (run / "model.safetensors").read_bytes() == before
    assert main([*warm, "--init-from", str(run), "--overwrite"]) == 0
    capsys.readouterr()
    out = tmp_path / "demo"
    code = main(["demo", "--checkpoint", str(run), "--quick", "--size", "4", "--out", str(out), "--no-progress"])
    assert code == 0
    text = capsys.readouterr().out
    assert "progressive" in text and (out / "summary.json").is_file() and (out / "accuracy_vs_keep.png").is_file()
    stale = (out / "summary.json").read_text()
    again = ["demo", "--checkpoint", str(run), "--quick", "--size", "2", "--out", str(out), "--no-progress"]
    assert main(again) == 2  # issue 26: a second demo does not replace the first's files unless told to
    assert "already holds summary.json, results.csv" in capsys.readouterr().err
    assert (out / "summary.json").read_text() == stale
    assert main([*again, "--overwrite"]) == 0
    assert (out / "summary.json").read_text() != stale  # replaced whole, through a staging folder that is gone
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".demo.tmp-")]
    assert main(["train-toy", "--config", str(tmp_path / "missing.yaml"), "--out", str(run)]) == 2


def test_curriculum_trains_on_shorter_videos_first(tmp_path, monkeypatch):
    raw = tiny_toy_raw(**TRAIN)
    raw["data"]["frames"] = 24
    stages = [{"steps": 1, "data": {"frames": 16}}, {"steps": 1, "data": {"frames": 20}}]
    raw["train"].update({"steps": 3, "curriculum": stages, "eval_every": 3, "eval_size": 4, "test_size": 4})
    spec = spec_from_dict(raw)
    seen = []
    import hybridreduce.toy.train as train_module

    real = train_module.training_batch

    def spy(dataset, indices, follow_ups, rng):
        batch = real(dataset, indices, follow_ups, rng)
        seen.append(batch["pixels"].shape[1])
        return batch

    monkeypatch.setattr(train_module, "training_batch", spy)
    train(spec, tmp_path, progress=False)
    assert seen == [16, 20, 24]
    with pytest.raises(InputError, match="curriculum"):
        spec_from_dict({"train": {"steps": 4, "curriculum": [{"steps": 4, "data": {"frames": 16}}]}})
    with pytest.raises(InputError, match="curriculum"):
        spec_from_dict({"train": {"curriculum": [[16, 4]]}})


def test_a_curriculum_stage_can_train_on_some_variants_and_question_types():
    from hybridreduce.toy.losses import VariantMix
    from hybridreduce.toy.train import _stages

    raw = tiny_mixed_raw(**TRAIN, steps=4)
    raw["train"]["curriculum"] = [
        {"steps": 1, "data": {"frames": 8, "n_events": [2, 3], "variants": ["clutter"], "qtypes": ["when", "order"]}},
        {"steps": 1, "data": {"move_prob": 0.0}},
    ]
    stages = _stages(spec_from_dict(raw))
    first, both, full = (s for _, s in stages)
    items = [first[i] for i in range(len(first))]
    assert all(x.qtype in ("when", "order") and len(x.video) == 8 for x in items) and len(items) == 4
    assert {x.qtype for x in items} == {"when", "order"}
    assert isinstance(both, VariantMix) and [d.cfg.variant for d in both.datasets] == ["static", "clutter"]
    assert all(d.cfg.move_prob == 0 for d in both.datasets) and all(d.cfg.move_prob > 0 for d in full.datasets)
    for bad in (["foggy"], [], "clutter"):
        raw["train"]["curriculum"][0]["data"]["variants"] = bad
        with pytest.raises(InputError, match="must be a non-empty list of the run's variants"):
            _stages(spec_from_dict(raw))


def test_warm_start_loads_the_previous_run_and_trains_on_new_items(tmp_path, run_dir, monkeypatch):
    import hybridreduce.toy.train as train_module

    spec = _spec(steps=1, eval_every=1, init_from=str(run_dir), data_offset=40)
    spec.train.eval_size = spec.train.test_size = 4
    first = {}
    real_batch, real_warm = train_module.training_batch, train_module.warm_start

    def spy_batch(dataset, indices, follow_ups, rng):
        first.setdefault("indices", [int(i) for i in indices])
        return real_batch(dataset, indices, follow_ups, rng)

    def spy_warm(model, heads, source, layers=None, hint_heads=None):
        real_warm(model, heads, source, layers, hint_heads)
        first["model"] = {k: v.clone() for k, v in model.state_dict().items()}
        first["heads"] = {k: v.clone() for k, v in heads.state_dict().items()}

    monkeypatch.setattr(train_module, "training_batch", spy_batch)
    monkeypatch.setattr(train_module, "warm_start", spy_warm)
    train(spec, tmp_path / "warm", progress=False)
    previous = ToyVLM.from_pretrained(run_dir).state_dict()
    assert all(torch.equal(first["model"][k], previous[k]) for k in previous)  # before the first step
    saved = torch.load(run_dir / "trainer_state.pt", weights_only=False)["position_heads"]
    assert all(torch.equal(first["heads"][k], saved[k]) for k in saved)
    n = spec.train.batch_size
    assert sorted(first["indices"]) == list(range(40, 40 + n))  # one step: exactly the items after the offset
    assert "init_from" in (tmp_path / "warm" / "train_config.yaml").read_text()

    other = tiny_toy_raw(**TRAIN, steps=1, init_from=str(run_dir))
    other["model"]["text"]["intermediate_size"] = 48
    with pytest.raises(InputError, match="differs from this config"):
        train(spec_from_dict(other), tmp_path / "other", progress=False)
    with pytest.raises(InputError, match="not a train-toy output directory"):
        train(_spec(steps=1, init_from=str(tmp_path / "nothing")), tmp_path / "none", progress=False)
    assert not (tmp_path / "other" / "train_config.yaml").exists()  # a run that failed to start leaves no run
    assert not (tmp_path / "none" / "train_config.yaml").exists()  # behind, so the same --out starts it again
    with pytest.raises(InputError, match="data_offset"):
        spec_from_dict({"train": {"data_offset": -1}})


def test_a_warm_restart_may_grow_the_vocabulary(run_dir, tmp_path):
    """Same blocks, more words (a static run continued on static + clutter, whose ``first`` questions add words):
    every parameter of the source is copied, old rows of the vocabulary-sized tables included, and the new rows
    keep their fresh values; a smaller vocabulary is refused."""
    from hybridreduce.toy.checkpointing import warm_start

    source = ToyVLM.from_pretrained(run_dir).state_dict()
    spec = spec_from_dict(tiny_mixed_raw(**TRAIN, init_from=str(run_dir)))
    model = build_model(spec)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    warm_start(model, PositionHeads(model.config), str(run_dir))
    grown = model.state_dict()
    assert set(grown) == set(source)
    resized = [k for k in source if source[k].shape != grown[k].shape]
    assert resized, "the mixed spec's vocabulary should be larger than the static run's"
    for k, old in source.items():
        n = old.shape[0]
        assert torch.equal(grown[k][:n], old), k
        assert torch.equal(grown[k][n:], fresh[k][n:]), k  # new words' rows: untouched
    assert all(grown[k].shape[0] - source[k].shape[0] == len(FIRST_WORDS) + len(ORDER_WORDS) for k in resized)

    with pytest.raises(InputError, match=r"vocabulary \(\d+ words there, \d+ here\)"):
        mixed = tmp_path / "mixed"
        model.save_pretrained(mixed)
        warm_start(build_model(_spec()), None, str(mixed))


def test_depth_upscaling_starts_with_the_source_models_function(run_dir):
    """New blocks start as the identity, so the grown model's logits equal the source's on the source's words;
    a mixed static + clutter spec grows the vocabulary, whose new rows leave the old ones untouched."""
    from hybridreduce.toy.checkpointing import warm_start

    source = ToyVLM.from_pretrained(run_dir).eval()
    kinds = source.config.text_config.layers_block_type
    grown_kinds, layers = [], []
    for j, kind in enumerate(kinds):  # after every Mamba or MLP block, a new one of its kind
        grown_kinds.append(kind)
        layers.append(j)
        if kind != "attention":
            grown_kinds.append(kind)
            layers.append(None)
    raw = tiny_mixed_raw(**TRAIN, init_from=str(run_dir), init_layers=layers)
    raw["model"]["text"]["layers_block_type"] = grown_kinds
    spec = spec_from_dict(raw)
    grown = build_model(spec)
    heads = PositionHeads(grown.config)
    warm_start(grown, heads, str(run_dir), layers)
    grown.eval()
    assert len(grown_kinds) > len(kinds) and grown.config.text_config.vocab_size > source.config.text_config.vocab_size
    batch = ToyDataset(source_cfg := spec.configs[0], "val", 3, vocab=spec.vocab).batch(range(3))
    assert source_cfg.variant == "static"
    with torch.no_grad():
        kw = {"pixel_values": batch["pixels"], "attention_mask": batch["attention_mask"], "use_cache": False}
        a = source(batch["input_ids"], **kw).logits
        b = grown(batch["input_ids"], **kw).logits[..., : a.shape[-1]]
    print(f"grown vs source logits: max |diff| = {(a - b).abs().max():.2e}")
    assert torch.allclose(a, b, atol=1e-5)

    with pytest.raises(InputError, match="init_layers has"):
        warm_start(grown, heads, str(run_dir), layers[:-1])
    bad = list(layers)
    bad[1] = 2  # an MLP block from an attention block
    with pytest.raises(InputError, match=r"init_layers\[1\]"):
        warm_start(grown, heads, str(run_dir), bad)


def test_a_mixed_run_trains_on_both_variants_and_reports_each(tmp_path):
    raw = tiny_mixed_raw(**TRAIN, steps=2, eval_every=2, eval_size=5, test_size=5)
    spec = spec_from_dict(raw)
    final = train(spec, tmp_path / "mix", progress=False)
    assert set(final["variants"]) == {"static", "clutter"}
    assert "first" in final["variants"]["clutter"]["per_type"]
    summary = run_demo(tmp_path / "mix", size=5, keeps=(0.5,), methods=("progressive", "evs"), progress=False)
    assert [(r["variant"], r["method"]) for r in summary["results"]] == [
        (v, m) for v in ("static", "clutter") for m in ("full", "progressive", "evs")
    ]
    assert {v: s["full_accuracy"] for v, s in summary["variants"].items()} == {
        r["variant"]: r["accuracy"] for r in summary["results"] if r["method"] == "full"
    }
    assert "clutter  progressive" in format_table(summary)
    assert all(p.stat().st_size > 1000 for p in write_outputs(summary, tmp_path / "demo") if p.suffix != ".csv")
    with pytest.raises(InputError, match="not trained on the variant"):
        run_demo(tmp_path / "mix", size=5, keeps=(0.5,), variants=("foggy",), progress=False)
    assert spec_from_dict(__import__("yaml").safe_load((tmp_path / "mix" / "train_config.yaml").read_text())) == spec
    with pytest.raises(InputError, match="unknown variants"):
        spec_from_dict({"data": {"variants": ["static", "foggy"]}})


def test_random_training_schedules_always_resolve():
    """Every drawn in-LM schedule is feasible on the depth it was drawn for, with its average keep in range."""
    from hybridreduce.toy.losses import random_training_schedule
    from hybridreduce.toy.train_config import TrainConfig

    cfg = TrainConfig(reduce_prob=1.0, reduce_keep=[0.1, 0.6])
    rng = np.random.default_rng(0)
    methods = set()
    for depth in (3, 12, 24):
        for _ in range(200):
            sched = random_training_schedule(rng, cfg, depth)
            plan = sched.resolve(depth)
            methods.add(sched.method)
            low = max(0.1, 1.1 / depth)  # the first block carries every token
            assert plan.prune_points and low - 1e-6 <= plan.average_keep() <= 0.6 + 1e-6
    assert methods == {"progressive", "random"}


def test_training_under_in_lm_reduction(spec):
    """A batch under in-LM reduction: the query rows are the questions (not the answers), every answer is still
    supervised, and the content and position losses cover only the visual tokens the last block carried."""
    from hybridreduce import Schedule
    from hybridreduce.toy.losses import _question_mask

    model = build_model(spec)
    ds = ToyDataset(spec.data, "train", 4)
    batch = training_batch(ds, range(4), 2, np.random.default_rng(0))
    marker = ds.vocab.answer_marker_id
    q = batch["query_mask"]
    answers = torch.zeros_like(q)
    answers[:, 1:] = batch["input_ids"][:, :-1] == marker
    assert not (q & (answers | batch["visual_mask"])).any() and q.sum(1).min() > 0
    assert (batch["input_ids"][q] == marker).sum() == 4 * 3  # every marker is a query row
    assert torch.equal(q, _question_mask(batch["input_ids"], batch["attention_mask"], batch["visual_mask"], marker))

    heads = PositionHeads(model.config)
    sched = Schedule.preset("progressive", keep=0.3, first_prune=2, stages=2)
    answer, content, position, _ = training_losses(model, batch, heads=heads, schedule=sched)
    full = training_losses(model, batch, heads=heads)
    assert all(torch.isfinite(x) and x > 0 for x in (answer, content, position))
    assert not torch.equal(answer, full[0])  # the reduction changed what the answers saw
    (answer + content + position).backward()
    assert model.language_model.model.layers[0].mixer.in_proj.weight.grad.abs().sum() > 0


def test_a_run_with_in_lm_reduction_and_an_old_run_resumes(tmp_path):
    """reduce_prob trains (and is logged in the config); a run saved before the reduce_* settings existed resumes."""
    import yaml

    spec = _spec(steps=4, eval_every=2, reduce_prob=0.5, evs_prob=0.25)
    spec.train.eval_size = spec.train.test_size = 4
    train(spec, tmp_path / "red", progress=False, max_minutes=0)  # stops at the first evaluation
    saved = yaml.safe_load((tmp_path / "red" / "train_config.yaml").read_text())
    assert saved["train"]["reduce_prob"] == 0.5
    for key in ("reduce_prob", "reduce_keep", "reduce_random"):  # as an earlier version wrote it
        saved["train"].pop(key)
    (tmp_path / "red" / "train_config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    with pytest.raises(InputError, match="differs from the given config"):  # reduce_prob is on: not the same run
        train(spec, tmp_path / "red", progress=False, resume=True)
    old = _spec(steps=4, eval_every=2, evs_prob=0.25)
    old.train.eval_size = old.train.test_size = 4
    assert train(old, tmp_path / "red", progress=False, resume=True)["n"] == 4
    with pytest.raises(InputError, match="reduce_prob"):
        spec_from_dict(tiny_toy_raw(evs_prob=0.6, reduce_prob=0.5))
    with pytest.raises(InputError, match="reduce_keep"):
        spec_from_dict(tiny_toy_raw(reduce_keep=[0.0, 1.0]))


TRAINING_CONFIGS = (
    "toy",
    "toy_continue",
    "toy24",
    "toy24_reduce",
    "toy24_control",
    "toy24_stage3",
    "toy24_stage3_reduce",
    "toy24_stage4",
    "toy24_stage4_control",
)


@pytest.mark.parametrize("name", TRAINING_CONFIGS)
def test_shipped_training_configs_load(name):
    """Every training config in configs/ parses into a valid spec; the 24-block stages agree on the model and, but
    for the question types ``clutter`` asks from stage 3 on (``first`` for ``order``), on the data."""
    from pathlib import Path

    from hybridreduce.toy.train_config import load_spec

    root = Path(__file__).resolve().parents[1] / "configs"
    assert sorted(p.stem for p in root.glob("toy*.yaml")) == sorted(TRAINING_CONFIGS)  # none left untested
    spec = load_spec(root / f"{name}.yaml")
    assert spec.train.steps > 0
    if name.startswith("toy24"):
        stage1 = load_spec(root / "toy24.yaml")
        assert spec.variants == ("static", "clutter") and len(spec.text["layers_block_type"]) == 24
        assert spec.to_dict()["model"] == stage1.to_dict()["model"]
        data, data1 = spec.to_dict()["data"], stage1.to_dict()["data"]
        if name.startswith(("toy24_stage3", "toy24_stage4")):
            assert data1["variants"]["clutter"].pop("qtypes")[-1] == "order" and "first" in spec.configs[1].qtypes
        assert data == data1
        assert sum(k == "attention" for k in spec.text["layers_block_type"]) <= 0.1 * 24


@pytest.mark.parametrize(
    "arms", [("toy24_stage3", "toy24_stage3_reduce"), ("toy24_stage4_control", "toy24_stage4")], ids=str
)
def test_the_arms_of_a_stage_differ_only_in_in_lm_reduction(arms):
    """Stage 3's shipped arm branched off the trunk (train-toy --branch-from), stage 4's two arms start from the same
    weights: each pair's configs may differ in reduce_prob only."""
    from pathlib import Path

    from hybridreduce.toy.train_config import load_spec

    root = Path(__file__).resolve().parents[1] / "configs"
    control, reduced = (load_spec(root / f"{n}.yaml").to_dict() for n in arms)
    assert (control["train"].pop("reduce_prob"), reduced["train"].pop("reduce_prob")) == (0.0, 0.4)
    assert control == reduced


def test_the_shipped_checkpoint_carries_every_stage_record():
    """The shipped checkpoint's folder holds its config, log and test evaluation and those of every stage before
    it and of the ablation; the last stage's settings are configs/toy24_stage4.yaml's, and each stage starts from
    the one before."""
    from pathlib import Path

    from hybridreduce.toy.checkpointing import as_saved_by
    from hybridreduce.toy.demo import CHECKPOINT
    from hybridreduce.toy.train_config import load_spec

    root = Path(__file__).resolve().parents[1]
    stages = {"stage1_": "toy24", "stage2_": "toy24_control", "stage3_": "toy24_stage3", "": "toy24_stage4",
              "ablation_": "toy24_stage4_control"}  # fmt: skip
    for prefix, config in stages.items():
        saved = yaml.safe_load((CHECKPOINT / f"{prefix}train_config.yaml").read_text())
        # stage 1 ran when the 12-block model was the shipped checkpoint
        if saved["train"]["init_from"] == "hybridreduce/toy/checkpoint":
            saved["train"]["init_from"] = "hybridreduce/toy/checkpoint12"
        current = yaml.safe_load(yaml.safe_dump(load_spec(root / "configs" / f"{config}.yaml").to_dict()))
        assert saved == as_saved_by(saved, current), config  # settings added since, at their defaults, aside
        log = [json.loads(line) for line in (CHECKPOINT / f"{prefix}train_log.jsonl").read_text().splitlines()]
        assert log[0]["event"] == "start" and (log[-1]["event"], log[-1]["split"]) == ("eval", "test"), config
        assert max(e["step"] for e in log if e["event"] == "train") == saved["train"]["steps"], config
        result = json.loads((CHECKPOINT / f"{prefix}eval.json").read_text())
        assert result == {k: v for k, v in log[-1].items() if k != "event"}, config  # the log's test evaluation
        assert result["steps"] == saved["train"]["steps"] and set(result["variants"]) == {"static", "clutter"}
        assert min(v["n"] for v in result["variants"].values()) >= 1000, config
    inits = [load_spec(root / "configs" / f"{c}.yaml").train.init_from for c in stages.values()]
    assert inits == ["hybridreduce/toy/checkpoint12", *(f"hybridreduce/toy/partial/{c}" for c in
                     ("toy24_stage1", "toy24_control", "toy24_stage3", "toy24_stage3"))]  # fmt: skip


# --- the order hint (train.order_hint_weight) ------------------------------------------------------------------
def _clutter_spec(**train):
    """The tiny static + clutter run, its clutter asking ``order`` (as in stages 1-2), not the preset's ``first``."""
    raw = tiny_mixed_raw(**(TRAIN | train))
    raw["data"]["variants"]["clutter"]["qtypes"] = ["colour", "when", "where", "count", "order"]
    return spec_from_dict(raw)


def test_order_hints_are_the_named_shapes_first_frames():
    """Every order question's hint is (first frame of the shape named first, of the shape named second), so its
    answer is "yes" exactly when the first is smaller; every other question's hint is IGNORE."""
    from hybridreduce.toy.losses import IGNORE, VariantMix

    spec = _clutter_spec()
    mix = VariantMix([ToyDataset(c, "train", 16, vocab=spec.vocab) for c in spec.configs])
    batch = training_batch(mix, range(32), follow_ups=6, rng=np.random.default_rng(1))
    yes, no = spec.vocab.token_id("yes"), spec.vocab.token_id("no")
    hints, targets = batch["hints"], batch["targets"]
    assert hints.shape == (*targets.shape, 2)
    order = (targets == yes) | (targets == no)
    assert order.sum() >= 8, "too few order questions to test"
    assert ((hints[..., 0] != IGNORE) == order).all() and ((hints[..., 1] != IGNORE) == order).all()
    assert torch.equal(targets[order] == yes, hints[order][:, 0] < hints[order][:, 1])
    frames = spec.configs[1].frames
    assert hints[order].min() >= 0 and hints[order].max() < frames


@pytest.mark.parametrize("at", ["answer", "words"])
def test_order_hint_loss_matches_a_float64_reference(at):
    from hybridreduce.toy.losses import IGNORE, OrderHintHeads

    spec = _clutter_spec()
    model = build_model(spec)
    heads = OrderHintHeads(model.config, at).double()
    assert heads.offsets == ((0, 0) if at == "answer" else (-4, -1))  # did {colour} appear before {later} <answer>
    hidden = torch.randn(2, 12, model.config.text_config.hidden_size, dtype=torch.float64, requires_grad=True)
    markers = (torch.tensor([0, 0, 1, 1, 1]), torch.tensor([5, 11, 4, 8, 11]))
    hints = torch.tensor([[3, 7], [IGNORE, IGNORE], [0, 11], [IGNORE, IGNORE], [9, 2]])
    asked = [0, 2, 4]

    def nll(head, column):
        offset = heads.offsets[column]
        rows = torch.stack([hidden[markers[0][i], markers[1][i] + offset] for i in asked])
        logp = torch.log_softmax(head(rows), dim=-1)
        return -logp[torch.arange(3), hints[asked, column]].mean()

    reference = nll(heads.first, 0) + nll(heads.second, 1)
    torch.testing.assert_close(heads.loss(hidden, markers, hints), reference, rtol=1e-12, atol=1e-12)
    none = heads.loss(hidden, markers, torch.full((5, 2), IGNORE))
    none.backward()
    assert none.item() == 0 and torch.equal(hidden.grad, torch.zeros_like(hidden))  # no order question: no signal


def test_order_hint_words_are_the_colour_words_of_each_order_question():
    """At the offsets the "words" hint reads, every order question's prompt holds the colour words whose shapes'
    first frames are its hints (the two words name the shapes in that order)."""
    from hybridreduce.toy.losses import OrderHintHeads, VariantMix

    spec = _clutter_spec()
    mix = VariantMix([ToyDataset(c, "train", 16, vocab=spec.vocab) for c in spec.configs])
    batch = training_batch(mix, range(32), follow_ups=6, rng=np.random.default_rng(1))
    heads = OrderHintHeads(build_model(spec).config, "words")
    ids, hints = batch["input_ids"], batch["hints"].reshape(-1, 2)
    rows, positions = (ids == spec.vocab.answer_marker_id).nonzero(as_tuple=True)
    colours = set(spec.configs[1].colours)
    checked = 0
    for n in (hints[:, 0] >= 0).nonzero().flatten().tolist():
        sample = mix.entry(rows[n].item())[0][mix.entry(rows[n].item())[1]]
        starts = {e.colour: e.start for e in sample.events}
        words = [spec.vocab.decode([ids[rows[n], positions[n] + o].item()])[0] for o in heads.offsets]
        assert set(words) <= colours and [starts[w] for w in words] == hints[n].tolist()
        checked += 1
    assert checked >= 8


def test_a_run_with_the_order_hint_trains_and_resumes_exactly(tmp_path):
    """order_hint_weight trains heads that are saved with the optimiser state and restored on --resume (resumed and
    uninterrupted runs give the same weights), logs its loss, and is refused where no variant asks order."""
    spec = _clutter_spec(steps=4, eval_every=2, order_hint_weight=1.0, follow_ups=4, eval_size=4, test_size=4)
    whole = train(spec, tmp_path / "whole", progress=False)
    assert train(spec, tmp_path / "parts", progress=False, max_minutes=0) is None
    state = torch.load(tmp_path / "parts" / "trainer_state.pt", weights_only=False)
    assert set(state["order_hint_heads"]) == {"first.weight", "first.bias", "second.weight", "second.bias"}
    resumed = train(spec, tmp_path / "parts", progress=False, resume=True)
    assert resumed["accuracy"] == whole["accuracy"]
    a = ToyVLM.from_pretrained(tmp_path / "whole").state_dict()
    b = ToyVLM.from_pretrained(tmp_path / "parts").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(line) for line in (tmp_path / "whole" / "train_log.jsonl").read_text().splitlines()]
    hint = [r["order_hint_loss"] for r in log if r["event"] == "train"]
    assert len(hint) == 4 and all(np.isfinite(hint)) and max(hint) > 0
    with pytest.raises(InputError, match="no variant asks them"):
        train(_spec(steps=2, order_hint_weight=1.0), tmp_path / "static", progress=False)
    with pytest.raises(InputError, match="order_hint_weight must be a number >= 0"):
        spec_from_dict(tiny_toy_raw(order_hint_weight=-1.0))


@pytest.mark.parametrize("name", ["hint_answer", "hint_words", "curriculum"])
def test_the_order_pilot_configs_load(name):
    """The recorded pilots of experiments/order_question parse into specs whose data and model are stage 1's."""
    from pathlib import Path

    from hybridreduce.toy.train_config import load_spec

    root = Path(__file__).resolve().parents[1]
    spec = load_spec(root / "experiments" / "order_question" / f"{name}.yaml")
    stage1 = load_spec(root / "configs" / "toy24.yaml")
    assert spec.train.order_hint_weight == 1.0 and spec.train.reduce_prob == 0
    assert (spec.to_dict()["data"], spec.to_dict()["model"]) == (stage1.to_dict()["data"], stage1.to_dict()["model"])


FIRST_QUESTION_RUNS = ("curriculum8", "curriculum_stage", "stage3_full_length/reduce", "stage3_full_length/control")


@pytest.mark.parametrize("name", FIRST_QUESTION_RUNS)
def test_the_first_question_run_configs_load(name):
    """The recorded runs of experiments/first_question parse into specs of stage 1's model whose clutter asks first."""
    from pathlib import Path

    from hybridreduce.toy.train_config import load_spec

    root = Path(__file__).resolve().parents[1]
    folder = root / "experiments" / "first_question"
    assert sorted(str(p.relative_to(folder))[:-5] for p in folder.rglob("*.yaml") if p.name != "train_config.yaml") == (
        sorted(FIRST_QUESTION_RUNS)
    )
    spec = load_spec(folder / f"{name}.yaml")
    assert spec.to_dict()["model"] == load_spec(root / "configs" / "toy24.yaml").to_dict()["model"]
    assert "first" in spec.configs[spec.variants.index("clutter")].qtypes


def test_demo_methods_are_checked_before_any_question_on_a_model_whose_attention_comes_late(monkeypatch):
    """On a model whose first attention block is block 4 (the 24-block pattern), FastV and attention-only progressive
    cut right after it; a method that cannot run is refused, naming it, before any forward."""
    from hybridreduce.toy import demo as demo_module
    from hybridreduce.toy.demo import DEMO_METHODS, KEEPS, DemoMethod, check_methods, feasible_schedule

    raw = tiny_toy_raw(**TRAIN)
    toy24 = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "toy24.yaml").read_text())
    raw["model"]["text"]["layers_block_type"] = toy24["model"]["text"]["layers_block_type"]  # attention at 4 and 13
    model = build_model(spec_from_dict(raw))
    check_methods(model, tuple(DEMO_METHODS), KEEPS)
    assert feasible_schedule("fastv", 0.25, model)[0].first_prune == 5
    assert feasible_schedule("progressive-attn-only", 0.25, model)[0].first_prune == 5
    with pytest.raises(InputError, match="demo method 'fastv-k2' at keep 0.5 cannot run on this model: the cut before"):
        check_methods(model, (DemoMethod("fastv-k2", preset="fastv"),), (0.5,))

    def forward(*args, **kwargs):
        raise AssertionError("a method that cannot run must be refused before any question is asked")

    monkeypatch.setattr(
        demo_module, "DEMO_METHODS", {**DEMO_METHODS, "fastv-k2": DemoMethod("fastv-k2", preset="fastv")}
    )
    monkeypatch.setattr(demo_module, "evaluate_method", forward)
    monkeypatch.setattr(demo_module, "load_toy_spec", lambda path: (model, spec_from_dict(raw)))
    with pytest.raises(InputError, match="fastv-k2"):
        demo_module.run_demo("unused", size=4, keeps=(0.5,), methods=("progressive", "fastv-k2"), progress=False)


def test_a_diverging_learning_rate_is_one_line_not_a_traceback(tmp_path, capsys):
    """train-toy with a learning rate that blows the weights up: the non-finite loss is refused as an InputError
    (exit 2, one line naming train.lr), not a RuntimeError traceback."""
    import yaml

    cfg = tmp_path / "toy.yaml"
    cfg.write_text(yaml.safe_dump(tiny_toy_raw(**{**TRAIN, "steps": 4, "lr": 1e30, "warmup": 1, "grad_clip": 0.0})))
    assert main(["train-toy", "--config", str(cfg), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train.lr" in err and "Traceback" not in err
