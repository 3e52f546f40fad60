"""The analysis runner end to end: collect on a tiny random architecture and on a tiny trained toy VLM,
the files it writes, relevance against a brute-force recomputation, plots, bad inputs, and the CLI."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from analysis import run as run_module
from analysis.config import AnalysisConfig
from analysis.plots import PlotSkipped, plot_run
from analysis.relevance import random_recall, recall_at_k, relevance_report, relevant_mass
from analysis.run import collect
from analysis.rundir import load_run, load_scores, read_metrics
from hybridreduce.cache import ScoreCache
from hybridreduce.cli import main
from hybridreduce.errors import InputError, ScoreError
from hybridreduce.toy import ToyDataset
from hybridreduce.toy.train import train
from hybridreduce.toy.train_config import spec_from_dict

from .conftest import tiny_mixed_raw, tiny_toy_spec

ROOT = Path(__file__).resolve().parents[1]
TINY_YAML = ROOT / "configs" / "analysis" / "tiny_nemotron_h.yaml"
TOY_YAML = ROOT / "configs" / "analysis" / "toy.yaml"

TABLES = ("sparsity.csv", "stability_spearman.csv", "stability_kendall.csv", "stability_iou_0.1.csv")
FIGURES = ("sparsity", "stability", "survival", "schedule")


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny_config(**overrides) -> AnalysisConfig:
    """The shipped tiny-architecture config, shrunk for a test."""
    small = {"samples": 6, "batch_size": 4, "prompt": {"prefix": 3, "visual": 24, "question": 5}}
    return replace(AnalysisConfig.from_yaml(TINY_YAML), **(small | overrides))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_run")
    return out, collect(tiny_config(), out, progress=False)


@pytest.fixture(scope="module")
def toy_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy_ckpt")
    spec = tiny_toy_spec(follow_ups=2, eval_every=3, eval_size=4, test_size=4)
    train(spec, out, progress=False, command="pytest")
    return out


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory, toy_checkpoint):
    out = tmp_path_factory.mktemp("toy_run")
    config = AnalysisConfig(model={"checkpoint": str(toy_checkpoint)}, samples=8, batch_size=5, examples=2)
    return out, collect(config, out, progress=False)


def read_csv(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


# Files --------------------------------------------------------------------------------------------
def test_shipped_configs_parse():
    toy = AnalysisConfig.from_yaml(TOY_YAML)
    assert toy.source == "toy" and toy.samples == 256 and toy.scorers == ("decay_free", "exact")
    tiny = AnalysisConfig.from_yaml(TINY_YAML)
    assert (tiny.source, tiny.target, tiny.name) == ("tiny", "nemotron_h", "tiny_nemotron_h")
    assert AnalysisConfig.from_yaml("toy").samples == 256  # a bare name finds configs/analysis/<name>.yaml
    clutter, toy12 = AnalysisConfig.from_yaml("toy_clutter"), AnalysisConfig.from_yaml("toy12")
    assert clutter.source == "toy" and clutter.variant == "clutter" and toy.variant is None  # the first: static
    assert toy12.model == {"checkpoint": "hybridreduce/toy/checkpoint12"} and toy12.kendall
    assert (ROOT / toy12.model["checkpoint"] / "model.safetensors").is_file()


def test_tiny_run_writes_every_file(tiny_run):
    out, metrics = tiny_run
    for name in ("metrics.json", "scores_decay_free.safetensors", "scores_exact.safetensors", *TABLES):
        assert (out / name).stat().st_size > 100, name
    assert not (out / "ground_truth.safetensors").exists() and not (out / "relevance.csv").exists()
    assert metrics == json.loads((out / "metrics.json").read_text())
    assert metrics["errors"] == [] and "relevance" not in metrics and "examples" not in metrics
    assert AnalysisConfig.from_dict(metrics["config"]) == tiny_config()  # the recorded config reads back
    assert metrics["block_kinds"] == ["ssm", "mlp", "attn", "moe", "ssm", "attn"]
    assert metrics["scored_blocks"] == [0, 2, 4, 5]
    assert metrics["model"] | {"samples": 6, "n_visual": 24} == metrics["model"]
    assert {s["status"] for s in metrics["scorers"].values()} == {"ok"}
    assert set(metrics["sparsity"]) == set(metrics["stability"]) == {"decay_free", "exact"}
    sched = metrics["schedule"]
    assert len(sched["visual_tokens"]) == 6 and sched["visual_tokens"][0] == 24
    assert metrics["stability"]["exact"]["keep_ratios"] == [sched["keep_fraction"][b] for b in (0, 2, 4, 5)]
    assert len(read_csv(out / "sparsity.csv")) == 2 * 4
    assert len(read_csv(out / "stability_spearman.csv")) == 2 * 4 * 4
    _, caches, relevant = load_run(out)
    assert relevant is None and caches["exact"].stack().shape == (4, 6, 24)
    # attention blocks score the same under both Mamba scorers; Mamba blocks do not
    assert torch.equal(caches["exact"][2], caches["decay_free"][2])
    assert not torch.allclose(caches["exact"][0], caches["decay_free"][0].double())  # exact scores are float64


def test_toy_run_writes_every_file(toy_run):
    out, metrics = toy_run
    for name in ("ground_truth.safetensors", "relevance.csv", *TABLES):
        assert (out / name).stat().st_size > 100, name
    assert metrics["errors"] == []
    assert metrics["model"]["n_visual"] == 48 and metrics["model"]["samples"] == 8
    assert [e["index"] for e in metrics["examples"]] == [0, 1]
    ex = metrics["examples"][1]
    assert len(ex["frame_index"]) == len(ex["row_index"]) == len(ex["col_index"]) == 48
    assert set(ex["scores"]) == {"decay_free", "exact"}
    assert set(ex["scores"]["exact"]) == {str(b) for b in metrics["scored_blocks"]}
    assert metrics["overlay"]["blocks"] == [7, 10]  # the last attention and the last Mamba block


# Relevance ----------------------------------------------------------------------------------------
def brute_force(scores: torch.Tensor, relevant: torch.Tensor, frac: float) -> tuple[float, float]:
    """Mean recall@k and relevant mass over samples, by plain loops in float64."""
    recalls, masses = [], []
    for s, r in zip(scores.tolist(), relevant.tolist(), strict=True):
        V = len(s)
        k = math.ceil(frac * V - 1e-9)
        top = sorted(range(V), key=lambda v: (-s[v], v))[:k]  # ties to the earlier token
        rel = [v for v in range(V) if r[v]]
        recalls.append(sum(1 for v in top if r[v]) / len(rel))
        masses.append(sum(s[v] for v in rel) / sum(s))
    return sum(recalls) / len(recalls), sum(masses) / len(masses)


def test_toy_relevance_matches_brute_force(toy_run, toy_checkpoint):
    out, metrics = toy_run
    rel = metrics["relevance"]
    _, caches, relevant = load_run(out)
    data = tiny_toy_spec().data
    assert torch.equal(relevant, ToyDataset(data, "test", 8).batch(range(8))["relevant_visual"])
    assert rel["series"] == ["mamba_decay_free", "mamba_exact", "attention"]
    assert rel["attention_max_diff"] == 0.0
    assert {e["block"] for e in rel["entries"] if e["series"] == "attention"} == {2, 7}
    for e in rel["entries"]:
        for stats in e["stats"].values():
            assert 0 <= stats["min"] <= stats["mean"] <= stats["max"] <= 1 and stats["n"] == 8
    for f in (0.05, 0.1, 0.25):
        assert rel["baseline"][f"recall@{f:g}"] == math.ceil(f * 48 - 1e-9) / 48
    for series, scorer, block in (("mamba_exact", "exact", 10), ("attention", "decay_free", 7)):
        entry = next(e for e in rel["entries"] if e["series"] == series and e["block"] == block)
        scores = caches[scorer].parts[block]["ssm" if series.startswith("mamba") else "attn"].double()
        for f in (0.05, 0.1, 0.25):
            recall, mass = brute_force(scores, relevant, f)
            assert entry["stats"][f"recall@{f:g}"]["mean"] == pytest.approx(recall, abs=1e-12)
        assert entry["stats"]["mass"]["mean"] == pytest.approx(mass, abs=1e-9)
    row = next(r for r in read_csv(out / "relevance.csv") if r["series"] == "mamba_exact" and r["block"] == "10")
    assert float(row["recall@0.1_mean"]) == pytest.approx(entry_mean(rel, "mamba_exact", 10, "recall@0.1"))


def entry_mean(rel: dict, series: str, block: int, metric: str) -> float:
    return next(e for e in rel["entries"] if e["series"] == series and e["block"] == block)["stats"][metric]["mean"]


def test_recall_ties_and_samples_without_ground_truth():
    scores = torch.tensor([[0.5, 0.2, 0.2, 0.1], [0.1, 0.2, 0.3, 0.4]])
    relevant = torch.tensor([[False, False, True, False], [False, False, False, False]])
    recall = recall_at_k(scores, relevant, 0.5)  # k = 2: the tie at 0.2 goes to token 1, not token 2
    assert recall[0] == 0 and math.isnan(recall[1])
    assert relevant_mass(scores, relevant)[0] == pytest.approx(0.2) and random_recall(0.5, 4) == 0.5
    cache = ScoreCache(["attn"], torch.arange(4).repeat(2, 1), {"mamba": "exact"})
    cache.scores[0] = scores
    report = relevance_report(cache, relevant, (0.5,))
    assert report.n_with_relevant == 1 and report.entries[0].stats["recall@0.5"]["n"] == 1


# Plots --------------------------------------------------------------------------------------------
def assert_figure(path_stem: Path) -> None:
    import matplotlib.image as mpimg

    png, pdf = path_stem.with_suffix(".png"), path_stem.with_suffix(".pdf")
    assert png.stat().st_size > 5000 and pdf.read_bytes()[:4] == b"%PDF", path_stem
    pixels = mpimg.imread(png)[..., :3].reshape(-1, 3)
    assert len(np.unique(pixels, axis=0)) > 10, f"{png} is blank"


def test_plots_of_a_toy_run(toy_run):
    out, metrics = toy_run
    paths = plot_run(out)
    stems = {p.stem for p in paths}
    assert stems == {*FIGURES, "relevance", "overlay_0", "overlay_1"}
    for stem in stems:
        assert_figure(out / "plots" / stem)


def test_missing_sections_skip_their_plots(tiny_run, tmp_path):
    out, metrics = tiny_run
    trimmed = {k: v for k, v in metrics.items() if k != "schedule"}
    (tmp_path / "metrics.json").write_text(json.dumps(trimmed))
    with pytest.warns(PlotSkipped) as caught:
        paths = plot_run(tmp_path, formats=("png",))
    assert {p.stem for p in paths} == {"sparsity", "stability", "survival"}
    messages = " ".join(str(w.message) for w in caught)
    assert "no relevance section" in messages and "no schedule section" in messages and "no examples" in messages


# Bad inputs ---------------------------------------------------------------------------------------
def test_bad_configs():
    with pytest.raises(InputError, match="unknown analysis settings"):
        AnalysisConfig.from_dict({"sampels": 3})
    with pytest.raises(InputError, match="distinct modes"):
        AnalysisConfig(scorers=["exact", "fast"])
    with pytest.raises(InputError, match="no tiny architecture 'gpt9'"):
        AnalysisConfig(model={"tiny": "gpt9"})
    with pytest.raises(InputError, match=r"model must be `toy`, `\{checkpoint: DIR\}`"):
        AnalysisConfig(model="llama")
    with pytest.raises(InputError, match=r"topk must be a number in \(0, 1\]"):
        AnalysisConfig(topk=[0.1, 2])


def test_collect_measures_the_benchmark_variant_asked_for(toy_checkpoint, tmp_path):
    raw = tiny_mixed_raw(steps=1, eval_every=1, eval_size=4, test_size=4)
    train(spec_from_dict(raw), tmp_path / "mix", progress=False)
    for variant, camera in ((None, 0), ("static", 0), ("clutter", 4)):  # None: the checkpoint's first variant
        config = AnalysisConfig(model={"checkpoint": str(tmp_path / "mix")}, variant=variant, samples=4, examples=1)
        metrics = collect(config, tmp_path / str(variant), progress=False)
        assert metrics["model"]["variant"] == (variant or "static") and not metrics["errors"]
        assert metrics["model"]["data"]["camera_step"] == camera
    with pytest.raises(InputError, match="was not trained on the benchmark variant 'clutter'"):
        collect(replace(config, model={"checkpoint": str(toy_checkpoint)}), tmp_path / "static_only", progress=False)
    with pytest.raises(InputError, match="variant must be one of"):
        AnalysisConfig(variant="foggy")


def test_mlp_blocks_have_no_scores(tiny_run, tmp_path):
    out, _ = tiny_run
    with pytest.raises(
        InputError, match=r"block 1, an 'mlp' block: it has no token mixer.*scored blocks \[0, 2, 4, 5\]"
    ):
        collect(tiny_config(overlay_blocks=[1]), tmp_path, progress=False)
    _, caches, _ = load_run(out)
    relevant = torch.zeros(6, 24, dtype=torch.bool)
    relevant[:, 3] = True
    with pytest.raises(InputError, match=r"block 3 is an 'moe' block: it has no token mixer"):
        relevance_report(caches, relevant, blocks=[0, 3])
    with pytest.raises(InputError, match=r"relevant has shape \(6, 23\) but the scores have \(6, 24\)"):
        relevance_report(caches, relevant[:, :23])


def test_bad_score_files_and_run_dirs(tiny_run, tmp_path):
    out, _ = tiny_run
    with pytest.raises(InputError, match="has no metrics.json: it is not an analysis run directory"):
        plot_run(tmp_path)
    with pytest.raises(InputError, match="does not exist: it is not an analysis run directory"):
        read_metrics(tmp_path / "nowhere")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(InputError, match="not a readable safetensors score file"):
        load_scores(tmp_path / "empty.safetensors")
    ScoreCache(["mlp", "mlp"], torch.zeros(2, 0, dtype=torch.long)).save(tmp_path / "none.safetensors")
    with pytest.raises(InputError, match=r"holds no scored blocks \(block kinds \['mlp', 'mlp'\]\)"):
        load_scores(tmp_path / "none.safetensors")
    cache = load_scores(out / "scores_exact.safetensors", batch=6, n_visual=24)
    with pytest.raises(InputError, match="has 6 samples x 24 visual tokens but the run expects 7 x 24"):
        load_scores(out / "scores_exact.safetensors", batch=7, n_visual=24)
    cache.scores[2] = cache.scores[2][:3]
    cache.save(tmp_path / "ragged.safetensors")
    with pytest.raises(InputError, match="mismatched shapes"):
        load_scores(tmp_path / "ragged.safetensors")


def test_a_failing_scorer_leaves_partial_results(tmp_path, monkeypatch):
    real = run_module.score_batch

    def flaky(model, batch, scorer, config):
        if scorer == "exact":
            raise ScoreError("block 0 produced non-finite importance")
        return real(model, batch, scorer, config)

    monkeypatch.setattr(run_module, "score_batch", flaky)
    metrics = collect(tiny_config(samples=4), tmp_path / "partial", progress=False)
    assert metrics["scorers"]["exact"]["status"] == "failed" and metrics["scorers"]["decay_free"]["status"] == "ok"
    assert metrics["errors"][0] | {"stage": "collect", "scorer": "exact", "type": "ScoreError"} == metrics["errors"][0]
    assert (
        set(metrics["sparsity"]) == {"decay_free"} and not (tmp_path / "partial" / "scores_exact.safetensors").exists()
    )
    assert json.loads((tmp_path / "partial" / "metrics.json").read_text())["errors"] == metrics["errors"]

    monkeypatch.setattr(run_module, "score_batch", lambda *a: (_ for _ in ()).throw(ScoreError("broken")))
    with pytest.raises(ScoreError, match="every scorer failed"):
        collect(tiny_config(samples=4), tmp_path / "failed", progress=False)
    assert len(read_metrics(tmp_path / "failed")["errors"]) == 2


# Command line -------------------------------------------------------------------------------------
def test_cli_analyze_and_plot(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(
        "analysis:\n  model: {tiny: jamba}\n  samples: 3\n  batch_size: 3\n  scorers: [exact]\n  keep: 0.5\n"
        "  prompt: {prefix: 2, visual: 16, question: 4}\n"
    )
    assert main(["analyze", "--config", str(config), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    assert "scored 3 samples with scorers exact" in capsys.readouterr().out
    assert read_metrics(tmp_path / "run")["block_kinds"] == ["ssm", "attn", "ssm", "attn"]
    assert main(["plot", str(tmp_path / "run")]) == 0
    captured = capsys.readouterr()
    assert "wrote 8 files" in captured.out and "skipping the relevance plot" in captured.err
    for stem in FIGURES:
        assert_figure(tmp_path / "run" / "plots" / stem)

    assert main(["plot", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hybridreduce plot: error: ") and "not an analysis run directory" in err
    assert len(err.splitlines()) == 1
    config.write_text("analysis:\n  model: {tiny: jamba}\n  samplez: 3\n")
    assert main(["analyze", "--config", str(config), "--out", str(tmp_path / "bad")]) == 2
    assert "unknown analysis settings ['samplez']" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["verify", "bench", "train-toy", "demo"])
def test_cli_keeps_the_existing_subcommands(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0 and f"usage: hybridreduce {command}" in capsys.readouterr().out


def _same_run(a: Path, b: Path) -> None:
    """Two run directories hold the same scores, ground truth and metrics (up to timings)."""
    from safetensors.torch import load_file

    ma, mb = read_metrics(a), read_metrics(b)
    for m in (ma, mb):
        for status in m["scorers"].values():
            status.pop("seconds", None)
    assert ma == mb
    for name in ma["files"]:
        if name.endswith(".safetensors"):
            ta, tb = load_file(str(a / name)), load_file(str(b / name))
            assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), name
        elif name.endswith(".csv"):
            assert (a / name).read_text() == (b / name).read_text(), name


def no_model_loads(monkeypatch) -> None:
    """Loading or building any model fails the test (a merge reads the shards' files, never the model)."""
    import hybridreduce.tiny_models
    import hybridreduce.toy.demo
    from hybridreduce.toy.model import ToyVLM

    def fail(*args, **kwargs):
        raise AssertionError("merge loaded a model")

    monkeypatch.setattr(run_module, "load_model", fail)
    monkeypatch.setattr(hybridreduce.toy.demo, "load_toy_spec", fail)
    monkeypatch.setattr(hybridreduce.tiny_models, "build_tiny_model", fail)
    monkeypatch.setattr(ToyVLM, "from_pretrained", fail)


def test_shards_merge_to_the_single_process_run_without_loading_the_model(toy_checkpoint, tmp_path, monkeypatch):
    config = AnalysisConfig(model={"checkpoint": str(toy_checkpoint)}, samples=8, batch_size=5, examples=3)
    config = replace(config, batch_size=2)  # 4 batches in 3 shards of 1, 1 and 2 batches; examples span 2 shards
    single = tmp_path / "single"
    collect(config, single, progress=False)
    for i in range(3):
        info = collect(config, tmp_path, progress=False, shard=(i, 3))
        assert info["shard"] == [i, 3] and info["samples"] == [[0, 2], [2, 4], [4, 8]][i]
        assert info["block_kinds"] == read_metrics(single)["block_kinds"]  # what the merge writes instead of loading
    assert not (tmp_path / "metrics.json").exists()
    no_model_loads(monkeypatch)
    assert main(["merge", str(tmp_path)]) == 0
    _same_run(single, tmp_path)
    assert len(read_metrics(tmp_path)["examples"]) == 3


def test_shard_errors(toy_checkpoint, tmp_path):
    from analysis.rundir import merge_shards

    config = AnalysisConfig(model={"checkpoint": str(toy_checkpoint)}, samples=4, batch_size=2, examples=0)
    with pytest.raises(InputError, match="shard must be"):
        collect(config, tmp_path, progress=False, shard=(2, 2))
    with pytest.raises(InputError, match="every shard needs a batch"):
        collect(config, tmp_path, progress=False, shard=(0, 3))
    collect(config, tmp_path, progress=False, shard=(1, 2))
    with pytest.raises(InputError, match=r"shards \[0\] of 2 are missing"):
        merge_shards(tmp_path)
    with pytest.raises(InputError, match="no shard"):
        merge_shards(tmp_path / "nothing")
    collect(config, tmp_path, progress=False, shard=(0, 2))
    first = tmp_path / "shard-0-of-2" / "shard.json"
    written = json.loads(first.read_text())
    old = {k: v for k, v in written.items() if k not in ("model", "block_kinds")}  # as shards were written before
    first.write_text(json.dumps(old))
    with pytest.raises(InputError, match=r"shards \[0\] of 2 were written by an older .* --shard i/2 --overwrite"):
        merge_shards(tmp_path)
    first.write_text(json.dumps(written | {"model": written["model"] | {"parameters": 1}}))
    with pytest.raises(InputError, match="the shards were scored with different models"):
        merge_shards(tmp_path)
    assert not (tmp_path / "metrics.json").exists()


def test_torchrun_analyze_merges_on_rank_zero(tiny_run, tmp_path):
    import os
    import socket
    import subprocess
    import sys

    import yaml

    single, _ = tiny_run
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({"analysis": tiny_config().to_dict()}))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "run"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port)]
    command = [*torchrun, "-m", "hybridreduce", "analyze", "--config", str(config), "--out", str(out), "--no-progress"]
    done = subprocess.run(
        command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert {p.name for p in out.glob("shard-*")} == {"shard-0-of-2", "shard-1-of-2"}
    _same_run(single, out)


def test_one_command_line_with_the_analysis_subcommands():
    """The console script and `python -m hybridreduce` are one program; analysis adds its subcommands through the
    documented entry-point hook (hybridreduce never imports analysis)."""
    import subprocess
    import sys
    from importlib.metadata import entry_points

    from hybridreduce.cli import SUBCOMMANDS_GROUP, build_parser

    assert [e.value for e in entry_points(group=SUBCOMMANDS_GROUP)] == ["analysis.cli:register"]
    help_text = subprocess.run(
        [sys.executable, "-m", "hybridreduce", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "analyze" in help_text and "plot" in help_text
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert {"verify", "demo", "run", "merge", "analyze", "plot"} <= set(sub.choices)
    source = "\n".join(p.read_text() for p in Path(__file__).parents[1].joinpath("hybridreduce").rglob("*.py"))
    assert "import analysis" not in source and "from analysis" not in source
