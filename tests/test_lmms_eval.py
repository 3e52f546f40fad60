"""lmms-eval answers a local task with hybridreduce's model, found by name through lmms-eval's own entry point.

A tiny saved Nemotron-Omni checkpoint, synthetic videos (two files, a folder of frames, one missing), and the task
``tiny_videoqa`` (tests/fixtures/lmms_eval/, ``--include_path``) whose data the test writes: a hybridreduce
manifest, so lmms-eval's answers can be held against ``hybridreduce run``'s. ``python -m lmms_eval`` runs twice,
with every token and with ``schedule=progressive,keep=1.0``; the reduced settings, the other families, the image
inputs and the refusals run in this process.

Skipped where lmms-eval is not installed; constraints-lmms.txt says how to install it beside hybridreduce.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("lmms_eval", reason="lmms-eval is not installed (see constraints-lmms.txt)")

from lmms_eval.api.instance import Instance  # noqa: E402
from lmms_eval.models.registry_v2 import ModelRegistryV2  # noqa: E402

from hybridreduce import InputError, UnsupportedModelError  # noqa: E402
from hybridreduce.integrations import lmms_eval as hr  # noqa: E402
from hybridreduce.manifest import read_manifest, write_manifest  # noqa: E402
from hybridreduce.runner import read_predictions, run, settings_for  # noqa: E402
from hybridreduce.tiny_models import build_tiny_model, save_tiny_vlm  # noqa: E402
from hybridreduce.video import read_video, write_video  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures" / "lmms_eval"
TASK = "tiny_videoqa"
FRAMES = 8
#: The two lmms-eval runs, their model arguments and setting names: every token, and a schedule at keep 1.0 (which
#: must answer the same).
LAUNCHES = {"full": ("", "full"), "keep1": (",schedule=progressive,keep=1.0", "progressive@1")}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    """A tiny Omni checkpoint, videos and the task's data (tiny_videoqa.jsonl, absolute video paths)."""
    root = tmp_path_factory.mktemp("lmms")
    model = save_tiny_vlm(root / "omni", "nemotron_h_omni")
    rng = np.random.default_rng(0)
    for name, T in (("a.mp4", 24), ("b.webm", 16)):
        write_video(root / "videos" / name, rng.integers(0, 256, (T, 32, 32, 3), dtype=np.uint8), fps=8)
    (root / "videos" / "frames").mkdir()
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / "videos" / "frames" / f"{i}.png")
    video = lambda name: str(root / "videos" / name)  # noqa: E731
    rows = [
        {"id": "a", "video": video("a.mp4"), "question": "what colour ?", "options": ["red", "green", "blue"],
         "answer": "B"},
        {"id": "b", "video": video("b.webm"), "question": "how many ?", "options": ["1", "2", "3", "4"],
         "answer": "D"},
        {"id": "missing", "video": video("nope.mp4"), "question": "what ?", "options": ["x", "y"], "answer": "A"},
        {"id": "frames", "video": video("frames"), "question": "which shape ?", "options": ["a", "b"],
         "answer": "A"},
    ]  # fmt: skip
    write_manifest(root / f"{TASK}.jsonl", rows)
    return {"root": root, "model": model, "manifest": root / f"{TASK}.jsonl", "rows": rows}


def _entry_point_dir(root: Path) -> Path | None:
    """A folder whose dist-info declares hybridreduce's ``lmms_eval.models`` entry point, or None when the installed
    hybridreduce already declares it (pyproject's ``[project.entry-points."lmms_eval.models"]``)."""
    declared = importlib.metadata.entry_points(group="lmms_eval.models")
    if any(ep.value.startswith(hr.__name__) for ep in declared):
        return None
    info = root / "entry_points" / "hybridreduce_lmms_test-0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: hybridreduce-lmms-test\nVersion: 0\n")
    (info / "entry_points.txt").write_text(f"[lmms_eval.models]\nhybridreduce = {hr.__name__}:manifests\n")
    return info.parent


