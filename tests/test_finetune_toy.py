"""`hybridreduce finetune --model toy --data toy` on the shipped embedded checkpoint, and the experiment's configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hybridreduce.cli import main
from hybridreduce.finetune.cli import CONFIG_FIELDS
from hybridreduce.finetune.train import FinetuneConfig
from hybridreduce.yamlio import read_yaml

ARMS = sorted((Path(__file__).parents[1] / "configs" / "finetune").glob("toy_*.yaml"))


def test_the_arms_differ_only_in_schedule_and_keep():
    assert [p.stem for p in ARMS] == [
        "toy_ablation", "toy_calibrated", "toy_calibrated_merge", "toy_random", "toy_random_merge"
    ]  # fmt: skip
    raw = {p.stem: dict(read_yaml(p, "finetune config")) for p in ARMS}
    for values in raw.values():
        assert set(values) <= set(CONFIG_FIELDS)
        FinetuneConfig(**values).check()
    shared = [{k: v for k, v in values.items() if k not in ("schedule", "keep")} for values in raw.values()]
    assert all(s == shared[0] for s in shared)
    assert (raw["toy_calibrated"]["schedule"], raw["toy_calibrated"]["keep"]) == ("progressive-calibrated", 0.25)
    assert (raw["toy_random"]["schedule"], raw["toy_random"]["keep"]) == ("random", 0.25)
    assert raw["toy_ablation"]["schedule"] == "none" and "keep" not in raw["toy_ablation"]
    for arm in ("toy_calibrated", "toy_random"):
        merged = raw[arm + "_merge"]
        assert merged["schedule"] == raw[arm]["schedule"] + "+merge" and merged["keep"] == 0.25


def test_toy_finetune_trains_resumes_and_writes_a_demo_checkpoint(tmp_path, capsys):
    from hybridreduce.toy.demo import load_toy_spec

    out = tmp_path / "toy"
    # The random arm's config, made short by flags (which override it).
    arm = next(p for p in ARMS if p.stem == "toy_random")
    argv = ["finetune", "--model", "toy", "--data", "toy", "--out", str(out), "--config", str(arm), "--variant",
            "static", "--steps", "2", "--toy-items", "2", "--grad-accum", "1", "--lora-r", "2", "--save-steps", "1",
            "--eval-steps", "100", "--logging-steps", "1", "--no-progress"]  # fmt: skip
    assert main([*argv, "--max-minutes", "0"]) == 0
    assert "stopped after --max-minutes 0 at step 1" in capsys.readouterr().out
    assert (out / "checkpoint-1").is_dir() and not (out / "merged").exists()
    assert main([*argv, "--resume"]) == 0
    record = json.loads((out / "hybridreduce_finetune.json").read_text())
    assert record["toy"]["method"] == "random" and record["keep"] == 0.25 and record["toy"]["variants"] == ["static"]
    assert record["schedule"]["static"]["method"] == "random"
    assert record["config"]["lr"] == 0.0002 and record["config"]["lora_r"] == 2  # from the config, and a flag
    steps = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    kept = [r["visual_kept"] for r in steps if "visual_kept" in r]
    assert [r["step"] for r in steps if "loss" in r] == [1, 2] and all(0.2 < k < 0.3 for k in kept)
    model, spec = load_toy_spec(out / "merged")  # what `hybridreduce demo --checkpoint OUT/merged` loads
    assert model is not None and spec.configs


def test_toy_and_manifest_do_not_mix(tmp_path, capsys):
    assert main(["finetune", "--model", "toy", "--data", str(tmp_path / "x.jsonl"), "--out", str(tmp_path / "o")]) == 2
    assert "--model toy (or a train-toy directory) takes --data toy" in capsys.readouterr().err
    code = main(["finetune", "--model", "toy", "--data", "toy", "--out", str(tmp_path / "o"), "--schedule", "fancy"])
    assert code == 2 and "demo method" in capsys.readouterr().err
    pytest.importorskip("peft")


def test_ctrl_c_in_finetune_keeps_the_last_checkpoint_and_resumes(tmp_path, capsys, monkeypatch):
    """Ctrl-C while training: one line, exit 130, the checkpoint saved before it whole, and --resume finishes."""
    from transformers import Trainer

    out = tmp_path / "toy"
    arm = next(p for p in ARMS if p.stem == "toy_random")
    argv = ["finetune", "--model", "toy", "--data", "toy", "--out", str(out), "--config", str(arm), "--variant",
            "static", "--steps", "3", "--toy-items", "3", "--grad-accum", "1", "--lora-r", "2", "--save-steps", "1",
            "--eval-steps", "100", "--logging-steps", "1", "--no-progress"]  # fmt: skip
    step = Trainer.training_step
    calls = []

    def interrupted_at_the_second_step(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return step(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "training_step", interrupted_at_the_second_step)
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "interrupted" in err and "Traceback" not in err, err
    assert (out / "checkpoint-1" / "adapter_model.safetensors").is_file() and not (out / "checkpoint-2").exists()
    monkeypatch.setattr(Trainer, "training_step", step)
    assert main([*argv, "--resume"]) == 0
    steps = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps if "loss" in r][-2:] == [2, 3] and (out / "merged").is_dir()
