"""Bad input to `analyze`, `plot`, `demo`, `train-toy` and `verify --model`, and to the schedule and analysis-config
APIs; what `analyze` does on Ctrl-C and with a directory that already holds a run.

Every refusal exits 2 (from Python: raises InputError) with one line that names the value or the setting and the
fix, before any model loads or any scoring runs, and leaves every file already written as it was (checksums of the
whole test folder before and after). `test_the_checks_can_fail` shows that each of those checks catches what it is
there to catch. (`run`, `generate`, `merge` and `bench` have theirs in test_run_bad_input.py.)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import analysis.cli
import analysis.run as collect_module
import hybridreduce.toy.demo as demo_module
import hybridreduce.toy.train as train_module
from analysis.config import AnalysisConfig
from analysis.plots import PartialRun, plot_run
from analysis.run import Interrupted, collect
from analysis.rundir import read_metrics
from hybridreduce import InputError, Schedule, reduce, validate
from hybridreduce.cli import main
from hybridreduce.tiny_models import build_tiny_model
from hybridreduce.toy.train import train

from .conftest import tiny_toy_raw, tiny_toy_spec
from .test_run_bad_input import digest, refused  # one copy of the checksum and refusal checks

#: A tiny analysis run: 4 random prompts in 2 batches on a 4-block Jamba-pattern model, both Mamba scorers.
TINY = {
    "model": {"tiny": "jamba"},
    "samples": 4,
    "batch_size": 2,
    "keep": 0.5,
    "prompt": {"prefix": 2, "visual": 16, "question": 4},
}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def write_config(path: Path, settings: dict | None = None, text: str | None = None) -> Path:
    """An analysis config: ``settings`` under ``analysis:``, or ``text`` verbatim."""
    path.write_text(text if text is not None else yaml.safe_dump({"analysis": settings}, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """In one folder (``root``, whose checksums every refusal compares): an analysis run with its plots, its config,
    a tiny train-toy run, a saved tiny checkpoint, a plain file."""
    root = tmp_path_factory.mktemp("bad")
    config = write_config(root / "tiny.yaml", TINY)
    assert main(["analyze", "--config", str(config), "--out", str(root / "run"), "--no-progress"]) == 0
    assert main(["plot", str(root / "run")]) == 0
    toy = root / "toy_run"
    train(tiny_toy_spec(eval_every=1, eval_size=4, test_size=4), toy, progress=False)
    (root / "toy.yaml").write_text(yaml.safe_dump(tiny_toy_raw(eval_every=1, eval_size=4, test_size=4)))
    build_tiny_model("jamba").save_pretrained(root / "ckpt")
    (root / "a_file.txt").write_text("a file, not a directory\n")
    return {"root": root, "config": config, "run": root / "run", "toy": toy, "toy_yaml": root / "toy.yaml",
            "ckpt": root / "ckpt", "file": root / "a_file.txt"}  # fmt: skip


def expand(args: list[str], files: dict) -> list[str]:
    """``args`` with the placeholders FILE, ROOT and CKPT replaced by those paths of ``files``."""
    for placeholder, key in (("FILE", "file"), ("ROOT", "root"), ("CKPT", "ckpt")):
        args = [a.replace(placeholder, str(files[key])) for a in args]
    return args


def api_refused(call, match: str, root: Path, error: type[Exception] = InputError) -> Exception:
    """``call()`` raises ``error`` matching ``match``; nothing under ``root`` changed."""
    before = digest(root)
    with pytest.raises(error, match=match) as info:
        call()
    assert digest(root) == before, "a refused call changed files"
    return info.value


@pytest.fixture
def nothing_runs(monkeypatch):
    """Loading a model, scoring, training or the demo's evaluation fails the test: refusals come before them."""

    def ran(what):
        def fail(*args, **kwargs):
            raise AssertionError(f"{what} ran before the bad input was refused")

        return fail

    monkeypatch.setattr(collect_module, "load_model", ran("analysis.run.load_model"))
    monkeypatch.setattr(demo_module, "run_demo", ran("the demo's evaluation"))
    monkeypatch.setattr(train_module, "train", ran("train-toy's training"))