def _lmms_eval(files: dict, model_args: str, out: Path) -> subprocess.CompletedProcess:
    """``python -m lmms_eval`` on the task, in the data's folder, offline, on one thread."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HOME": str(files["root"] / "hf"), "HF_DATASETS_OFFLINE": "1",
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    extra = _entry_point_dir(files["root"])
    if extra is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(extra), env.get("PYTHONPATH")) if p)
    command = [
        sys.executable, "-m", "lmms_eval", "--model", "hybridreduce", "--model_args", model_args, "--tasks", TASK,
        "--include_path", str(FIXTURES), "--output_path", str(out), "--log_samples",
        "--verbosity", "DEBUG",  # lmms-eval re-raises an error (exit status 1) only at DEBUG; else it exits 0
    ]  # fmt: skip
    return subprocess.run(command, cwd=files["root"], env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def launches(files) -> dict:
    """Each run of :data:`LAUNCHES`: its results, samples (by doc id), side-file lines and summary."""
    found = {}
    for name, (args, setting) in LAUNCHES.items():
        out = files["root"] / "out" / name
        done = _lmms_eval(files, f"pretrained={files['model']},frames={FRAMES},evs=0{args}", out)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        folders = [p.parent for p in out.glob("*/*_results.json")]
        assert len(folders) == 1, f"no results written: {sorted(out.rglob('*'))}\n{done.stderr[-3000:]}"
        folder = folders[0]
        side = list(folder.glob(f"*_hybridreduce_{setting}.jsonl"))
        assert len(side) == 1, f"the side file is not beside lmms-eval's results: {sorted(out.rglob('*'))}"
        found[name] = {
            "results": json.loads(next(folder.glob("*_results.json")).read_text()),
            "samples": {s["doc_id"]: s for s in map(json.loads, next(folder.glob("*_samples_*.jsonl")).open())},
            "side": [json.loads(line) for line in side[0].open()],
            "summary": json.loads(side[0].with_name(side[0].name.replace(".jsonl", ".summary.json")).read_text()),
        }
    return found


def test_lmms_eval_writes_results_and_the_side_file(launches, files):
    n_blocks = 6  # the tiny Nemotron-H language model
    for got in launches.values():
        assert got["results"]["results"][TASK]["accuracy,none"] is not None
        assert sorted(got["samples"]) == [0, 1, 2, 3]
        lines = {r["doc_id"]: r for r in got["side"]}
        assert sorted(lines) == [0, 1, 2, 3] and all(r["task"] == TASK for r in lines.values())
        assert "nope.mp4" in lines[2]["error"] and got["samples"][2]["filtered_resps"] == ""  # scored wrong, run on
        for k in (0, 1, 3):
            r = lines[k]
            assert r["frames"] == FRAMES and r["n_visual"] == 16 and r["evs_visual"] == 16
            assert len(r["block_visual"]) == n_blocks and r["block_keep"] == [b / 16 for b in r["block_visual"]]
            assert r["average_keep"] == pytest.approx(np.mean(r["block_keep"]), abs=1e-6)
            assert r["prefill_s"] > 0 and r["config"]["frames"] == FRAMES and r["config"]["max_new_tokens"] == 4
            assert got["samples"][k]["filtered_resps"] == r["response"]
        task = got["summary"]["tasks"][TASK]
        assert (task["items"], task["answered"], task["errors"]) == (4, 3, 1) and task["prefill_s"] > 0


def test_keep_one_answers_as_no_reduction(launches):
    full, kept = launches["full"], launches["keep1"]
    assert {k: s["filtered_resps"] for k, s in kept["samples"].items()} == {
        k: s["filtered_resps"] for k, s in full["samples"].items()
    }
    for r in kept["side"]:
        if "error" not in r:
            assert r["block_visual"] == [r["n_visual"]] * 6 and r["average_keep"] == 1.0
            assert r["config"]["schedule"]["method"] == "progressive" and r["config"]["schedule"]["keep"] == 1.0
    assert all(r["config"]["schedule"] is None for r in full["side"])


def test_lmms_eval_answers_as_hybridreduce_run(launches, files, tmp_path):
    """Same frames, prompt and answer as ``hybridreduce run`` on the same manifest (the task's text is run's)."""
    from hybridreduce.vlm import load

    settings = settings_for("progressive", evs=0.0, keep=1.0)
    rows = read_predictions(
        run(load(files["model"]), read_manifest(files["manifest"]), tmp_path, settings, frames=FRAMES,
            max_new_tokens=4, progress=False)  # the task's max_new_tokens
    )  # fmt: skip
    for launch, setting in (("full", "full"), ("keep1", "progressive@1")):
        mine = {r["doc_id"]: r for r in launches[launch]["side"]}
        for r in (r for r in rows if r["setting"] == setting):
            line = mine[r["index"]]
            if "error" in r:
                assert line["error"] == r["error"]
                continue
            keys = ("text", "frames", "n_visual", "evs_visual", "average_keep")
            assert {k: line[k] for k in keys} == {k: r[k] for k in keys}
            assert line["config"] == r["config"]


# --- in this process --------------------------------------------------------------------------------------------


def _requests(rows: list[dict], task: str = TASK) -> list[Instance]:
    """lmms-eval's generate_until requests for manifest ``rows``, as its task would build them."""
    from tests.fixtures.lmms_eval import utils

    return [
        Instance(
            request_type="generate_until",
            arguments=(
                utils.doc_to_text(row),
                {"max_new_tokens": 4, "until": ["\n\n"]},
                utils.doc_to_visual,
                k,
                task,
                "test",
            ),
            idx=0,
            metadata={"task": task, "doc_id": k, "repeats": 1},
        )
        for k, row in enumerate(rows)
    ]


