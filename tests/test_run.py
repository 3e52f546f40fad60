"""`hybridreduce run / generate / merge` on a tiny saved VLM and a manifest with good, missing and corrupt videos."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from hybridreduce import InputError
from hybridreduce.cli import main
from hybridreduce.manifest import read_manifest, write_manifest
from hybridreduce.runner import TIMINGS, merge, parse_shard, read_predictions, run, settings_for
from hybridreduce.tiny_models import save_tiny_vlm
from hybridreduce.video import write_video
from hybridreduce.vlm import load

FRAMES = 8


def make_run_files(root) -> dict:
    """In ``root``: a tiny saved Omni checkpoint, videos good and broken, a manifest of 7 items (4 broken)."""
    model = save_tiny_vlm(root / "omni", "nemotron_h_omni")
    rng = np.random.default_rng(0)
    for name, T in (("a.mp4", 24), ("b.webm", 16), ("short.avi", 4)):
        write_video(root / "videos" / name, rng.integers(0, 256, (T, 32, 32, 3), dtype=np.uint8), fps=8)
    good = (root / "videos" / "a.mp4").read_bytes()
    (root / "videos" / "truncated.mp4").write_bytes(good[: len(good) // 3])
    (root / "videos" / "noise.mp4").write_bytes(bytes(rng.integers(0, 256, 4096, dtype=np.uint8)))
    rows = [
        {"id": "good-1", "video": "videos/a.mp4", "question": "what colour ?", "options": ["red", "green", "blue"],
         "answer": "B", "type": "colour"},
        {"id": "missing", "video": "videos/nope.mp4", "question": "what ?", "options": ["x", "y"], "answer": "A"},
        {"id": "corrupt", "video": "videos/noise.mp4", "question": "what ?", "options": ["x", "y"], "answer": "A"},
        {"id": "good-2", "video": "videos/b.webm", "question": "how many ?", "options": ["1", "2", "3", "4"],
         "answer": "D", "type": "count"},
        {"id": "truncated", "video": "videos/truncated.mp4", "question": "what ?", "options": ["x", "y"], "answer": 1},
        {"id": "too-short", "video": "videos/short.avi", "question": "what ?", "options": ["x", "y"], "answer": "B"},
        {"id": "good-3", "video": "videos/a.mp4", "question": "where ?", "options": ["left", "right"], "answer": 1,
         "type": "where"},
    ]  # fmt: skip
    write_manifest(root / "data.jsonl", rows)
    return {"root": root, "model": model, "manifest": root / "data.jsonl", "vlm": load(model)}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return make_run_files(tmp_path_factory.mktemp("run"))


def _strip(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in rows]


def _order(row: dict) -> tuple:
    return row["index"], row["setting"] != "full"


def _run(setup, out, **kw):
    items = read_manifest(setup["manifest"])
    settings = kw.pop("settings", None) or settings_for("progressive", evs=0.0)
    return run(setup["vlm"], items, out, settings, frames=FRAMES, progress=False, **kw)


def test_run_records_answers_and_errors(setup, tmp_path):
    path = _run(setup, tmp_path)
    rows = read_predictions(path)
    settings = ["full", "progressive@0.25"]
    assert [(r["id"], r["setting"]) for r in rows] == [
        (i.id, s) for i in read_manifest(setup["manifest"]) for s in settings
    ]
    errors = {r["id"]: r["error"] for r in rows if "error" in r}
    assert set(errors) == {"missing", "corrupt", "truncated", "too-short"}
    assert "not found" in errors["missing"] and "nope.mp4" in errors["missing"]
    assert "noise.mp4" in errors["corrupt"] and "4 frames" in errors["too-short"]
    for r in rows:
        if "error" not in r:
            assert r["frames"] == FRAMES and r["n_visual"] == 16 and r["evs_visual"] == 16
            assert r["correct"] == (r["pred"] == r["answer"]) and r["pred"] in (None, *"ABCD")
            assert (r["average_keep"] == 1.0) == (r["setting"] == "full")
    summary = merge(tmp_path)
    by = {r["setting"]: r for r in summary["results"]}
    assert by["full"]["items"] == 7 and by["full"]["errors"] == 4 and by["full"]["answered"] == 3
    assert set(by["full"]["per_type"]) == {"colour", "count", "where"}
    assert by["full"]["prefill_speedup"] == 1.0 and by["progressive@0.25"]["average_keep"] < 0.5
    assert (tmp_path / "summary.json").is_file() and (tmp_path / "results.csv").read_text().startswith("setting,")


def test_keep_one_gives_the_same_answers_as_none(setup, tmp_path):
    settings = settings_for("progressive", keep=1.0)
    rows = read_predictions(_run(setup, tmp_path, settings=settings))
    answered = [r for r in rows if "error" not in r]
    full = {r["id"]: r for r in answered if r["setting"] == "full"}
    kept = {r["id"]: r for r in answered if r["setting"] != "full"}
    assert set(full) == set(kept) == {"good-1", "good-2", "good-3"}
    for k in full:
        assert (kept[k]["text"], kept[k]["pred"], kept[k]["average_keep"]) == (full[k]["text"], full[k]["pred"], 1.0)


def test_interrupted_run_resumes_where_it_stopped(setup, tmp_path):
    whole = read_predictions(_run(setup, tmp_path / "whole"))
    vlm = setup["vlm"]
    real, calls = vlm.answer, []

    def dying(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    vlm.answer = dying
    try:
        with pytest.raises(KeyboardInterrupt):
            _run(setup, tmp_path / "parts")
    finally:
        vlm.answer = real
    partial = read_predictions(tmp_path / "parts" / "predictions.jsonl")
    assert 0 < len(partial) < len(whole)
    with (tmp_path / "parts" / "predictions.jsonl").open("a") as f:
        f.write('{"index": 9, "id": "cut-off li')  # a line a kill cut in half
    resumed = read_predictions(_run(setup, tmp_path / "parts"))
    assert _strip(resumed) == _strip(whole)
    before = (tmp_path / "parts" / "predictions.jsonl").read_bytes()
    _run(setup, tmp_path / "parts", retry_errors=False)  # nothing left to do
    assert (tmp_path / "parts" / "predictions.jsonl").read_bytes() == before
    again = read_predictions(_run(setup, tmp_path / "parts"))  # the error lines are answered again, at the end
    assert sorted(_strip(again), key=_order) == _strip(whole)


def test_shards_merge_to_the_single_process_result(setup, tmp_path):
    single = read_predictions(_run(setup, tmp_path / "single"))
    for i in range(3):
        _run(setup, tmp_path / "sharded", shard=(i, 3))
    assert sorted(p.name for p in (tmp_path / "sharded").iterdir() if not p.name.startswith(".")) == [
        f"predictions.shard-{i}-of-3.jsonl" for i in range(3)
    ]
    merge(tmp_path / "sharded")
    assert _strip(read_predictions(tmp_path / "sharded" / "predictions.jsonl")) == _strip(single)


def test_parse_shard_and_settings():
    assert parse_shard("1/4") == (1, 4) and parse_shard(None, env={}) == (0, 1)
    assert parse_shard(None, env={"RANK": "1", "WORLD_SIZE": "2"}) == (1, 2)
    for bad in ("4/4", "x", "1/0", "-1/2"):
        with pytest.raises(InputError, match="shard"):
            parse_shard(bad)
    names = [s.name for s in settings_for("fastv", evs=0.5, keep=0.5)]
    assert names == ["full+evs0.5", "fastv@0.5+evs0.5"]
    with pytest.raises(InputError, match="nothing to run"):
        settings_for(None, full=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes_merge_to_the_single_process_result(setup, tmp_path):
    single = read_predictions(_run(setup, tmp_path / "single"))
    out = tmp_path / "torchrun"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_free_port()),
        "-m", "hybridreduce", "run", "--model", str(setup["model"]), "--data", str(setup["manifest"]),
        "--out", str(out), "--frames", str(FRAMES), "--no-progress",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    names = sorted(p.name for p in out.iterdir())
    assert "predictions.shard-0-of-2.jsonl" in names and "predictions.shard-1-of-2.jsonl" in names
    assert _strip(read_predictions(out / "predictions.jsonl")) == _strip(single)
    assert json.loads((out / "summary.json").read_text())["results"][0]["errors"] == 4
    assert "progressive@0.25" in done.stdout  # rank 0 printed the merged table


def test_cli_run_generate_merge(setup, tmp_path, capsys):
    video = setup["root"] / "videos" / "a.mp4"
    model = str(setup["model"])
    code = main(["generate", "--model", model, "--video", str(video), "--question", "what colour ?", "--option", "red",
                 "--option", "green", "--frames", "4", "--evs", "0.5"])  # fmt: skip
    assert code == 0
    text = capsys.readouterr().out
    assert "[progressive@0.25+evs0.5]" in text and "8 visual tokens, 4 after EVS" in text
    out = tmp_path / "cli"
    args = ["run", "--model", model, "--data", str(setup["manifest"]), "--out", str(out), "--frames", "4"]
    # fastv cuts once, before block 3 of this 6-block model: an average keep of 0.5 or less cannot be met
    assert main([*args, "--no-progress", "--no-full", "--schedule", "fastv", "--keep", "0.5"]) == 2
    assert "keep=0.5" in capsys.readouterr().err and not out.exists()
    assert main([*args, "--no-progress", "--no-full", "--schedule", "fastv", "--keep", "0.75"]) == 0
    assert "fastv@0.75" in capsys.readouterr().out
    assert main(["merge", str(out)]) == 0
    assert main(["merge", str(tmp_path / "empty")]) == 2
    assert main([*args, "--shard", "3/2"]) == 2
    assert "shard" in capsys.readouterr().err


def test_the_checkpoints_own_evs_rate_is_the_default(setup, tmp_path, capsys):
    model = save_tiny_vlm(tmp_path / "omni_evs", "nemotron_h_omni", video_pruning_rate=0.5)
    assert load(model).builtin_evs == 0.5
    video = str(setup["root"] / "videos" / "a.mp4")
    base = ["generate", "--model", str(model), "--video", video, "--question", "what ?", "--frames", "4",
            "--schedule", "none"]  # fmt: skip
    assert main(base) == 0
    captured = capsys.readouterr()
    assert "[full+evs0.5]" in captured.out and "8 visual tokens, 4 after EVS" in captured.out
    assert "video_pruning_rate 0.5" in captured.err
    assert main([*base, "--evs", "0"]) == 0
    assert "[full]" in capsys.readouterr().out