@pytest.fixture
def read_only(files, monkeypatch):
    """A folder ``root/read_only`` that os.access reports as not writable (the tests may run as root, who writes
    anywhere; validate.writable_dir asks os.access, as a read-only file system or a chmod would answer)."""
    folder = files["root"] / "read_only"
    real_access = os.access
    monkeypatch.setattr(validate.os, "access", lambda p, mode: Path(p) != folder and real_access(p, mode))
    folder.mkdir()
    yield folder
    folder.rmdir()


# --- analyze ----------------------------------------------------------------------------------------------------
#: case -> (analysis config text, fragments of the error line; ``bad.yaml:N:`` is the line the message must name)
CONFIG_CASES = {
    "empty config": ("", ["analysis config", "holds no settings", "model: toy"]),
    "empty analysis section": ("analysis:\n", ["holds no settings"]),
    "samples abc": ("analysis:\n  samples: abc\n", ["bad.yaml:2:", "samples must be an integer >= 1", "'abc'"]),
    "keep abc": ("analysis:\n  model: toy\n  keep: abc\n", ["bad.yaml:3:", "keep must be a number in (0, 1]"]),
    "keep true": ("analysis:\n  model: toy\n  keep: true\n", ["bad.yaml:3:", "keep", "True"]),
    "unknown setting": ("analysis:\n  model: toy\n\n  sampels: 3\n", ["bad.yaml:4:", "settings ['sampels']"]),
    "unknown schedule": ("analysis:\n  schedule: nosuch\n", ["bad.yaml:2:", "unknown schedule 'nosuch'"]),
    "schedule keep abc": ("analysis:\n  schedule: {keep: abc}\n", ["bad.yaml:2:", "schedule keep must lie in"]),
    "scorers a number": ("analysis:\n  scorers: 5\n", ["bad.yaml:2:", "scorers must list distinct modes"]),
    "kendall maybe": ("analysis:\n  kendall: maybe\n", ["bad.yaml:2:", "kendall must be true or false"]),
    "overlay_blocks a number": ("analysis:\n  overlay_blocks: 3\n", ["overlay_blocks must be a list"]),
    "tiny arch a list": ("analysis:\n  model: {tiny: [1]}\n", ["bad.yaml:2:", "no tiny architecture"]),
    "missing file": (None, ["analysis config", "missing.yaml does not exist"]),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_analyze_refuses_a_bad_config(files, capsys, nothing_runs, case):
    text, fragments = CONFIG_CASES[case]
    root = files["root"]
    config = root / "missing.yaml" if text is None else write_config(root / "bad.yaml", text=text)
    try:
        refused(["analyze", "--config", str(config), "--out", str(root / "new")], fragments, root, capsys)
    finally:
        (root / "bad.yaml").unlink(missing_ok=True)
    assert not (root / "new").exists()


#: case -> (flags with the good tiny config, fragments of the error line)
ANALYZE_CASES = {
    "samples 0": (["--samples", "0"], ["samples (--samples)", ">= 1", "got 0"]),
    "shard 3/2": (["--shard", "3/2"], ["shard (--shard) 3/2"]),
    "out is a file": (["--out", "FILE"], ["a_file.txt", "is a file, not a directory"]),
    "out under a file": (["--out", "FILE/run"], ["lies under the file", "a_file.txt"]),
    "out holds a run": (["--out", "ROOT/run"], ["already holds an analysis run of 4 samples", "--overwrite"]),
    "out holds other files, even with --overwrite": (["--out", "ROOT/toy_run", "--overwrite"], ["not an analysis run"]),
    "a shard already there": (["--out", "ROOT/shards", "--shard", "0/2"], ["shard 0/2 is already in", "--overwrite"]),
}


@pytest.mark.parametrize("case", list(ANALYZE_CASES))
def test_analyze_refuses(files, capsys, nothing_runs, case):
    extra, fragments = ANALYZE_CASES[case]
    root = files["root"]
    if case == "a shard already there":
        (root / "shards" / "shard-0-of-2").mkdir(parents=True)
        (root / "shards" / "shard-0-of-2" / "shard.json").write_text("{}\n")
    argv = ["analyze", "--config", str(files["config"]), "--out", str(root / "new"), *expand(extra, files)]
    try:
        refused(argv, fragments, root, capsys)
    finally:
        shutil.rmtree(root / "shards", ignore_errors=True)
    assert not (root / "new").exists()


def test_analyze_refuses_a_read_only_out(files, capsys, nothing_runs, read_only):
    argv = ["analyze", "--config", str(files["config"]), "--out", str(read_only / "run")]
    refused(argv, ["read_only", "not writable"], files["root"], capsys)


# --- plot -------------------------------------------------------------------------------------------------------
def test_plot_refuses(files, capsys, read_only):
    root, run = files["root"], str(files["run"])
    refused(["plot", str(root / "nowhere")], ["does not exist", "not an analysis run directory"], root, capsys)
    refused(["plot", str(files["toy"])], ["has no metrics.json"], root, capsys)
    refused(["plot", run, "--out", str(files["file"])], ["a_file.txt", "is a file"], root, capsys)
    refused(["plot", run, "--out", str(files["file"] / "plots")], ["lies under the file"], root, capsys)
    refused(["plot", run, "--out", str(read_only / "plots")], ["read_only", "not writable"], root, capsys)


# --- demo -------------------------------------------------------------------------------------------------------
DEMO_CASES = {
    "out is a file": (["--out", "FILE"], ["a_file.txt", "is a file, not a directory"]),
    "out under a file": (["--out", "FILE/demo"], ["lies under the file"]),
    "size 0": (["--size", "0"], ["size (--size)", ">= 1", "got 0"]),
    "size -3": (["--size", "-3"], ["size (--size)", "got -3"]),
    "quick and full": (["--quick", "--full"], ["--quick and --full"]),
    "checkpoint nowhere": (["--checkpoint", "ROOT/nowhere"], ["checkpoint (--checkpoint)", "not a directory"]),
    "checkpoint without weights": (["--checkpoint", "ROOT/no_weights"], ["has config.json but no weights"]),
    "unknown method": (["--methods", "progressive,fastv2"], ["--methods", "fastv2", "choose from", "pyramiddrop"]),
    "keeps not numbers": (["--keeps", "0.25,half"], ["--keeps", "comma-separated", "half"]),
    "keep 1": (["--keeps", "0.5,1"], ["--keeps", "below 1"]),
    "keep 0": (["--keeps", "0"], ["keep 0 of --keeps"]),
}


@pytest.mark.parametrize("case", list(DEMO_CASES))
def test_demo_refuses_before_evaluating(files, capsys, nothing_runs, case):
    """The demo's table takes minutes: every refusal comes before it (run_demo would fail the test)."""
    root = files["root"]
    extra, fragments = DEMO_CASES[case]
    no_weights = root / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text("{}")
    argv = ["demo", "--no-progress", "--out", str(root / "demo"), *expand(extra, files)]
    try:
        refused(argv, fragments, root, capsys)
    finally:
        shutil.rmtree(no_weights)
    assert not (root / "demo").exists()


def test_demo_refuses_a_read_only_out(files, capsys, nothing_runs, read_only):
    refused(["demo", "--out", str(read_only / "demo")], ["read_only", "not writable"], files["root"], capsys)


# --- train-toy --------------------------------------------------------------------------------------------------
TRAIN_CASES = {
    "max-minutes -1": (["--max-minutes", "-1"], ["max_minutes (--max-minutes)", ">= 0", "got -1.0", "0 stops"]),
    "max-minutes nan": (["--max-minutes", "nan"], ["max_minutes (--max-minutes)", "got nan"]),
    "steps 0": (["--steps", "0"], ["steps (--steps)", ">= 1", "got 0"]),
    "resume with nothing to resume": (["--resume"], ["--resume: nothing to resume", "does not exist", "without"]),
    "resume in a folder without a saved state": (["--resume", "--out", "CKPT"], ["holds no trainer_state.pt"]),
    "out is a file": (["--out", "FILE"], ["a_file.txt", "is a file"]),
    "out under a file": (["--out", "FILE/run"], ["lies under the file"]),
    "init-from nowhere": (["--init-from", "ROOT/nowhere"], ["init_from (--init-from", "not a directory"]),
    "missing config": (["--config", "ROOT/missing.yaml"], ["config (--config)", "missing.yaml", "looked for"]),
}


@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_train_toy_refuses(files, capsys, nothing_runs, case):
    root = files["root"]
    extra, fragments = TRAIN_CASES[case]
    argv = ["train-toy", "--config", str(files["toy_yaml"]), "--out", str(root / "new_run"), "--no-progress"]
    argv += expand(extra, files)
    refused(argv, fragments, root, capsys)
    assert not (root / "new_run").exists()  # not even an empty folder


def test_train_toy_refuses_a_read_only_out(files, capsys, nothing_runs, read_only):
    argv = ["train-toy", "--config", str(files["toy_yaml"]), "--out", str(read_only / "run")]
    refused(argv, ["read_only", "not writable"], files["root"], capsys)


def test_train_toy_says_where_it_looked_for_the_default_config(files, capsys, nothing_runs, monkeypatch):
    monkeypatch.chdir(files["root"])  # no configs/ here
    line = refused(["train-toy", "--out", "new_run"], [], files["root"], capsys)
    assert f"looked for {files['root'] / 'configs' / 'toy.yaml'}" in line and "pass --config PATH" in line
    assert "does not exist; the default is" not in line


def test_train_toy_max_minutes_0_stops_at_the_first_evaluation(files, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train-toy", "--config", str(files["toy_yaml"]), "--out", str(out), "--no-progress", "--steps", "3"]
    assert main([*argv, "--max-minutes", "0"]) == 0
    assert "stopped after --max-minutes 0; continue with the same command plus --resume" in capsys.readouterr().out
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert log[-1] == {"event": "stop", "step": 1, "reason": "max_minutes=0.0"}
    assert main([*argv, "--resume"]) == 0 and (out / "eval.json").is_file()


# --- verify --model ---------------------------------------------------------------------------------------------
def _break_config(folder: Path) -> None:
    (folder / "config.json").write_text("{not json")


def _no_weights(folder: Path) -> None:
    (folder / "model.safetensors").unlink()


def _config_a_list(folder: Path) -> None:
    (folder / "config.json").write_text("[1, 2]")


def _unknown_model_type(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"model_type": "nosuchmodel"}))


