"""Issue 26, one test (or more) per class of failure a new user met, on the tiny toy model of tests/conftest.py:

1. outputs that share a folder (locks, manifests, refusal to replace, atomic writes);
2. work that did nothing reporting success;
3. duplicated or ambiguous requests;
5. malformed files (the property-based tests are in tests/test_fuzz_loaders.py);
6. Ctrl-C anywhere in a command: one line, exit 130, the outputs as promised;
7. refusals after expensive work;
8. plots whose series hide each other;
9. the demo's expected duration.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from hybridreduce.cli import main
from hybridreduce.errors import InputError, OutputError
from hybridreduce.rundir import MANIFEST_NAME, RunFolder, refuse_to_replace, write_text
from tests.conftest import tiny_toy_raw, tiny_toy_spec

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished tiny toy run (three steps, saved at each evaluation): a train-toy directory."""
    from hybridreduce.toy.train import train

    out = tmp_path_factory.mktemp("toy_run")
    train(tiny_toy_spec(eval_every=3, eval_size=4, test_size=4), out, progress=False)
    return out


def one_line(err: str) -> str:
    """The single line a refusal or an interruption prints (no traceback)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# 1. Outputs that share a folder ---------------------------------------------------------------------
HOLD = """
import sys, time
from hybridreduce.rundir import RunFolder
with RunFolder(sys.argv[1], command="hybridreduce demo --out held"):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_a_second_writer_is_refused_with_the_holders_pid_and_command(tmp_path, capsys):
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True, env={**os.environ,
        "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(InputError, match=rf"being written by pid {holder.pid} .*hybridreduce demo --out held"):
            RunFolder(out).__enter__()
        assert main(["demo", "--out", str(out), "--quick", "--no-progress"]) == 2
        assert f"pid {holder.pid}" in one_line(capsys.readouterr().err)
    finally:
        holder.kill()
        holder.wait()
    with RunFolder(out):  # the lock went with its process: nothing to clean up by hand
        pass


def test_shards_of_one_split_write_side_by_side_and_merge_waits_for_them(tmp_path):
    from hybridreduce.runner import merge

    with RunFolder(tmp_path, (0, 2)), RunFolder(tmp_path, (1, 2)):
        with pytest.raises(InputError, match="being written"):
            RunFolder(tmp_path, (1, 2)).__enter__()
        (tmp_path / "predictions.shard-0-of-2.jsonl").write_text("")
        with pytest.raises(InputError, match="shard-0-of-2 by pid .* is still being written"):
            merge(tmp_path)


def test_run_and_analyze_share_the_out_dir_rule_of_a_split(tmp_path):
    """One rule (hybridreduce.rundir.refuse_mixed_split) for both sharded commands: analyze used to accept a shard
    beside another split's shards and find out only at the merge."""
    from analysis.rundir import check_out_dir as analysis_out_dir
    from hybridreduce.runner import check_out_dir as run_out_dir

    (tmp_path / "shard-0-of-3").mkdir()
    (tmp_path / "shard-0-of-3" / "shard.json").write_text("{}")
    (tmp_path / "predictions.shard-0-of-3.jsonl").write_text("")
    for check in (lambda: analysis_out_dir(tmp_path, (0, 2)), lambda: run_out_dir(tmp_path, (0, 2))):
        with pytest.raises(InputError, match=r"shards of another split \(.*shard-0-of-3.*shard 0/2 would"):
            check()


def test_two_calibrations_in_one_folder_do_not_replace_each_others_files(run_dir, tmp_path, capsys):
    """Class 1's example: the second calibrate's calibration.json would replace the first's (its provenance)."""
    args = ["calibrate", "--model", str(run_dir), "--data", "toy", "--size", "8", "--keep", "0.5", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "a.yaml")]) == 0
    first = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert main([*args, "--out", str(tmp_path / "b.yaml")]) == 2
    err = one_line(capsys.readouterr().err)
    assert "already holds calibration.json, calibration.png, calibration.pdf (written by `hybridreduce calibrate" in err
    assert "--out " + str(tmp_path / "a.yaml") in err and "--overwrite" in err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == first
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())["files"]
    assert {"a.yaml", "calibration.json", "calibration.png", "calibration.pdf"} <= set(manifest)


