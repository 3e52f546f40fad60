"""Bad input to `run`, `generate`, `merge` and `bench`, from the command line and from Python.

Each case is refused with exit status 2 (from Python: InputError) and one line that names the value and the fix,
and leaves every file already written as it was (checksums before and after). Then: resume keyed on the settings
that produced each answer, error lines answered again, a run whose every answer failed, and merges that refuse
missing or duplicate shards.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from hybridreduce import InputError, validate
from hybridreduce.cli import main
from hybridreduce.manifest import read_manifest, write_manifest
from hybridreduce.runner import (
    Setting,
    check_out_dir,
    merge,
    read_predictions,
    run,
    settings_for,
)

from .test_run import FRAMES, make_run_files


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """:func:`make_run_files`, plus ``done``: a finished run (8 frames), ``shards``: the same run in 3 shards, merged,
    ``file``: a plain file, ``no_weights``: the checkpoint without its weights."""
    root = tmp_path_factory.mktemp("bad")
    f = make_run_files(root)
    items = read_manifest(f["manifest"])
    settings = settings_for("progressive")
    run(f["vlm"], items, root / "done", settings, frames=FRAMES, progress=False)
    merge(root / "done")
    for i in range(3):
        run(f["vlm"], items, root / "shards", settings, frames=FRAMES, shard=(i, 3), progress=False)
    merge(root / "shards")
    (root / "a_file.txt").write_text("a file, not a directory\n")
    shutil.copytree(f["model"], root / "no_weights")
    (root / "no_weights" / "model.safetensors").unlink()
    return {**f, "done": root / "done", "shards": root / "shards", "file": root / "a_file.txt",
            "no_weights": root / "no_weights"}  # fmt: skip


def digest(root: Path) -> dict[str, str]:
    """Every file (its sha256) and folder under ``root``, hidden ones included, by relative path."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
        for p in sorted(root.rglob("*"))
    }


def refused(argv: list[str], fragments: list[str], root: Path, capsys, code: int = 2) -> str:
    """``main(argv)`` exits ``code`` with one error line holding every fragment; nothing under ``root`` changed."""
    before = digest(root)
    assert main(argv) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert digest(root) == before, "a refused command changed files"
    return lines[0]


def api_refused(call, match: str, root: Path) -> None:
    """``call()`` raises InputError matching ``match``; nothing under ``root`` changed."""
    before = digest(root)
    with pytest.raises(InputError, match=match):
        call()
    assert digest(root) == before


def _run_args(f, *extra: str, out: Path | None = None) -> list[str]:
    """``run`` of the tiny model on the manifest into ``out`` (default: the finished run ``done``)."""
    out = f["done"] if out is None else out
    return ["run", "--model", str(f["model"]), "--data", str(f["manifest"]), "--out", str(out), "--no-progress",
            *extra]  # fmt: skip