def _corrupt_weights(folder: Path) -> None:
    (folder / "model.safetensors").write_bytes(b"not safetensors")


VERIFY_CASES = {
    "garbage config.json": (_break_config, ["config.json is not valid JSON", "line 1", "save_pretrained"]),
    "no weights": (_no_weights, ["has config.json but no weights", "model.safetensors"]),
    "config.json a list": (_config_a_list, ["config.json holds a list, not a model config"]),
    "unknown model_type": (_unknown_model_type, ["cannot load it", "nosuchmodel", "model_type"]),
    "corrupt weights": (_corrupt_weights, ["cannot load it", "weight files"]),
}


@pytest.mark.parametrize("case", list(VERIFY_CASES))
def test_verify_refuses_a_broken_checkpoint(files, tmp_path, capsys, case):
    breaks, fragments = VERIFY_CASES[case]
    folder = tmp_path / "ckpt"
    shutil.copytree(files["ckpt"], folder)
    breaks(folder)
    refused(["verify", "--model", str(folder)], ["model (--model)", *fragments], tmp_path, capsys)


# --- schedules and analysis configs from Python -----------------------------------------------------------------
SCHEDULE_CASES = {
    "keep True": (lambda: Schedule(keep=True), "keep", r"keep must lie in \(0, 1\].*True \(a bool, not a number\)"),
    "keep '0.5'": (lambda: Schedule(keep="0.5"), "keep", r"got '0.5' \(a string, not a number"),
    "keep nan": (lambda: Schedule(keep=float("nan")), "keep", r"keep must lie in \(0, 1\]"),
    "first_prune 'x'": (lambda: Schedule(first_prune="x"), "first_prune", "block index .* or a fraction .* got 'x'"),
    "first_prune True": (lambda: Schedule(first_prune=True), "first_prune", "a bool"),
    "first_prune 1.5": (lambda: Schedule(first_prune=1.5), "first_prune", "got 1.5"),
    "stages 2.5": (lambda: Schedule(stages=2.5), "stages", "number of cuts .* got 2.5"),
    "stages ['3']": (lambda: Schedule(stages=["3"]), "stages", "list of increasing block indices"),
    "ema 'abc'": (lambda: Schedule(ema="abc"), "ema", r"ema must lie in \(0, 1\].*'abc'"),
    "seed 'abc' in a preset": (lambda: Schedule.preset("random", seed="abc"), "seed", "seed must be an integer >= 0"),
    "seed -1": (lambda: Schedule(seed=-1), "seed", "got -1"),
    "method None": (lambda: Schedule(method=None), "method", "None is not one of progressive"),
    "shape 3": (lambda: Schedule(shape=3), "shape", "3 is not one of geometric"),
    "ratios a string": (lambda: Schedule(keep=None, shape="explicit", ratios="0.5"), "ratios", "list of keep"),
    "load None": (lambda: Schedule.load(None), None, "schedule must be a Schedule, a method name .* got None"),
    "load 3": (lambda: Schedule.load(3), None, "got 3"),
}


