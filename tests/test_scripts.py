"""scripts/ranking_before_llm.py: the demo claim's diagnostic runs and reports every ranking."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from ranking_before_llm import _evs_mask, top_share  # noqa: E402


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
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(ROOT / "scripts" / "ranking_before_llm.py"), "--size", "64", "--blocks", "0", "3"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    names = [line.split("  ")[0].strip() for line in lines[2:]]
    assert names == ["full", "block 0 (ssm)", "block 3 (ssm)", "evs", "random"]
    assert "100.0%" in lines[2].split()[3]  # full tokens keep every relevant token