# --- run: every flag ------------------------------------------------------------------------------------------------
RUN_CASES = {
    "frames 0": (["--frames", "0"], ["frames (--frames)", "[1, 4096]", "got 0"]),
    "frames -5": (["--frames", "-5"], ["frames (--frames)", "got -5"]),
    "frames 100000": (["--frames", "100000"], ["[1, 4096]", "got 100000", "e.g. 32"]),
    "fps 0": (["--fps", "0"], ["fps (--fps)", "> 0", "got 0.0"]),
    "fps nan": (["--fps", "nan"], ["fps (--fps)", "got nan"]),
    "fps inf": (["--fps", "inf"], ["fps (--fps)", "got inf"]),
    "max-frames 0": (["--fps", "1", "--max-frames", "0"], ["max_frames (--max-frames)", "got 0"]),
    "max-frames without fps": (["--max-frames", "4"], ["max_frames (--max-frames) 4 caps", "--fps"]),
    "frames and fps": (["--frames", "8", "--fps", "1"], ["frames=8 and fps=1.0", "--frames N"]),
    "evs 1.5": (["--evs", "1.5"], ["evs (--evs)", "[0, 1)", "got 1.5", "0 turns EVS off"]),
    "evs -0.5": (["--evs", "-0.5"], ["evs (--evs)", "got -0.5"]),
    "evs 1": (["--evs", "1"], ["evs (--evs)", "got 1.0"]),
    "evs nan": (["--evs", "nan"], ["evs (--evs)", "got nan"]),
    "max-new-tokens 0": (["--max-new-tokens", "0"], ["max_new_tokens (--max-new-tokens)", ">= 1", "got 0"]),
    "max-new-tokens -3": (["--max-new-tokens", "-3"], ["max_new_tokens (--max-new-tokens)", "got -3"]),
    "keep 0": (["--keep", "0"], ["keep (--keep)", "(0, 1]", "got 0.0"]),
    "keep -0.5": (["--keep", "-0.5"], ["keep (--keep)", "got -0.5"]),
    "keep 1.5": (["--keep", "1.5"], ["keep (--keep)", "got 1.5"]),
    "keep nan": (["--keep", "nan"], ["keep (--keep)", "got nan"]),
    "keep inf": (["--keep", "inf"], ["keep (--keep)", "got inf"]),
    "keep 1e-9 (past what the depth allows)": (["--keep", "1e-9"], ["keep=1e-09", "cannot be met", "raise keep"]),
    "schedule none with keep": (["--schedule", "none", "--keep", "0.5"], ["--keep", "no schedule", "drop --keep"]),
    "unknown schedule": (["--schedule", "nosuch"], ["unknown schedule 'nosuch'"]),
    "nothing to run": (["--schedule", "none", "--no-full"], ["nothing to run"]),
    "device gpu0": (["--device", "gpu0"], ["'gpu0' is not a torch device", "cuda:N"]),
    "device cuda:99": (["--device", "cuda:99"], ["'cuda:99'"]),
    "dtype int8": (["--dtype", "int8"], ["dtype (--dtype)", "auto, float32, bfloat16, float16", "got 'int8'"]),
    "device and device-map": (["--device", "cpu", "--device-map", "auto"], ["give one of them"]),
    "shard 3/2": (["--shard", "3/2"], ["shard (--shard) 3/2", "0 <= i < N"]),
    "shard x": (["--shard", "x"], ["i/N", "'x'"]),
    "a shard beside an unsharded run": (["--shard", "0/2"], ["without --shard", "another --out"]),
}