def _answer(model: hr.HybridReduce, rows: list[dict]) -> tuple[list[str], list[dict]]:
    model.task_dict = {TASK: {"test": rows}}
    replies = model.generate_until(_requests(rows))
    return replies, [json.loads(line) for line in model.log_file.open()]


def test_reduced_setting_matches_run(files, tmp_path):
    """EVS and a schedule below keep 1: the same kept-token counts and answers as ``hybridreduce run``."""
    model = hr.HybridReduce(
        pretrained=str(files["model"]), schedule="progressive", keep=0.5, evs=0.25, frames=FRAMES,
        log_path=str(tmp_path / "side.jsonl"),
    )  # fmt: skip
    replies, side = _answer(model, files["rows"])
    settings = settings_for("progressive", evs=0.25, keep=0.5, full=False)
    rows = read_predictions(run(model.vlm, read_manifest(files["manifest"]), tmp_path / "run", settings,
                                frames=FRAMES, max_new_tokens=4, progress=False))  # fmt: skip
    assert [r["setting"] for r in side] == [r["setting"] for r in rows] == ["progressive@0.5+evs0.25"] * 4
    for line, r, reply in zip(side, rows, replies, strict=True):
        if "error" in r:
            assert line["error"] == r["error"] and reply == ""
            continue
        assert line["evs_visual"] == r["evs_visual"] == 12 and line["average_keep"] == r["average_keep"] < 0.5
        assert line["text"] == r["text"] and reply == line["response"] and line["config"] == r["config"]
    model.clean()
    summary = json.loads((tmp_path / "side.summary.json").read_text())
    assert summary["tasks"][TASK]["average_keep"] < 0.5


@pytest.mark.parametrize("family", ["llava_next_video", "llava_onevision"])
def test_every_family_has_its_model(files, tmp_path, family):
    checkpoint = save_tiny_vlm(tmp_path / family, family)
    model = hr.MODELS[f"hybridreduce_{family}"](
        pretrained=str(checkpoint), schedule="progressive", keep=0.5, frames=4, log_path=str(tmp_path)
    )
    replies, side = _answer(model, files["rows"][:1])
    expected = model.vlm.answer(
        model.vlm.prompt(read_video(files["rows"][0]["video"], num_frames=4), _requests(files["rows"][:1])[0].args[0]),
        model.setting.schedule, max_new_tokens=4,
    )  # fmt: skip
    assert side[0]["text"] == expected.text and side[0]["block_visual"] == expected.block_visual
    assert side[0]["average_keep"] < 0.6 and replies == [side[0]["response"]]


def test_images_are_the_frames_of_one_video(files):
    folder = files["root"] / "videos" / "frames"
    paths = sorted(folder.glob("*.png"), key=lambda p: int(p.stem))
    for frames, fps, max_frames in ((4, None, None), (None, 2.0, 5), (12, None, None)):
        want = read_video(folder, num_frames=frames, fps=fps, max_frames=max_frames)
        for visuals in (paths, [Image.open(p) for p in paths]):
            got = hr.request_video(visuals, frames, fps, max_frames)
            assert np.array_equal(got.frames, want.frames) and np.array_equal(got.indices, want.indices)
            assert np.allclose(got.timestamps, want.timestamps)
    one = hr.request_video([Image.open(paths[0])], frames=32)
    assert one.frames.shape == (1, 32, 32, 3)
    with pytest.raises(InputError, match="no video"):
        hr.request_video([])
    with pytest.raises(InputError, match="not an image"):
        hr.request_video([str(paths[0]), files["rows"][0]["video"]])