def test_refusal_names_the_run_that_wrote_the_files(tmp_path):
    with RunFolder(tmp_path, command="hybridreduce demo --out x") as folder:
        folder.write_text("summary.json", "{}\n")
    refuse_to_replace(tmp_path, ["results.csv"], overwrite=False)  # not there: nothing to refuse
    refuse_to_replace(tmp_path, ["summary.json"], overwrite=True)
    with pytest.raises(InputError, match=r"already holds summary.json \(written by `hybridreduce demo --out x` at"):
        refuse_to_replace(tmp_path, ["summary.json"], overwrite=False)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_a_failed_write_keeps_the_previous_file(tmp_path, monkeypatch, code):
    """A full disk or a read-only folder mid-write: the previous file stays whole, no temporary file is left, and
    the error is one line that says so."""
    path = write_text(tmp_path / "summary.json", '{"old": true}\n')
    real = Path.write_bytes

    def half_then_fail(self, data):
        real(self, data[: len(data) // 2])
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(Path, "write_bytes", half_then_fail)
    with pytest.raises(OutputError, match="the previous file, if any, is kept"):
        write_text(path, json.dumps({"new": list(range(1000))}))
    assert path.read_text() == '{"old": true}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_a_killed_writer_leaves_the_old_file_or_the_new(tmp_path):
    """SIGKILL in the middle of writing a large file through atomic_path: the file is the old one, whole."""
    target = tmp_path / "weights.bin"
    target.write_bytes(b"old" * 10)
    script = (
        "import sys, time\nfrom hybridreduce.rundir import atomic_path\n"
        "with atomic_path(sys.argv[1]) as tmp:\n    f = open(tmp, 'wb'); f.write(b'x' * 10**6); f.flush()\n"
        "    print('writing', flush=True); time.sleep(60)\n"
    )
    writer = subprocess.Popen([sys.executable, "-c", script, str(target)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert writer.stdout.readline().strip() == "writing"
    writer.kill()
    writer.wait()
    assert target.read_bytes() == b"old" * 10


# 2. Work that did nothing --------------------------------------------------------------------------
def test_a_branch_from_a_finished_run_is_refused(run_dir, tmp_path, capsys):
    """Class 2's example: a branch of a run that finished all its steps would train 0 steps and hold its weights."""
    cfg = tmp_path / "toy.yaml"
    cfg.write_text(yaml.safe_dump(tiny_toy_raw(eval_every=3, eval_size=4, test_size=4)))
    argv = ["train-toy", "--config", str(cfg), "--out", str(tmp_path / "arm"), "--branch-from", str(run_dir)]
    assert main([*argv, "--no-progress"]) == 2
    assert "would train 0 steps; set train.steps (or --steps) above 3" in one_line(capsys.readouterr().err)
    assert not (tmp_path / "arm" / "model.safetensors").exists()


def test_calibrate_refuses_a_manifest_shorter_than_size(tmp_path, capsys):
    """Asking for 64 prompts of an 8-item manifest scored 8 and said nothing."""
    from hybridreduce.manifest import write_manifest
    from hybridreduce.tiny_models import build_tiny_model

    model = tmp_path / "model"
    build_tiny_model("nemotron_h").save_pretrained(model)
    manifest = tmp_path / "data.jsonl"
    write_manifest(manifest, [{"id": i, "video": "v.mp4", "question": "q?"} for i in range(8)])
    args = ["calibrate", "--model", str(model), "--data", str(manifest), "--out", str(tmp_path / "s.yaml")]
    assert main([*args, "--size", "64"]) == 2
    assert "has only 8 items; pass --size 8" in one_line(capsys.readouterr().err)


# 3. Duplicated or ambiguous requests ---------------------------------------------------------------
@pytest.mark.parametrize(
    "flags, message",
    [
        (["--keeps", "0.5,0.5"], "--keeps lists 0.5 more than once"),
        (["--keeps", "0.5,0.50"], "--keeps lists 0.5 more than once"),
        (["--methods", "random,random"], "--methods lists random more than once"),
        (["--methods", ","], "--methods needs at least one entry"),
    ],
)
def test_duplicate_list_entries_are_refused(tmp_path, capsys, monkeypatch, flags, message):
    import hybridreduce.toy.demo as demo

    monkeypatch.setattr(demo, "run_demo", lambda *a, **k: pytest.fail("the demo ran"))
    assert main(["demo", "--out", str(tmp_path / "d"), "--no-progress", *flags]) == 2
    assert message in one_line(capsys.readouterr().err)


def test_run_demo_refuses_duplicates_too():
    from hybridreduce.toy.demo import run_demo

    with pytest.raises(InputError, match=r"demo keeps \[0.25\] given more than once"):
        run_demo("unused", keeps=(0.25, 0.25), methods=("random",))
    with pytest.raises(InputError, match=r"demo methods \['random'\] given more than once"):
        run_demo("unused", keeps=(0.25,), methods=("random", "random"))


@pytest.mark.parametrize(
    "load, text",
    [
        ("schedule", "schedule:\n  method: progressive\n  keep: 0.25\n  keep: 0.5\n"),
        ("analysis", "analysis:\n  model: toy\n  samples: 4\n  samples: 8\n"),
        ("training", "train:\n  steps: 3\n  lr: 0.001\n  steps: 30\n"),
        ("scorer", "scorer:\n  mamba: exact\n  mamba: decay_free\n"),
    ],
)
def test_a_yaml_key_stated_twice_is_refused(tmp_path, load, text):
    """PyYAML keeps the last of two equal keys silently; every config the project reads refuses it instead."""
    from analysis.config import AnalysisConfig
    from hybridreduce.schedule import Schedule
    from hybridreduce.scoring.config import ScorerConfig
    from hybridreduce.toy.train_config import load_spec

    loaders = {"schedule": Schedule.load, "analysis": AnalysisConfig.from_yaml, "training": load_spec,
               "scorer": ScorerConfig.from_yaml}  # fmt: skip
    path = tmp_path / "config.yaml"
    path.write_text(text)
    line = text.count("\n")
    with pytest.raises(InputError, match=rf"config.yaml:{line}: '\w+' is set twice \(first on line \d\)"):
        loaders[load](path)


@pytest.mark.parametrize(
    "item, message",
    [
        ({"options": ["a cup", "a phone", "a cup"]}, "options A and C are the same"),
        ({"options": ["a cup", " A  Cup "]}, "options A and B are the same"),
        ({"options": ["only one"], "answer": "A"}, "one option ('only one') is no choice"),
        ({"question": "   "}, "'question' is empty"),
        ({"options": ["B", "A"], "answer": "A"}, "answer 'A' matches options A, B"),
        ({"options": ["a", ""]}, "option B is empty"),
    ],
)
def test_manifest_items_that_cannot_be_scored_are_refused(tmp_path, item, message):
    """A one-option item is always right (it inflated accuracy); repeated options and an ambiguous answer cannot be
    scored; an empty question asks nothing."""
    from hybridreduce.manifest import read_manifest, write_manifest

    path = tmp_path / "data.jsonl"
    write_manifest(path, [{"id": "q", "video": "v.mp4", "question": "what?", **item}])
    with pytest.raises(InputError, match=rf"data.jsonl:1: .*{re.escape(message)}"):
        read_manifest(path)


def test_merge_refuses_shards_of_two_manifest_versions(tmp_path):
    """Shard 1 answered from a manifest with an item inserted: line 2 is another item in each shard file."""
    from hybridreduce.runner import merge

    def line(index, id_):
        return json.dumps({"index": index, "id": id_, "setting": "full", "qtype": "all", "answer": "A", "pred": "A",
                           "correct": True, "config": {}})  # fmt: skip

    (tmp_path / "predictions.shard-0-of-2.jsonl").write_text(line(0, "a") + "\n" + line(2, "c") + "\n")
    (tmp_path / "predictions.shard-1-of-2.jsonl").write_text(line(1, "new") + "\n" + line(2, "b") + "\n")
    with pytest.raises(InputError, match="two versions of the manifest"):
        merge(tmp_path)
    assert not (tmp_path / "predictions.jsonl").exists()


# 5. Malformed files ---------------------------------------------------------------------------------
def test_a_corrupted_weights_file_is_one_line(run_dir, tmp_path, capsys):
    import shutil

    bad = tmp_path / "run"
    shutil.copytree(run_dir, bad)
    weights = bad / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # a download that stopped early
    assert main(["demo", "--checkpoint", str(bad), "--out", str(tmp_path / "d"), "--quick", "--no-progress"]) == 2
    assert "cannot load it: 'model.safetensors' is not a readable safetensors file" in one_line(capsys.readouterr().err)


def test_a_binary_file_given_as_yaml_is_one_line(tmp_path, capsys):
    binary = tmp_path / "schedule.yaml"
    binary.write_bytes(bytes(range(256)))
    assert main(["bench", "--schedule", str(binary)]) == 2
    assert "is not a text file" in one_line(capsys.readouterr().err)


# 6. Ctrl-C anywhere ---------------------------------------------------------------------------------
def _interrupt(*_a, **_k):
    raise KeyboardInterrupt


@pytest.mark.parametrize(
    "target, point",
    [
        ("hybridreduce.cli.quiet_transformers", "start-up"),
        ("hybridreduce.toy.demo.run_demo", "compute"),
        ("hybridreduce.toy.demo.write_outputs", "writing"),
    ],
)
def test_ctrl_c_in_demo(run_dir, tmp_path, capsys, monkeypatch, target, point):
    """Ctrl-C at start-up, while answering, or while writing: one line, exit 130, and --out holds nothing
    half-written (here: nothing at all, since no earlier run was there)."""
    monkeypatch.setattr(target, _interrupt)
    out = tmp_path / "demo"
    argv = ["demo", "--checkpoint", str(run_dir), "--out", str(out), "--quick", "--size", "4", "--no-progress"]
    assert main(argv) == 130, point
    err = capsys.readouterr().err
    assert "interrupted" in one_line("\n".join(x for x in err.splitlines() if not x.startswith("demo: expect")))
    assert not out.exists() or not [p for p in out.iterdir() if not p.name.startswith(".hybridreduce.lock")]


@pytest.mark.parametrize(
    "target, point",
    [
        ("hybridreduce.cli.quiet_transformers", "start-up"),
        ("hybridreduce.calibrate.search", "compute"),
        ("hybridreduce.calibrate.plot_calibration", "writing"),
    ],
)
def test_ctrl_c_in_calibrate(run_dir, tmp_path, capsys, monkeypatch, target, point):
    """The schedule YAML is written first, then calibration.json, then the plots: an interrupted write leaves each
    file whole or absent."""
    monkeypatch.setattr(target, _interrupt)
    out = tmp_path / "s.yaml"
    argv = ["calibrate", "--model", str(run_dir), "--data", "toy", "--size", "8", "--keep", "0.5", "--out", str(out)]
    assert main([*argv, "--no-progress"]) == 130, point
    assert "interrupted" in one_line(capsys.readouterr().err)
    if out.exists():  # interrupted while plotting: what was written is complete
        assert "schedule:" in out.read_text() and json.loads((tmp_path / "calibration.json").read_text())
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_ctrl_c_while_calibrate_scores_keeps_the_prompts_scored(run_dir, tmp_path, capsys, monkeypatch):
    """The guide's promise: the scores of the prompts already scored are saved (<schedule>.scores.partial.pt), and
    one line says so."""
    from hybridreduce.calibrate import CalibrationScores
    from hybridreduce.toy import demo

    real = demo.calibration_batches

    def stopped(dataset, batch_size=32):  # two batches of 4, then Ctrl-C
        yield from itertools.islice(real(dataset, 4), 2)
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "calibration_batches", stopped)
    out = tmp_path / "s.yaml"
    argv = ["calibrate", "--model", str(run_dir), "--data", "toy", "--size", "12", "--keep", "0.5", "--out", str(out)]
    assert main([*argv, "--no-progress"]) == 130
    line = one_line(capsys.readouterr().err)
    assert "interrupted" in line and f"the scores of 8 prompts are saved in {tmp_path / 's.scores.partial.pt'}" in line
    assert CalibrationScores.load(tmp_path / "s.scores.partial.pt").n_prompts == 8 and not out.exists()


@pytest.mark.parametrize("target", ["hybridreduce.cli.quiet_transformers", "hybridreduce.toy.train.training_losses"])
def test_ctrl_c_in_train_toy(tmp_path, capsys, monkeypatch, target):
    cfg = tmp_path / "toy.yaml"
    cfg.write_text(yaml.safe_dump(tiny_toy_raw(eval_every=3, eval_size=4, test_size=4)))
    monkeypatch.setattr(target, _interrupt)
    assert main(["train-toy", "--config", str(cfg), "--out", str(tmp_path / "run"), "--no-progress"]) == 130
    assert "interrupted" in one_line(capsys.readouterr().err)


def test_ctrl_c_in_run_and_analyze_at_start_up(tmp_path, capsys, monkeypatch):
    """The README promises one line and exit 130; Ctrl-C while the model loads printed a traceback."""
    # both command lines bind hybridreduce.vlm.quiet_transformers at import: each is patched where it is called
    monkeypatch.setattr("analysis.cli.quiet_transformers", _interrupt)
    monkeypatch.setattr("hybridreduce.cli.quiet_transformers", _interrupt)
    config = tmp_path / "a.yaml"
    config.write_text("analysis:\n  model: {tiny: nemotron_h}\n  samples: 2\n  batch_size: 2\n")
    assert main(["analyze", "--config", str(config), "--out", str(tmp_path / "a"), "--no-progress"]) == 130
    assert "interrupted" in one_line(capsys.readouterr().err)
    monkeypatch.setattr("hybridreduce.manifest.read_manifest", _interrupt)
    model = tmp_path / "m"
    from hybridreduce.tiny_models import build_tiny_model

    build_tiny_model("nemotron_h").save_pretrained(model)
    assert main(["run", "--model", str(model), "--data", "x.jsonl", "--out", str(tmp_path / "r")]) == 130
    assert "interrupted" in one_line(capsys.readouterr().err)


@pytest.fixture(scope="module")
def run_files(tmp_path_factory):
    """A tiny saved Omni checkpoint and a 7-item manifest (3 answerable, 4 broken videos): tests/test_run.py's."""
    from tests.test_run import make_run_files

    return make_run_files(tmp_path_factory.mktemp("run_files"))


def _run_argv(run_files, out) -> list[str]:
    return ["run", "--model", str(run_files["model"]), "--data", str(run_files["manifest"]), "--out", str(out),
            "--frames", "8", "--no-progress"]  # fmt: skip


def _answers(path: Path) -> list[tuple]:
    """What a predictions file answered (timings left out: they differ between any two runs)."""
    from hybridreduce.runner import read_predictions

    return sorted((r["index"], r["setting"], r.get("pred"), r.get("error")) for r in read_predictions(path))


def _interrupt_on_call(monkeypatch, target: str, call: int) -> None:
    """Ctrl-C at the ``call``-th call (1-based) of ``target``; the calls before it run as usual."""
    import importlib

    *path, name = target.split(".")
    calls = []
    for k in range(len(path), 0, -1):  # the longest importable prefix, then attributes (a class's method)
        try:
            obj = importlib.import_module(".".join(path[:k]))
        except ImportError:
            continue
        for attr in path[k:]:
            obj = getattr(obj, attr)
        break
    real = getattr(obj, name)

    def interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(obj, name, interrupt)


@pytest.mark.parametrize(
    "target, call, point",
    [
        ("hybridreduce.vlm.load", 1, "loading the model"),
        ("hybridreduce.vlm.VLM.answer", 3, "answering (the third answer)"),
        ("hybridreduce.runner.write_summary", 1, "writing the summary"),
    ],
)
def test_ctrl_c_in_run(run_files, tmp_path, capsys, monkeypatch, target, call, point):
    """Ctrl-C while the model loads, while answering, or while the summary is written: one line, exit 130, every
    answer made before it kept whole in predictions.jsonl, and a rerun of the same command continues to the
    result of an uninterrupted run."""
    assert main(_run_argv(run_files, tmp_path / "whole")) == 0
    whole = _answers(tmp_path / "whole" / "predictions.jsonl")
    capsys.readouterr()
    out = tmp_path / "run"
    _interrupt_on_call(monkeypatch, target, call)
    assert main(_run_argv(run_files, out)) == 130, point
    line = one_line(capsys.readouterr().err)
    assert line.startswith("hybridreduce run: interrupted"), line
    kept = _answers(out / "predictions.jsonl")
    assert set(kept) <= set(whole)  # whole lines only, each as the uninterrupted run made it
    if point.startswith("answering"):
        assert len([k for k in kept if k[3] is None]) == 2  # the two answers made before the third
        assert "rerun the same command to continue" in line and str(out / "predictions.jsonl") in line
    assert not (out / "summary.json").exists()
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name] if out.exists() else True
    monkeypatch.undo()
    assert main(_run_argv(run_files, out)) == 0
    assert _answers(out / "predictions.jsonl") == whole and (out / "summary.json").is_file()


def test_a_real_sigint_during_run(run_files, tmp_path):
    """SIGINT (as Ctrl-C sends it) while answering, in a fresh interpreter: exit 130, one line, the answers made."""
    out = tmp_path / "run"
    script = (
        "import os, signal, sys\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"  # see tests/test_bad_input.py::test_a_real_sigint
        "import hybridreduce.vlm as v\n"
        "real, calls = v.VLM.answer, []\n"
        "def answer(*args, **kwargs):\n"
        "    calls.append(1)\n"
        "    if len(calls) == 3:\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "    return real(*args, **kwargs)\n"
        "v.VLM.answer = answer\n"
        "from hybridreduce.cli import main\n"
        f"sys.exit(main({_run_argv(run_files, out)!r}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 130, done.stderr[-2000:]
    assert "rerun the same command to continue" in one_line(done.stderr)
    assert 2 <= len([k for k in _answers(out / "predictions.jsonl") if k[3] is None]) <= 3


@pytest.fixture(scope="module")
def analysis_config(tmp_path_factory):
    """A 4-sample analysis of a tiny random Jamba (two batches) and a finished run of it."""
    root = tmp_path_factory.mktemp("analysis")
    config = root / "a.yaml"
    prompt = {"prefix": 2, "visual": 16, "question": 4}
    settings = {"model": {"tiny": "jamba"}, "samples": 4, "batch_size": 2, "keep": 0.5, "prompt": prompt}
    config.write_text(yaml.safe_dump({"analysis": settings}))
    assert main(["analyze", "--config", str(config), "--out", str(root / "run"), "--no-progress"]) == 0
    return config, root / "run"


def _digest(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else b"/" for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize(
    "target, call, point",
    [
        ("analysis.run.load_model", 1, "loading the model"),
        ("analysis.rundir.analyze_caches", 1, "measuring"),
        ("analysis.rundir.write_tables", 1, "writing the tables"),
        ("hybridreduce.rundir.Path.rename", 2, "moving the new run into place"),
    ],
)
def test_ctrl_c_in_analyze_after_scoring(analysis_config, tmp_path, capsys, monkeypatch, target, call, point):
    """Ctrl-C once every batch is scored (measuring, writing, installing; while scoring: tests/test_bad_input.py) or
    before: one line, exit 130, and --out exactly as it was (here a finished run, replaced only when complete)."""
    import shutil

    config, finished = analysis_config
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    before = _digest(out)
    _interrupt_on_call(monkeypatch, target, call)
    argv = ["analyze", "--config", str(config), "--out", str(out), "--no-progress", "--overwrite"]
    assert main(argv) == 130, point
    assert "interrupted" in one_line(capsys.readouterr().err)
    monkeypatch.undo()
    assert _digest(out) == before, point
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no staging folder, no old run moved aside


def test_a_real_sigint_during_train_toy(tmp_path):
    """SIGINT from outside, while training: exit 130, one line on stderr, and the saved checkpoint (if any) whole."""
    cfg = tmp_path / "toy.yaml"
    cfg.write_text(yaml.safe_dump(tiny_toy_raw(steps=400, eval_every=2, eval_size=4, test_size=4)))
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "hybridreduce", "train-toy", "--config", str(cfg), "--out", str(out), "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not (out / "trainer_state.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "interrupted" in one_line("\n".join(line for line in err.splitlines() if "step " not in line))
    from hybridreduce.toy.model import ToyVLM

    ToyVLM.from_pretrained(out)  # the last checkpoint loads: never half-written
    assert not [p for p in out.iterdir() if ".tmp-" in p.name or ".stage-" in p.name]


HALF = b"\x89PNG\r\n\x1a\n half of a file"


def _half_written(root: Path) -> list[Path]:
    """Files under ``root`` (hidden ones too) that hold what an interrupted write had put down."""
    return [p for p in root.rglob("*") if p.is_file() and HALF in p.read_bytes()]


@pytest.mark.parametrize("command", ["plot", "bench", "demo"])
def test_ctrl_c_while_a_figure_is_saved_leaves_no_half_figure(
    command, analysis_config, run_dir, tmp_path, capsys, monkeypatch
):
    """Ctrl-C in the middle of saving a figure (half of it is on disk when the interrupt arrives): one line, exit
    130, and no half-written file in the output folder."""
    import shutil

    from matplotlib.figure import Figure

    import hybridreduce.bench
    from tests.test_figures import _bench_result

    out = tmp_path / "out"
    if command == "plot":
        shutil.copytree(analysis_config[1], out)
        argv = ["plot", str(out)]
    elif command == "bench":  # the timings themselves are not what this is about
        monkeypatch.setattr(hybridreduce.bench, "build_bench_model", lambda *a, **k: None)
        monkeypatch.setattr(hybridreduce.bench, "run_bench", lambda cfg, s, keep, *a, **k: _bench_result(keep=keep))
        argv = ["bench", "--sweep", "0.5,0.25", "--visual-tokens", "64", "--out", str(out)]
    else:
        argv = ["demo", "--checkpoint", str(run_dir), "--out", str(out), "--quick", "--size", "4", "--no-progress"]

    def half(self, fname, *args, **kwargs):
        Path(fname).write_bytes(HALF)
        raise KeyboardInterrupt

    monkeypatch.setattr(Figure, "savefig", half)
    assert main(argv) == 130
    err = "\n".join(x for x in capsys.readouterr().err.splitlines() if not x.startswith(("demo: expect", "[bench]")))
    assert "interrupted" in one_line(err)
    assert not _half_written(tmp_path)


def test_ctrl_c_while_merge_writes_leaves_each_file_whole_or_absent(tmp_path, capsys, monkeypatch):
    """`merge` rewrites predictions.jsonl, then summary.json and results.csv: Ctrl-C half-way through a file."""
    from hybridreduce.runner import TIMINGS

    line = {"setting": "full", "qtype": "all", "answer": "A", "pred": "A", "correct": True, "config": {},
            "n_visual": 16, "evs_visual": 16, "average_keep": 1.0, **dict.fromkeys(TIMINGS, 0.1)}  # fmt: skip
    for shard in range(2):
        row = {"index": shard, "id": f"item-{shard}", **line}
        (tmp_path / f"predictions.shard-{shard}-of-2.jsonl").write_text(json.dumps(row) + "\n")
    real = Path.write_bytes

    def half(self, data):
        if self.name.endswith("summary.json"):
            real(self, HALF)
            raise KeyboardInterrupt
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", half)
    assert main(["merge", str(tmp_path)]) == 130
    assert "interrupted" in one_line(capsys.readouterr().err)
    assert not _half_written(tmp_path) and not (tmp_path / "summary.json").exists()
    assert [json.loads(x)["id"] for x in (tmp_path / "predictions.jsonl").read_text().splitlines()] == [
        "item-0", "item-1"
    ]  # fmt: skip


# 7. Refusals after expensive work -------------------------------------------------------------------
def test_a_budget_the_depth_cannot_meet_is_refused_before_scoring(run_dir, tmp_path, capsys, monkeypatch):
    """Class 7's example: calibrate --keep 1e-9 refused only after scoring every prompt."""
    import hybridreduce.calibrate as calibrate

    monkeypatch.setattr(calibrate, "score_prompts", lambda *a, **k: pytest.fail("scored before refusing"))
    argv = ["calibrate", "--model", str(run_dir), "--data", "toy", "--keep", "1e-9", "--out", str(tmp_path / "s.yaml")]
    assert main(argv) == 2
    assert "raise --keep" in one_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    "command, flags, message",
    [
        ("calibrate", ["--keep", "1e-9", "--size", "4"], "raise --keep"),
        ("run", ["--schedule", "fastv", "--keep", "0.5", "--no-full"], "keep=0.5"),
        ("generate", ["--schedule", "fastv", "--keep", "0.5"], "keep=0.5"),
    ],
)
def test_a_schedule_the_checkpoints_depth_cannot_meet_is_refused_before_the_weights_load(
    run_files, tmp_path, capsys, monkeypatch, command, flags, message
):
    """Class 7 on a real (saved) VLM: the depth comes from config.json (hybridreduce.vlm.layout), so an impossible
    budget costs no weight loading (minutes on a large checkpoint) and no scoring. fastv cuts once, before block 3
    of this 6-block model: an average keep of 0.5 or less cannot be met."""
    import hybridreduce.vlm

    monkeypatch.setattr(hybridreduce.vlm, "load", lambda *a, **k: pytest.fail("loaded the weights before refusing"))
    model, manifest = str(run_files["model"]), str(run_files["manifest"])
    where = {
        "calibrate": ["--data", manifest, "--out", str(tmp_path / "s.yaml")],
        "run": ["--data", manifest, "--out", str(tmp_path / "r")],
        "generate": ["--video", str(run_files["root"] / "videos" / "a.mp4"), "--question", "what ?", "--frames", "8"],
    }[command]
    assert main([command, "--model", model, *where, *flags]) == 2
    assert message in one_line(capsys.readouterr().err)
    assert not [p for p in tmp_path.iterdir()]  # and nothing written


@pytest.mark.parametrize("flags", [["--keep", "0.01"], ["--sweep", "0.5,0.01"]])
def test_bench_refuses_a_keep_its_model_cannot_meet_before_building_it(tmp_path, capsys, monkeypatch, flags):
    """The benchmark model's depth is its pattern's length: a keep the schedule cannot carry on it is refused before
    the model is built (and, in a sweep, before the earlier keeps are timed)."""
    import hybridreduce.bench

    monkeypatch.setattr(hybridreduce.bench, "build_bench_model", lambda *a, **k: pytest.fail("built the model"))
    out = ["--out", str(tmp_path / "b")] if "--sweep" in flags else []
    assert main(["bench", "--schedule", "fastv", "--visual-tokens", "64", *flags, *out]) == 2
    assert "0.01" in one_line(capsys.readouterr().err)


def test_calibrate_from_python_checks_the_budget_before_scoring(monkeypatch):
    import hybridreduce.calibrate as calibrate
    from hybridreduce.tiny_models import build_tiny_model

    monkeypatch.setattr(calibrate, "score_prompts", lambda *a, **k: pytest.fail("scored before refusing"))
    with pytest.raises(InputError, match="raise --keep"):
        calibrate.calibrate(build_tiny_model("nemotron_h"), [], keep=1e-9)


@pytest.mark.parametrize("keeps", ["nan", "inf", "0", "1e-9,nan"])
def test_demo_keeps_are_checked_before_the_model_loads(tmp_path, capsys, monkeypatch, keeps):
    import hybridreduce.toy.demo as demo

    monkeypatch.setattr(demo, "load_toy_spec", lambda *a, **k: pytest.fail("loaded the model before refusing"))
    assert main(["demo", "--keeps", keeps, "--out", str(tmp_path / "d")]) == 2
    assert "--keeps" in one_line(capsys.readouterr().err)


def test_a_calibrated_demo_method_at_an_infeasible_keep_is_refused_before_any_question(run_dir, monkeypatch):
    import hybridreduce.toy.demo as demo

    monkeypatch.setattr(demo, "calibrate_schedules", lambda *a, **k: pytest.fail("calibrated before refusing"))
    with pytest.raises(InputError, match="progressive-calibrated' at keep 1e-09 cannot run"):
        demo.run_demo(run_dir, size=4, keeps=(1e-9,), methods=("progressive-calibrated",), progress=False)


# 8. Plots -------------------------------------------------------------------------------------------
def _row(method, keep, accuracy, achieved, final=False, variant="static"):
    return {"variant": variant, "method": method, "keep": keep, "accuracy": accuracy, "per_type": {}, "speedup": 1.0,
            "seconds": 1.0, "visual_tokens": 10.0, "achieved_keep": achieved, "relevant_kept": accuracy,
            "block_visual": [48.0, 24.0, 12.0], "n": 8,
            "note": "average budget infeasible (x); run with final keep" if final else ""}  # fmt: skip


def _marker_styles(ax, names):
    lines = [line for line in ax.get_lines() if line.get_label() in names]
    return {line.get_label(): (line.get_color(), line.get_linestyle(), line.get_marker()) for line in lines}


def test_demo_figure_keeps_overlapping_methods_apart(tmp_path, figures):
    """Class 8's example: several methods at accuracy 0 (on the axis), two at the same point near keep 0.5, and a
    hollow final-keep point carried past the largest budget."""
    from hybridreduce.toy.demo import plot_summary

    methods = ["progressive", "fastv", "random", "evs"]
    rows = [_row("full", 1.0, 0.9, 1.0)]
    rows += [_row(m, k, 0.0, k) for m in methods[:3] for k in (0.25, 0.5)]  # three at y = 0, at the same x
    rows += [_row("evs", 0.25, 0.5, 0.25), _row("evs", 0.5, 0.0, 0.5)]
    rows += [_row("pyramiddrop", 0.5, 0.4, 0.71, final=True), _row("pyramiddrop", 0.25, 0.4, 0.47, final=True)]
    summary = {"results": rows, "variants": {"static": {"full_accuracy": 0.9, "chance": {"all": 0.25},
               "n_visual": 48}}, "full_accuracy": 0.9, "chance": {"all": 0.25}, "n_visual": 48, "n_questions": 8,
               "split": "test", "block_kinds": ["ssm", "attn", "mlp"]}  # fmt: skip
    plot_summary(summary, tmp_path)
    accuracy = figures[0]
    ax = accuracy.axes[0]
    names = [*methods, "pyramiddrop"]
    styles = _marker_styles(ax, names)
    assert len(set(styles.values())) == len(names)  # colour, dash and marker: no two methods alike
    labels = [t.get_text() for t in accuracy.legends[0].get_texts()]
    assert all(labels.count(m) == 1 for m in names)
    at_zero = [line for line in ax.get_lines() if line.get_label() in methods[:3]]
    xs = [tuple(line.get_xdata()) for line in at_zero]
    assert len(set(xs)) == 3  # coinciding points drawn side by side
    assert ax.get_ylim()[0] < 0  # a series at 0 is drawn above the axis line
    low, high = ax.get_xlim()
    every_x = [
        x for line in ax.get_lines() for x in line.get_xdata() if line.get_label() not in ("full tokens", "chance")
    ]
    assert all(low < x < high for x in every_x)
    assert max(ax.get_xticks()) >= 0.71 - 1e-9  # the hollow point at 0.71 lies within the labelled ticks


def test_calibration_figure_tells_the_presets_apart(tmp_path, figures):
    """In calibration.png the preset reference lines were identical grey dotted lines."""
    import torch

    from hybridreduce.calibrate import CalibrationScores, plot_calibration, search

    g = torch.Generator().manual_seed(0)
    scores = CalibrationScores(list(range(12)), 12, [torch.rand(12, 8, 16, generator=g).softmax(-1)], "toy")
    cal = search(scores, 0.5)
    plot_calibration(cal, tmp_path / "calibration")
    ax = figures[0].axes[0]
    presets = [line for line in ax.get_lines() if line.get_label().startswith("preset")]
    assert len(presets) >= 2
    assert len({line.get_color() for line in presets}) == len(presets)  # and each its own dash pattern
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert all(sum(text.startswith(line.get_label()) for text in legend) == 1 for line in presets)


# 9. The demo's duration -----------------------------------------------------------------------------
def test_the_demo_says_how_long_it_will_take(run_dir, tmp_path, capsys):
    argv = ["demo", "--checkpoint", str(run_dir), "--out", str(tmp_path / "d"), "--quick", "--size", "4"]
    assert main([*argv, "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "demo: expect about" in err and "on an idle 2-core CPU (longer under load)" in err


def test_the_default_demo_estimate_matches_the_guide():
    """docs/guides/reliability.md quotes the default demo's duration; the estimate it comes from is this."""
    from hybridreduce.toy.demo import DEFAULT_METHODS, KEEPS, expected_seconds

    minutes = expected_seconds(None, 192, KEEPS, DEFAULT_METHODS) / 60
    guide = (ROOT / "docs/guides/reliability.md").read_text()
    assert f"about {minutes:.0f} minutes" in guide


def test_every_promise_of_the_guide_names_a_test_that_exists():
    """docs/guides/reliability.md: each section names the tests that hold its promise, and each of them exists."""
    guide = (ROOT / "docs/guides/reliability.md").read_text()
    sections = re.split(r"^## ", guide, flags=re.M)[1:]
    for section in sections:
        title = section.splitlines()[0]
        named = re.findall(r"`((?:tests/\w+\.py::)?test_\w+)`", section)
        assert named, f"the section {title!r} names no test"
        for name in named:
            path, _, test = name.rpartition("::")
            source = (ROOT / (path or "tests/test_reliability.py")).read_text()
            assert re.search(rf"^def {test}\(", source, flags=re.M), f"{title!r} names {name}, which does not exist"
