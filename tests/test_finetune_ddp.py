"""`hybridreduce finetune` under torchrun: 2 CPU processes (gloo, DDP) follow the loss curve of one process with the
same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from hybridreduce.manifest import write_manifest

from .test_finetune import FRAMES
from .test_finetune import files as files  # noqa: F401 (the module fixture)
from .test_run import _free_port


def _losses(out) -> list[float]:
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def test_two_gloo_processes_follow_the_single_process_curve(files, tmp_path):  # noqa: F811
    # Answers of 2 to 5 tokens: each process's loss must be divided by the answer tokens of both (gathered).
    rows = [json.loads(x) for x in files["data"].read_text().splitlines()]
    rows[1] = {**rows[1], "options": [], "answer": "A B C D"}
    rows[2] = {**rows[2], "options": [], "answer": "the colour"}
    for r in rows:
        r["video"] = str(files["root"] / r["video"])
    data = tmp_path / "mixed.jsonl"
    write_manifest(data, rows)
    common = ["finetune", "--model", str(files["model"]), "--data", str(data), "--frames", str(FRAMES),
              "--steps", "3", "--lr", "0.01", "--lora-r", "4", "--save-steps", "10", "--no-progress"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run(
        [sys.executable, "-m", "hybridreduce", *common, "--batch-size", "2", "--out", str(tmp_path / "one")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
              str(_free_port()), "-m", "hybridreduce"]  # fmt: skip
    try:
        two = subprocess.run([*launch, *common, "--batch-size", "1", "--out", str(tmp_path / "two")], env=env,
                             capture_output=True, text=True, timeout=300)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"could not run 2 processes here: {exc}")
    if two.returncode != 0 and ("Address already in use" in two.stderr or "Connection refused" in two.stderr):
        pytest.skip("torchrun could not open its rendezvous port here")
    assert two.returncode == 0, two.stderr[-3000:]
    one_curve, two_curve = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    print("one process", one_curve, "\ntwo processes", two_curve)
    assert len(one_curve) == 3 and two_curve == pytest.approx(one_curve, abs=1e-5)