def test_stop_strings_and_command_line():
    assert hr.cut_at("B\n\nbecause", ["\n\n"]) == "B" and hr.cut_at("B", ["\n\n"]) == "B"
    assert hr.cut_at("x. B. y", [".", " y"]) == "x"
    line = hr.lmms_eval_command_line(["--model", "hybridreduce", "--output_path", "runs/x", "--tasks", "videomme"])
    assert (line.output_path, line.timezone) == ("runs/x", None)


def test_the_entry_point_names_a_model_per_family():
    registry = ModelRegistryV2()
    for manifest in hr.manifests():
        registry.register_manifest(manifest)
    assert registry.get_model_class("hybridreduce") is hr.HybridReduce
    assert registry.get_model_class("hybridreduce_llava_onevision") is hr.LlavaOnevision
    assert {cls.family for cls in hr.MODELS.values()} - {None} == {"nemotron_h_omni", "llava_next_video",
                                                                  "llava_onevision"}  # fmt: skip


@pytest.fixture(scope="module")
def text_only(tmp_path_factory) -> Path:
    """A saved checkpoint that is no video VLM (a tiny llama)."""
    path = tmp_path_factory.mktemp("llama")
    build_tiny_model("llama").save_pretrained(path)
    return path


BAD = {
    "unknown argument": ({"frame": 8}, InputError, "unknown model argument.*frame.*known ones are"),
    "no pretrained": ({"pretrained": None}, InputError, "needs pretrained=DIR"),
    "not a directory": ({"pretrained": "/nonexistent/ckpt"}, InputError, "pretrained '/nonexistent/ckpt' is not a dir"),
    "batch size": ({"batch_size": "auto"}, InputError, "one request at a time"),
    "frames and fps": ({"fps": 1.0}, InputError, "give one of frames"),
    "keep without a schedule": ({"keep": 0.5}, InputError, "no schedule to apply to"),
    "unknown schedule": ({"schedule": "fastest"}, InputError, "unknown schedule"),
    "evs out of range": ({"evs": 1.0}, InputError, r"evs \(--evs\) must be"),
    "depth cannot meet keep": ({"schedule": "progressive", "keep": 1e-9}, InputError, "cannot be met"),
    "text-only checkpoint": ({"pretrained": "TEXT"}, UnsupportedModelError, "not a supported video VLM"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_model_arguments_refused_before_any_request(case, files, text_only, tmp_path):
    changes, error, match = BAD[case]
    kwargs = {"pretrained": str(files["model"]), "frames": FRAMES, "log_path": str(tmp_path), **changes}
    if kwargs["pretrained"] == "TEXT":
        kwargs["pretrained"] = str(text_only)
    with pytest.raises(error, match=match):
        hr.HybridReduce(**kwargs)
    assert not list(tmp_path.iterdir())  # nothing written


def test_a_family_model_refuses_another_family(files):
    with pytest.raises(UnsupportedModelError, match="answers llava_onevision checkpoints only.*hybridreduce_nemotron"):
        hr.LlavaOnevision(pretrained=str(files["model"]))


def test_loglikelihood_is_refused(files, tmp_path):
    model = hr.HybridReduce(pretrained=str(files["model"]), frames=FRAMES, log_path=str(tmp_path))
    request = Instance("loglikelihood", ("q", " A", None, 0, "egoschema_mcppl", "test"), 0,
                       {"task": "egoschema_mcppl", "doc_id": 0, "repeats": 1})  # fmt: skip
    with pytest.raises(InputError, match="generate_until variant"):
        model.loglikelihood([request])


def test_lmms_eval_refuses_a_bad_argument_before_any_request(files):
    out = files["root"] / "out" / "bad"
    done = _lmms_eval(files, f"pretrained={files['model']},schedule=progressive,keep=1e-9", out)
    assert done.returncode != 0 and "cannot be met" in done.stdout + done.stderr
    assert not list(out.rglob("*_hybridreduce_*")) and not list(out.rglob("*_results.json"))