@pytest.mark.parametrize("case", list(SCHEDULE_CASES))
def test_schedule_settings_are_typed(files, case):
    call, field, match = SCHEDULE_CASES[case]
    exc = api_refused(call, match, files["root"])
    assert exc.field == field


#: case -> (schedule file text, fragment: ``s.yaml:LINE: ...``)
SCHEDULE_FILES = {
    "empty": ("", "holds no settings; write at least its method"),
    "only a comment": ("# nothing yet\n", "holds no settings"),
    "empty section": ("schedule:\n", "holds no settings"),
    "keep abc": ("# mine\nschedule:\n  method: progressive\n  keep: abc\n", "s.yaml:4: schedule keep must lie in"),
    "ema abc": ("method: random\nema: abc\n", "s.yaml:2: schedule ema must lie in (0, 1]"),
    "keep 1e-1": (
        "keep: 1e-1\n",
        "s.yaml:1: schedule keep must lie in (0, 1] (the fraction of visual tokens kept), "
        "got '1e-1' (a string: YAML reads an exponent without a dot",
    ),
    "unknown setting": ("method: uniform\n\nkep: 0.3\n", "s.yaml:3: unknown schedule settings ['kep']"),
    "contradiction": ("method: fastv\nstages: 2\n", "s.yaml:2: fastv is defined by"),
    "unknown method": ("method: magic\n", "s.yaml:1: schedule method 'magic' is an unknown schedule"),
    "section a number": ("schedule: 5\n", "s.yaml:1: schedule file section 'schedule' must hold a mapping"),
    "not YAML": ("keep: [0.5\n", "is not valid YAML"),
}