@pytest.mark.parametrize("case", list(RUN_CASES))
def test_run_refuses(files, capsys, case):
    extra, fragments = RUN_CASES[case]
    refused(_run_args(files, *extra), fragments, files["root"], capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a torch without CUDA")
def test_run_refuses_cuda_on_a_cpu_build(files, capsys):
    refused(_run_args(files, "--device", "cuda"), ["'cuda'", "no CUDA", "--device cpu"], files["root"], capsys)


def test_run_refuses_bad_paths(files, capsys, monkeypatch):
    f, root = files, files["root"]
    base = ["run", "--data", str(f["manifest"]), "--no-progress"]
    model, out = ["--model", str(f["model"])], ["--out", str(f["done"])]
    refused([*base, *out, "--model", str(f["no_weights"])], ["has config.json but no weights", "model.safetensors"],
            root, capsys)  # fmt: skip
    refused([*base, *out, "--model", str(root / "nowhere")], ["'" + str(root / "nowhere") + "'", "not a directory"],
            root, capsys)  # fmt: skip
    refused(["run", *model, *out, "--data", str(root / "none.jsonl")], ["none.jsonl", "not found"], root, capsys)
    refused([*base, *model, "--out", str(f["file"])], ["a_file.txt", "is a file, not a directory"], root, capsys)
    refused([*base, *model, "--out", str(f["file"] / "run")], ["lies under the file", "a_file.txt"], root, capsys)
    read_only = root / "read_only"
    real_access = os.access
    monkeypatch.setattr(validate.os, "access", lambda p, mode: Path(p) != read_only and real_access(p, mode))
    read_only.mkdir()
    try:
        refused([*base, *model, "--out", str(read_only / "run")], ["read_only", "not writable"], root, capsys)
    finally:
        read_only.rmdir()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_run_refuses_a_read_only_out_for_real(files, capsys, tmp_path):
    read_only = tmp_path / "ro"
    read_only.mkdir()
    read_only.chmod(0o555)
    try:
        refused(_run_args(files, out=read_only), ["not writable"], tmp_path, capsys)
    finally:
        read_only.chmod(0o755)


# --- generate ---------------------------------------------------------------------------------------------------
def _generate_args(f, *extra: str) -> list[str]:
    video = str(f["root"] / "videos" / "a.mp4")
    return ["generate", "--model", str(f["model"]), "--video", video, "--question", "what ?", "--frames", "4", *extra]


GENERATE_CASES = {
    "schedule none with keep": (["--schedule", "none", "--keep", "0.5"], ["keep (--keep) 0.5", "drop --keep"]),
    "27 options": ([a for k in range(27) for a in ("--option", f"o{k}")], ["27 options", "at most 26"]),
    "missing video": (["--video", "nope.mp4"], ["nope.mp4", "not found"]),
    "more frames than the video": (["--frames", "100"], ["only 24 frames, 100 requested"]),
    "evs 2": (["--evs", "2"], ["evs (--evs)", "got 2.0"]),
    "keep 1e-9": (["--keep", "1e-9"], ["keep=1e-09", "cannot be met"]),
    "device gpu0": (["--device", "gpu0"], ["'gpu0' is not a torch device"]),
    "no weights": (["--model", "NO_WEIGHTS"], ["no weights"]),
}


@pytest.mark.parametrize("case", list(GENERATE_CASES))
def test_generate_refuses(files, capsys, case):
    extra, fragments = GENERATE_CASES[case]
    extra = [str(files["no_weights"]) if x == "NO_WEIGHTS" else x for x in extra]
    refused(_generate_args(files, *extra), fragments, files["root"], capsys)


# --- bench ------------------------------------------------------------------------------------------------------
BENCH_CASES = {
    "decode-steps 0": (
        ["--decode-steps", "0"],
        ["decode_steps (--decode-steps)", ">= 1", "got 0", "cannot be skipped"],
    ),
    "visual-tokens 100000000": (["--visual-tokens", "100000000"], ["100000000", "GiB of memory", "at most"]),
    "visual-tokens 8": (["--visual-tokens", "8"], ["visual_tokens (--visual-tokens)", ">= 16", "got 8"]),
    "repeats 0": (["--repeats", "0"], ["repeats (--repeats)", "got 0"]),
    "keep 0": (["--keep", "0"], ["keep (--keep)", "(0, 1]"]),
    "a sweep keep of 0": (["--sweep", "0,0.5", "--out", "OUT"], ["keep 0 of --sweep", "(0, 1]"]),
    "keep with sweep": (["--sweep", "0.25", "--keep", "0.5", "--out", "OUT"], ["--keep 0.5 with --sweep"]),
    "out without sweep": (["--out", "OUT"], ["written only by --sweep"]),
    "sweep into a file": (["--sweep", "0.25", "--out", "FILE"], ["a_file.txt", "is a file"]),
    "schedule none with keep": (["--schedule", "none", "--keep", "0.5"], ["fixes its own budget"]),
    "unknown schedule": (["--schedule", "nosuch"], ["unknown schedule 'nosuch'"]),
}


@pytest.mark.parametrize("case", list(BENCH_CASES))
def test_bench_refuses(files, capsys, case):
    extra, fragments = BENCH_CASES[case]
    paths = {"OUT": str(files["root"] / "bench_out"), "FILE": str(files["file"])}
    refused(["bench", *[paths.get(x, x) for x in extra]], fragments, files["root"], capsys)


# --- merge ------------------------------------------------------------------------------------------------------
def _shards(files, tmp_path, keep=(0, 1, 2)) -> Path:
    """A copy of the 3-shard run with only the shards ``keep`` (and no merge output)."""
    out = tmp_path / "m"
    out.mkdir()
    for i in keep:
        shutil.copy(files["shards"] / f"predictions.shard-{i}-of-3.jsonl", out)
    return out


def test_merge_refuses_missing_shards_unless_allowed(files, tmp_path, capsys):
    out = _shards(files, tmp_path, keep=(0,))
    names = ["predictions.shard-1-of-3.jsonl", "predictions.shard-2-of-3.jsonl"]
    refused(["merge", str(out)], ["2 of 3 shards missing", *names, "--allow-partial"], tmp_path, capsys)
    api_refused(lambda: merge(out), "2 of 3 shards missing", tmp_path)
    assert main(["merge", str(out), "--allow-partial"]) == 0
    assert f"partial: merged without {', '.join(names)}" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["partial"] is True and summary["missing"] == names
    assert summary["sources"] == ["predictions.shard-0-of-3.jsonl"]
    assert {r["items"] for r in summary["results"]} == {3}  # items 0, 3, 6


def test_merge_refuses_duplicate_shards(files, tmp_path, capsys):
    out = _shards(files, tmp_path)
    shutil.copy(out / "predictions.shard-0-of-3.jsonl", out / "predictions.shard-0-of-2.jsonl")
    refused(["merge", str(out)], ["2 different splits", "of 2: 0", "of 3: 0, 1, 2"], tmp_path, capsys)
    refused(["merge", str(out), "--allow-partial"], ["2 different splits"], tmp_path, capsys)
    (out / "predictions.shard-0-of-2.jsonl").unlink()
    shutil.copy(files["done"] / "predictions.jsonl", out)  # a run without shards into the same folder
    refused(["merge", str(out)], ["predictions.jsonl (a run without --shard)", "3 shard file(s)"], tmp_path, capsys)
    (out / "predictions.jsonl").unlink()
    with (out / "predictions.shard-1-of-3.jsonl").open("a") as f:  # an item of shard 0 answered in shard 1 too
        f.write((out / "predictions.shard-0-of-3.jsonl").read_text().splitlines()[0] + "\n")
    refused(["merge", str(out)], ["'good-1'", "answered in both", "shard-0-of-3", "shard-1-of-3"], tmp_path, capsys)


def test_merge_refuses_bad_lines_and_empty_folders(files, tmp_path, capsys):
    out = _shards(files, tmp_path)
    path = out / "predictions.shard-2-of-3.jsonl"
    lines = path.read_text().splitlines()
    row = json.loads(lines[1])
    del row["id"]
    path.write_text("\n".join([lines[0], json.dumps(row), *lines[2:]]) + "\n")
    refused(["merge", str(out)], ["predictions.shard-2-of-3.jsonl:2", "lacks id", "delete the line"], tmp_path, capsys)
    path.write_text("\n".join([lines[0], "{not json", *lines[2:]]) + "\n")
    refused(["merge", str(out)], ["predictions.shard-2-of-3.jsonl:2", "not valid JSON"], tmp_path, capsys)
    refused(["merge", str(tmp_path / "empty")], ["no predictions"], tmp_path, capsys)


def test_merge_refuses_shards_answered_with_different_settings(files, tmp_path, capsys):
    out = _shards(files, tmp_path)
    items = read_manifest(files["manifest"])
    run(files["vlm"], items, out, settings_for("progressive"), frames=16, shard=(1, 3), progress=False)
    refused(["merge", str(out)], ["setting 'full'", "two configs", "frames 8 vs 16"], tmp_path, capsys)


# --- Python API -------------------------------------------------------------------------------------------------
def _api_run(f, **kw):
    """:func:`run` of the tiny model on the manifest into the finished run ``done``, with ``kw`` changed."""
    args = {"vlm": f["vlm"], "items": read_manifest(f["manifest"]), "out_dir": f["done"],
            "settings": settings_for("progressive"), "frames": FRAMES, "progress": False, **kw}  # fmt: skip
    return run(**args)


API_CASES = {
    "frames 0": (lambda f: _api_run(f, frames=0), r"frames \(--frames\) must be an integer in \[1, 4096\], got 0"),
    "frames 100000": (lambda f: _api_run(f, frames=100000), r"got 100000"),
    "frames 2.5": (lambda f: _api_run(f, frames=2.5), r"frames \(--frames\) must be an integer"),
    "frames and fps": (lambda f: _api_run(f, frames=32, fps=1.0), r"frames=32 and fps=1.0.*pass frames=None"),
    "fps nan": (lambda f: _api_run(f, frames=None, fps=float("nan")), r"fps \(--fps\).*got nan"),
    "max_frames without fps": (lambda f: _api_run(f, max_frames=4), r"max_frames \(--max-frames\) 4 caps"),
    "max_new_tokens True": (lambda f: _api_run(f, max_new_tokens=True), r"max_new_tokens.*got True"),
    "max_new_tokens 0": (lambda f: _api_run(f, max_new_tokens=0), r"max_new_tokens.*got 0"),
    "no settings": (lambda f: _api_run(f, settings=[]), r"settings must be a non-empty list"),
    "a Setting, not a list": (lambda f: _api_run(f, settings=Setting("full", None)), r"non-empty list of Setting"),
    "a setting with evs 1": (
        lambda f: _api_run(f, settings=[Setting("x", None, 1.0)]),
        r"evs \(--evs\) must be a finite number in \[0, 1\), got 1.0",
    ),
    "two settings of one name": (
        lambda f: _api_run(f, settings=[Setting("full", None), Setting("full", None)]),
        r"named \['full'\] more than once",
    ),
    "keep 1e-9": (
        lambda f: _api_run(f, settings=settings_for("progressive", keep=1e-9)),
        r"keep=1e-09 .*cannot be met",
    ),
    "out_dir a file": (lambda f: _api_run(f, out_dir=f["file"]), r"a_file.txt' is a file"),
    "out_dir under a file": (lambda f: _api_run(f, out_dir=f["file"] / "sub"), r"lies under the file"),
    "shard (2, 2)": (lambda f: _api_run(f, shard=(2, 2)), r"shard \(--shard\) \(2, 2\)"),
    "a shard beside an unsharded run": (lambda f: _api_run(f, shard=(0, 2)), r"without --shard"),
    "repeated item ids": (
        lambda f: _api_run(f, items=read_manifest(f["manifest"]) * 2),
        r"item ids repeat \(\['corrupt', 'good-1'",
    ),
    "items as dicts": (lambda f: _api_run(f, items=[{"id": "x"}]), r"items must be a list of manifest Items"),
    "keep True": (lambda f: settings_for("progressive", keep=True), r"keep \(--keep\).*got True"),
    "keep '0.5'": (lambda f: settings_for("progressive", keep="0.5"), r"keep \(--keep\).*got '0.5'"),
    "schedule none with keep": (lambda f: settings_for("none", keep=0.5), r"no schedule to apply to"),
    "evs 1": (lambda f: settings_for("progressive", evs=1.0), r"evs \(--evs\).*got 1.0"),
    "evs nan": (lambda f: settings_for("progressive", evs=float("nan")), r"evs \(--evs\).*got nan"),
    "a shard of another split": (
        lambda f: check_out_dir(f["shards"], (0, 2)),
        r"shards of another split.*shard-0-of-3",
    ),
    "no shard beside shards": (
        lambda f: check_out_dir(f["shards"], (0, 1)),
        r"a run without --shard would answer their items again",
    ),
    "merge of a folder without predictions": (lambda f: merge(f["root"] / "videos"), r"no predictions"),
}


@pytest.mark.parametrize("case", list(API_CASES))
def test_api_refuses(files, case):
    call, match = API_CASES[case]
    api_refused(lambda: call(files), match, files["root"])


# --- resume keyed on the settings ----------------------------------------------------------------------------------
def test_other_frames_answer_again(files, tmp_path, capsys):
    out = tmp_path / "run"
    args = _run_args(files, out=out)
    assert main([*args, "--frames", "8"]) == 0
    eight = read_predictions(out / "predictions.jsonl")
    assert {r["config"]["frames"] for r in eight} == {8} and {r.get("frames") for r in eight} == {8, None}
    assert main([*args, "--frames", "16"]) == 0
    assert "answering again 6 line(s) made with other settings and 8 error line(s)" in capsys.readouterr().err
    sixteen = read_predictions(out / "predictions.jsonl")
    assert len(sixteen) == len(eight) == 14
    assert {r["config"]["frames"] for r in sixteen} == {16} and {r.get("frames") for r in sixteen} == {16, None}
    assert read_predictions(out / "superseded.jsonl") == eight  # moved aside, not lost
    summary = json.loads((out / "summary.json").read_text())
    assert {r["config"]["frames"] for r in summary["results"]} == {16}
    before = digest(out)
    assert main([*args, "--frames", "16", "--no-retry-errors"]) == 0  # same settings: nothing to answer
    assert digest(out) == before


def test_error_lines_are_answered_again(files, tmp_path, capsys):
    video = files["root"] / "videos" / "a.mp4"
    manifest = tmp_path / "data.jsonl"
    write_manifest(manifest, [
        {"id": "ok", "video": str(video), "question": "what ?", "options": ["x", "y"], "answer": "A"},
        {"id": "late", "video": "late.mp4", "question": "what ?", "options": ["x", "y"], "answer": "B"},
    ])  # fmt: skip
    out = tmp_path / "run"
    args = ["run", "--model", str(files["model"]), "--data", str(manifest), "--out", str(out), "--frames", "8",
            "--no-progress"]  # fmt: skip
    assert main(args) == 0
    first = {(r["id"], r["setting"]): r for r in read_predictions(out / "predictions.jsonl")}
    assert "late.mp4: not found" in first[("late", "full")]["error"]
    shutil.copy(video, tmp_path / "late.mp4")  # the video arrives
    before = digest(out)
    assert main([*args, "--no-retry-errors"]) == 0  # the error lines are kept
    assert digest(out) == before
    assert main(args) == 0  # and by default answered again
    rows = {(r["id"], r["setting"]): r for r in read_predictions(out / "predictions.jsonl")}
    assert "error" not in rows[("late", "full")] and rows[("late", "full")]["frames"] == 8
    assert rows[("ok", "full")] == first[("ok", "full")]  # the answered lines are reused as they are
    assert [r["id"] for r in read_predictions(out / "superseded.jsonl")] == ["late", "late"]


def test_a_run_whose_every_answer_failed_exits_1(files, tmp_path, capsys):
    out = tmp_path / "run"
    args = _run_args(files, out=out)
    assert main([*args, "--frames", "100"]) == 1  # every video has fewer than 100 frames
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "every answer failed: 14 of 14 lines are errors" in err
    assert "100 requested" in err and "Traceback" not in err
    assert main([*args, "--frames", "8"]) == 0  # the same folder, with frames the videos have


def test_a_shard_reruns_beside_its_merged_split(files, tmp_path):
    out = tmp_path / "s"
    shutil.copytree(files["shards"], out)  # merged: predictions.jsonl is that merge's output, not another run
    items = read_manifest(files["manifest"])
    before = digest(out)
    run(files["vlm"], items, out, settings_for("progressive"), frames=FRAMES, shard=(0, 3), progress=False)
    assert digest(out) == before  # shard 0 (items 0, 3, 6) has no error line: nothing to answer again
    assert merge(out)["sources"] == [f"predictions.shard-{i}-of-3.jsonl" for i in range(3)]
