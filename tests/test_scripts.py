"""The repository's scripts on tiny inputs: ranking_before_llm.py (the demo claim's diagnostic), answer_confusion.py,
order_probe.py, step_sizes.py, paper_claims.py (the papers' claims, measured on a toy checkpoint) and
calibration_proxy.py (calibrate's objective against accuracy)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hybridreduce.errors import InputError
from hybridreduce.toy.train import train
from hybridreduce.toy.train_config import spec_from_dict

from .conftest import tiny_mixed_raw, tiny_toy_spec

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import answer_confusion  # noqa: E402
import calibration_proxy  # noqa: E402
import order_probe  # noqa: E402
import paper_claims  # noqa: E402
import step_sizes  # noqa: E402
from ranking_before_llm import _evs_mask, top_share  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def test_top_share_keeps_the_highest_scores_ties_to_the_earlier_token():
    scores = torch.tensor([[0.1, 0.5, 0.5, 0.2], [4.0, 3.0, 2.0, 1.0]])
    assert top_share(scores, 0.5).tolist() == [[False, True, True, False], [True, True, False, False]]
    assert top_share(scores, 0.25).tolist() == [[False, True, False, False], [True, False, False, False]]


def test_evs_mask_maps_kept_prompt_positions_to_visual_indices():
    vm = torch.tensor([[False, True, True, True, False], [True, True, False, True, False]])
    kept_index = torch.tensor([[0, 2, 3, 4], [0, 1, 2, 4]])  # prompt positions each sample kept
    evs = type("R", (), {"kept_index": kept_index, "visual_mask": vm.gather(1, kept_index)})
    assert _evs_mask(vm, evs).tolist() == [[False, True, True], [True, True, False]]


def test_script_reports_every_ranking():
    command = [sys.executable, str(ROOT / "scripts" / "ranking_before_llm.py"), "--size", "64", "--blocks", "0", "3"]
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    names = [line.split("  ")[0].strip() for line in lines[2:]]
    assert names == ["full", "block 0 (ssm)", "block 3 (ssm)", "evs", "random"]
    assert "100.0%" in lines[2].split()[3]  # full tokens keep every relevant token


# paper_claims.py -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """A train-toy run directory of the tiny toy model (static variant), trained for a few steps."""
    out = tmp_path_factory.mktemp("toy_run")
    train(tiny_toy_spec(eval_every=3, eval_size=4, test_size=4), out, progress=False, command="pytest")
    return out


def test_late_schedule_cuts_only_in_the_last_third():
    for blocks, first in ((12, 8), (24, 16), (11, 8), (10, 7)):
        plan = paper_claims.late_schedule(0.125, blocks).resolve(blocks)
        assert plan.prune_points[0] == first and 3 * first >= 2 * blocks
        assert plan.ratios[-1] == pytest.approx(0.125)  # a final keep


def test_verdict_rules():
    assert [paper_claims.tally(p) for p in ([True, True], [False, None], [True, False], [None])] == [
        "holds",
        "fails",
        "mixed",
        "undetermined",
    ]
    diff = {"mean": 0.05, "sem": 0.02, "n": 100}
    assert paper_claims.side(diff) == 1 and paper_claims.side(diff | {"mean": -0.05}) == -1
    assert paper_claims.side(diff | {"sem": 0.03}) == 0  # within Z = 2 standard errors


def test_paper_claims_on_a_tiny_checkpoint(toy_run, tmp_path):
    out = tmp_path / "claims"
    args = ["--checkpoint", str(toy_run), "--size", "16", "--batch-size", "8", "--out", str(out), "--no-progress"]
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "paper_claims.py"), *args],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((out / "claims.json").read_text())
    command = "python scripts/paper_claims.py " + " ".join(args)
    assert result["command"] == command and result["variants"] == ["static"] and result["size"] == 16
    assert [(r["variant"], r["id"]) for r in result["claims"]] == [("static", c) for c in "abcde"]
    table = (out / "claims.md").read_text().splitlines()
    rows = [line for line in table if line.startswith("| static |")]
    assert len(rows) == 5
    criteria = json.loads((out / "criteria.json").read_text())  # written before the first forward
    assert [c["criterion"] for c in criteria["claims"]] == [r["criterion"] for r in result["claims"]]
    for claim, row in zip(result["claims"], rows, strict=True):
        assert claim["criterion"].startswith("Holds if") and claim["verdict"] in ("holds", "fails", "mixed")
        assert claim["numbers"] and any(ch.isdigit() for ch in claim["summary"]) and claim["command"] == command
        for text in (claim["criterion"], claim["summary"], f"**{claim['verdict']}**", f"`{command}`"):
            assert text in row
    numbers = {c["id"]: c["numbers"] for c in result["claims"]}
    assert set(numbers["a"]["decay_free"]["kinds"]) == {"attn", "ssm"}
    assert numbers["b"]["early_blocks"] == [0, 2, 3] and numbers["b"]["late_blocks"] == [8, 10]
    assert 0 <= numbers["b"]["survival"]["mean"] <= 1 and -1 <= numbers["b"]["kendall"]["mean"] <= 1
    assert [b["block"] for b in numbers["c"]["blocks"]] == [0, 3, 5, 8, 10]
    assert [r["prune_points"] for r in numbers["d"]["late"]] == [[8, 9, 10]] * 2
    assert numbers["e"]["block"] == 8 and len(numbers["e"]["probes"]) == 4
    # the per-question outcomes behind the accuracies, and the analysis run directory, are kept
    accuracy = json.loads((out / "static" / "accuracy.json").read_text())
    assert set(accuracy["runs"]) == {"full", "progressive", "progressive-exact", "late@0.25", "late@0.125"}
    assert all(len(r["correct"]) == 16 for r in accuracy["runs"].values())
    assert (out / "static" / "analysis" / "metrics.json").is_file() and (out / "static" / "retention.json").is_file()
    assert result["combine"] == accuracy["combine"] == "drop"


def test_paper_claims_measures_the_claims_asked_for_with_merging(toy_run, tmp_path, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("(d) needs neither the analysis pass nor the retention probe")

    monkeypatch.setattr(paper_claims, "collect", forbidden)
    monkeypatch.setattr(paper_claims, "retention_probe", forbidden)
    out = tmp_path / "claims"
    argv = ["--checkpoint", str(toy_run), "--size", "8", "--batch-size", "8", "--out", str(out), "--no-progress"]
    assert paper_claims.main([*argv, "--claims", "d", "--combine", "merge"]) == 0
    result = json.loads((out / "claims.json").read_text())
    assert [(r["variant"], r["id"]) for r in result["claims"]] == [("static", "d")] and result["combine"] == "merge"
    assert json.loads((out / "criteria.json").read_text())["combine"] == "merge"
    accuracy = json.loads((out / "static" / "accuracy.json").read_text())
    assert set(accuracy["runs"]) == {"full", "late@0.25", "late@0.125"}
    assert [accuracy["runs"][f"late@{k}"]["schedule"]["combine"] for k in ("0.25", "0.125")] == ["merge", "merge"]
    assert "cuts merge the tokens" in (out / "claims.md").read_text()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--size", "8"], "--size must be at least 12"),
        (["--claims", "d", "d"], "names a claim twice"),
        (["--claims", "f"], "invalid choice"),
        (["--combine", "mix"], "invalid choice"),
        (["--size", "many"], "invalid int value"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--split", "dev"], "invalid choice"),
        (["--variant", "noisy"], "invalid choice"),
        (["--variant", "clutter"], "was not trained on the variant(s) ['clutter']"),
        (["--checkpoint", "/nonexistent"], "is not a train-toy output directory"),
        (["--out", "{file}"], "is not a directory"),
        (["--out", "{full}"], "is not empty; pass --overwrite"),
    ],
)
def test_paper_claims_bad_arguments(argv, message, toy_run, tmp_path, capsys, monkeypatch):
    def forward(*args, **kwargs):
        raise AssertionError("a bad argument must fail before any model is loaded")

    monkeypatch.setattr(paper_claims, "load_toy_spec", forward)
    monkeypatch.setattr(paper_claims, "collect", forward)
    (tmp_path / "file").write_text("")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "claims.json").write_text("{}")
    argv = [a.format(file=tmp_path / "file", full=tmp_path / "full") for a in argv]
    if "--checkpoint" not in argv:
        argv += ["--checkpoint", str(toy_run)]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    try:
        code = paper_claims.main(argv)
    except SystemExit as exc:  # argparse's own checks
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.strip().count("\n") == 0, err
    assert not (tmp_path / "out").exists()


def test_spearman_uses_average_ranks():
    assert calibration_proxy.average_ranks([3, 1, 2, 2]).tolist() == [4.0, 1.0, 2.5, 2.5]
    assert calibration_proxy.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert calibration_proxy.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert calibration_proxy.spearman([1, 1, 1], [1, 2, 3]) != calibration_proxy.spearman([1, 1, 1], [1, 2, 3])  # NaN


def test_calibration_proxy_on_a_tiny_checkpoint(toy_run, tmp_path, capsys):
    out = tmp_path / "proxy"
    args = ["--checkpoint", str(toy_run), "--keep", "0.5", "--prompts", "4", "--size", "8", "--out", str(out)]
    assert calibration_proxy.main(args) == 0
    result = json.loads((out / "proxy.json").read_text())
    rows = result["candidates"]
    assert len(rows) > 1 and all(0 <= r["accuracy"] <= 1 for r in rows)
    assert result["chosen_by_objective"]["objective"] == max(r["objective"] for r in rows)
    best = result["chosen_by_reference_objective"]
    assert (
        best["reference_objective"] == max(r["reference_objective"] for r in rows)
        and 0 < best["reference_objective"] <= 1
    )
    rho = calibration_proxy.spearman([r["reference_objective"] for r in rows], [r["accuracy"] for r in rows])
    assert result["spearman_reference_objective_accuracy"] == pytest.approx(rho, nan_ok=True)
    assert (out / "proxy.png").stat().st_size > 1000 and "Spearman rho" in capsys.readouterr().out
    assert calibration_proxy.main(args) == 2  # a non-empty --out is refused
    assert "--overwrite" in capsys.readouterr().err
    assert calibration_proxy.main([*args[:-1], str(tmp_path / "p2"), "--keep", "1"]) == 2


# answer_confusion.py ---------------------------------------------------------------------------------------------
def test_confusion_counts_answers_and_order_gaps():
    records = [
        {"qtype": "order", "true": "yes", "given": "no", "gap": 5},
        {"qtype": "order", "true": "no", "given": "no", "gap": 6},
        {"qtype": "order", "true": "yes", "given": "yes", "gap": 20},
        {"qtype": "count", "true": "2", "given": "3"},
    ]
    table = answer_confusion.confusion(records, {"order": ["yes", "no"], "count": ["1", "2", "3", "4"]})
    assert table["order"]["n"] == 3 and table["order"]["accuracy"] == pytest.approx(2 / 3)
    assert table["order"]["given"] == {"yes": 1, "no": 2} and table["order"]["true"] == {"yes": 2, "no": 1}
    assert table["order"]["matrix"] == {"yes": {"yes": 1, "no": 1}, "no": {"yes": 0, "no": 1}}
    assert table["order"]["by_gap"] == {"4-7": {"n": 2, "accuracy": 0.5}, "16-23": {"n": 1, "accuracy": 1.0}}
    assert (
        table["count"]["accuracy"] == 0 and table["count"]["matrix"]["2"]["3"] == 1 and "by_gap" not in table["count"]
    )


def test_confusion_of_first_questions_counts_named_colours():
    records = [
        {"qtype": "first", "true": "red", "given": "red", "gap": 3, "named": ["red", "blue"]},
        {"qtype": "first", "true": "red", "given": "blue", "gap": 9, "named": ["blue", "red"]},
        {"qtype": "first", "true": "blue", "given": "green", "gap": 9, "named": ["red", "blue"]},
    ]
    colours = ["red", "blue", "green"]
    table = answer_confusion.confusion(records, {"first": colours})["first"]
    assert table["accuracy"] == pytest.approx(1 / 3) and table["given"] == {"red": 1, "blue": 1, "green": 1}
    assert table["named"] == pytest.approx(2 / 3) and table["named_first"] == pytest.approx(2 / 3)
    assert table["by_gap"] == {"0-3": {"n": 1, "accuracy": 1.0}, "8-11": {"n": 2, "accuracy": 0.0}}


def test_answer_confusion_on_a_tiny_checkpoint(toy_run, tmp_path, capsys):
    result = answer_confusion.main(["--checkpoint", str(toy_run), "--size", "8", "--out", str(tmp_path)])
    assert json.loads((tmp_path / "confusion.json").read_text()) == result
    assert result["variant"] == "static" and sum(t["n"] for t in result["types"].values()) == 8
    for entry in result["types"].values():
        assert sum(entry["given"].values()) == sum(entry["true"].values()) == entry["n"]
        diagonal = sum(entry["matrix"][a][a] for a in entry["matrix"])
        assert entry["accuracy"] == pytest.approx(diagonal / entry["n"])
    assert "accuracy" in capsys.readouterr().out
    with pytest.raises(InputError, match="trained on the variants"):
        answer_confusion.main(["--checkpoint", str(toy_run), "--variant", "clutter"])


# order_probe.py --------------------------------------------------------------------------------------------------
def test_ridge_fit_matches_least_squares_and_probe_tells_signal_from_noise():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(90, 6, generator=g, dtype=torch.float64)
    y = x @ torch.arange(1.0, 7.0, dtype=torch.float64) + 3.0
    w, b = order_probe.ridge_fit(x, y, 1e-12)
    design = torch.cat([x, torch.ones(90, 1, dtype=torch.float64)], dim=1)
    reference = torch.linalg.lstsq(design, y.unsqueeze(1)).solution.squeeze(1)  # float64 least squares
    torch.testing.assert_close(torch.cat([w, b.reshape(1)]), reference, rtol=1e-8, atol=1e-8)
    parts = (slice(0, 30), slice(30, 60), slice(60, 90))
    assert order_probe.probe(x, y, parts) > 0.999
    assert order_probe.probe(x, torch.sign(y - 3.0), parts, sign=True) > 0.8  # linearly separable labels
    noise = torch.randn(90, generator=g, dtype=torch.float64)
    assert order_probe.probe(x, noise, parts) < 0.2  # no signal: held-out R² near or below zero
    assert order_probe.probe(x, torch.sign(noise), parts, sign=True) < 0.75  # random labels: near one half
    constant = torch.ones(90, 6, dtype=torch.float64)  # a feature with no variance (the embedding) still fits
    assert order_probe.probe(constant, y, parts) <= 0.0


def test_named_starts_follow_the_question_order():
    events = [type("E", (), {"colour": c, "start": s}) for c, s in (("red", 9), ("blue", 2), ("green", 5))]
    words = ["did", "blue", "appear", "before", "red"]
    sample = type("S", (), {"events": events, "question": words, "qtype": "order", "id": "x"})
    assert order_probe.named_starts(sample) == [2, 9]
    sample.qtype, sample.question = "when", ["when", "did", "the", "green", "shape", "appear"]
    assert order_probe.named_starts(sample) == [5]
    sample.qtype, sample.question = "order", ["did", "blue", "appear", "before", "pink"]
    with pytest.raises(InputError, match="names 1"):
        order_probe.named_starts(sample)


def test_order_probe_on_a_tiny_clutter_checkpoint(tmp_path, capsys):
    raw = tiny_mixed_raw(eval_every=3, eval_size=4, test_size=4)
    run = tmp_path / "run"
    train(spec_from_dict(raw), run, progress=False, command="pytest")
    result = order_probe.main(["--checkpoint", str(run), "--size", "30", "--out", str(tmp_path / "probe")])
    assert json.loads((tmp_path / "probe" / "order_probe.json").read_text()) == result
    assert len(result["blocks"]) == 13 and result["blocks"][0]["kind"] == "embed"
    assert set(result["blocks"][5]) == {"block", "kind", "start_a", "start_b", "order", "when"}
    assert "block  kind" in capsys.readouterr().out
    assert result["pair"] == "first"  # the clutter preset asks `first`
    with pytest.raises(InputError, match="asks no order or first questions"):
        order_probe.main(["--checkpoint", str(run), "--variant", "static"])


# step_sizes.py ---------------------------------------------------------------------------------------------------
def test_step_sizes_on_a_tiny_checkpoint(toy_run, tmp_path, capsys):
    from hybridreduce.adapters import get_adapter
    from hybridreduce.toy.demo import load_toy_spec

    result = step_sizes.main(["--checkpoint", str(toy_run), "--size", "6", "--out", str(tmp_path)])
    assert json.loads((tmp_path / "step_sizes.json").read_text()) == result
    model, _ = load_toy_spec(toy_run)
    assert [r["block"] for r in result["blocks"]] == [s.index for s in get_adapter(model).blocks if s.ssm is not None]
    for r in result["blocks"]:
        assert r["dt_relevant"] > 0 and r["dt_other"] > 0 and r["cb_relevant"] >= 0
        assert r["dt_ratio"] == pytest.approx(r["dt_relevant"] / r["dt_other"])
    assert "Δ relevant" in capsys.readouterr().out
    with pytest.raises(InputError, match="not 'clutter'"):
        step_sizes.main(["--checkpoint", str(toy_run), "--variant", "clutter"])