@pytest.mark.parametrize("case", list(SCHEDULE_FILES))
def test_schedule_files_name_the_file_and_line(tmp_path, case):
    text, fragment = SCHEDULE_FILES[case]
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as info:
        Schedule.load(path)
    assert fragment in str(info.value)
    with pytest.raises(InputError):  # the command line says the same
        Schedule.load(str(path))


def test_reduce_refuses_no_schedule(files, tiny_models):
    model = tiny_models("jamba")
    api_refused(lambda: reduce(model, None).__enter__(), "schedule must be a Schedule.* got None", files["root"])
    api_refused(lambda: reduce(model, "nosuch").__enter__(), "unknown schedule 'nosuch'", files["root"])


def test_analysis_api_refuses(files, nothing_runs):
    root, run = files["root"], files["run"]
    config = AnalysisConfig(**TINY)
    api_refused(lambda: AnalysisConfig(**TINY | {"samples": True}), "samples must be an integer >= 1", root)
    api_refused(lambda: AnalysisConfig(**TINY | {"device": 0}), "device must be a non-empty string", root)
    api_refused(lambda: AnalysisConfig(**TINY | {"schedule": {"keep": "abc"}}), "schedule keep must lie", root)
    api_refused(lambda: collect(config, files["file"]), "is a file, not a directory", root)
    api_refused(lambda: collect(config, files["toy"]), "holds files that are not an analysis run", root)
    api_refused(lambda: collect(config, run, overwrite=False), "already holds an analysis run of 4 samples", root)
    api_refused(lambda: plot_run(run, files["file"]), "is a file, not a directory", root)


# --- analyze: Ctrl-C, --overwrite, stale plots --------------------------------------------------------------------
def interrupt_at(monkeypatch, call: int) -> None:
    """Ctrl-C during the ``call``-th scoring forward (1-based; two per batch: one per scorer)."""
    real, calls = collect_module.score_batch, []

    def score(*args):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(collect_module, "score_batch", score)


@pytest.mark.filterwarnings("ignore::analysis.plots.PlotSkipped")
def test_ctrl_c_saves_a_partial_run_that_plot_marks(files, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    interrupt_at(monkeypatch, 4)  # in the second batch's second scorer: the first batch is whole
    assert main(["analyze", "--config", str(files["config"]), "--out", str(out), "--no-progress"]) == 130
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        "hybridreduce analyze: interrupted after 2 of 4 samples: the partial run is in run (metrics.json says "
        "partial); run again to score every sample"
    ]
    metrics = read_metrics(out)
    assert metrics["partial"] is True and metrics["samples_planned"] == 4 and metrics["model"]["samples"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no staging folder left
    with pytest.warns(PartialRun, match="PARTIAL RUN: 2 of 4 samples scored"):
        paths = plot_run(out, formats=("png",))
    assert {p.stem for p in paths} == {"sparsity", "stability", "survival", "schedule"}
    assert main(["plot", str(out)]) == 0
    assert "hybridreduce plot: warning: PARTIAL RUN: 2 of 4 samples scored" in capsys.readouterr().err
    refused(["analyze", "--config", str(files["config"]), "--out", str(out)],
            ["already holds a partial analysis run (2 of 4 samples)", "--overwrite"], tmp_path, capsys)  # fmt: skip


def test_ctrl_c_keeps_the_run_already_there(files, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    shutil.copytree(files["run"], out)
    before = digest(out)
    interrupt_at(monkeypatch, 3)
    argv = ["analyze", "--config", str(files["config"]), "--out", str(out), "--no-progress", "--overwrite"]
    assert main(argv) == 130
    assert "the partial run is in run.partial (metrics.json says partial); run is as it was" in capsys.readouterr().err
    assert digest(out) == before
    assert read_metrics(tmp_path / "run.partial")["partial"] is True


def test_ctrl_c_before_the_first_batch_writes_nothing(files, tmp_path, capsys, monkeypatch):
    interrupt_at(monkeypatch, 1)
    out = tmp_path / "run"
    assert main(["analyze", "--config", str(files["config"]), "--out", str(out), "--no-progress"]) == 130
    assert "interrupted before the first batch was scored; nothing written" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    interrupt_at(monkeypatch, 1)
    with pytest.raises(Interrupted) as info:  # from Python: a KeyboardInterrupt that says what it saved
        collect(AnalysisConfig(**TINY), out, progress=False, shard=(1, 2))
    assert info.value.saved is None and "a shard is kept only whole" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_a_real_sigint(files, tmp_path):
    """SIGINT from outside (as Ctrl-C sends it), in a fresh interpreter: exit 130, one line, no traceback."""
    out = tmp_path / "run"
    script = (
        "import os, signal, sys\n"
        # A suite started in the background (`cmd &`, nohup) hands its children SIGINT ignored, and Python then
        # installs no KeyboardInterrupt handler; restore the one an interactive interpreter has.
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "import analysis.run as c\n"
        "real, calls = c.score_batch, []\n"
        "def score(*args):\n"
        "    calls.append(1)\n"
        "    if len(calls) == 3:\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "    return real(*args)\n"
        "c.score_batch = score\n"
        "from hybridreduce.cli import main\n"
        f"sys.exit(main(['analyze', '--config', {str(files['config'])!r}, '--out', {str(out)!r}]))\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 130, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("hybridreduce")]
    assert len(lines) == 1 and "interrupted after 2 of 4 samples" in lines[0]
    assert read_metrics(out)["partial"] is True


def test_overwrite_replaces_the_whole_run(files, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(files["run"], out)
    assert (out / "scores_exact.safetensors").is_file() and (out / "plots" / "sparsity.png").is_file()
    config = write_config(tmp_path / "one.yaml", TINY | {"scorers": ["decay_free"], "samples": 2})
    argv = ["analyze", "--config", str(config), "--out", str(out), "--no-progress"]
    refused(argv, ["already holds an analysis run of 4 samples"], tmp_path, capsys)
    assert main([*argv, "--overwrite"]) == 0
    names = {p.name for p in out.iterdir() if not p.name.startswith(".hybridreduce")}  # its lock and manifest
    assert "scores_exact.safetensors" not in names and "plots" not in names  # nothing of the old run is left
    assert names == set(read_metrics(out)["files"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.yaml", "run"]


@pytest.mark.filterwarnings("ignore::analysis.plots.PlotSkipped")
def test_plot_removes_the_figures_of_an_earlier_plot(files, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(files["run"], out)
    (out / "plots" / "overlay_7.png").write_bytes(b"from another run")
    (out / "plots" / "relevance.pdf").write_bytes(b"from another run")
    (out / "plots" / "notes.txt").write_text("mine")
    paths = plot_run(out, formats=("png",))
    assert {p.name for p in (out / "plots").iterdir()} == {p.name for p in paths} | {"notes.txt"}


# --- the checks themselves ----------------------------------------------------------------------------------------
def test_the_checks_can_fail(files, tmp_path, capsys, monkeypatch):
    """Each assertion above can fail: a changed byte changes the checksums; a command that writes before refusing,
    one that exits 0, or a message without the fragment fails `refused`."""
    shutil.copytree(files["run"], tmp_path / "run")
    before = digest(tmp_path)
    metrics = tmp_path / "run" / "metrics.json"
    metrics.write_bytes(metrics.read_bytes().replace(b'"samples": 4', b'"samples": 5', 1))
    assert digest(tmp_path) != before
    (tmp_path / "run" / ".hidden").write_text("")  # a hidden leftover (a staging folder) is seen too
    assert set(digest(tmp_path)) - set(before) == {"run/.hidden"}

    def writes_then_refuses(args):
        (tmp_path / "written.txt").write_text("oops")
        raise InputError("refused too late")

    monkeypatch.setattr(analysis.cli, "cmd_plot", writes_then_refuses)
    with pytest.raises(AssertionError, match="a refused command changed files"):
        refused(["plot", str(tmp_path / "run")], ["refused too late"], tmp_path, capsys)
    monkeypatch.undo()
    with pytest.raises(AssertionError):  # plot succeeds: exit 0, not 2
        refused(["plot", str(files["run"]), "--out", str(tmp_path / "p")], [], tmp_path, capsys)
    with pytest.raises(AssertionError):  # the message lacks the fragment
        refused(["plot", str(tmp_path / "nowhere")], ["a fragment it does not say"], tmp_path, capsys)
    with pytest.raises(AssertionError, match="a refused call changed files"):
        api_refused(lambda: (metrics.write_text("{}"), Schedule(keep=2))[1], "keep", tmp_path)
