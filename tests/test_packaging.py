"""The built wheel carries what a user of the package needs without the source tree: every schedule preset.

Issue 15: presets live in one place, shipped as package data (``hybridreduce.schedule``'s method table), not in
``configs/`` (which only writes them out). This test builds a wheel of the project, installs it into a temporary
directory and, in a fresh interpreter that imports ``hybridreduce`` from there (cwd elsewhere, so neither the
source tree nor the editable install can answer), loads every method's preset by name and compares it with the
in-tree values.

The wheel is built from a copy of the project's packaging inputs (``pyproject.toml``, ``README.md`` and the
packages), so that setuptools' ``build/`` and ``*.egg-info`` land in the temporary directory, not in the checkout.
It is built offline (``--no-build-isolation --no-index``) with the setuptools of the running environment.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from hybridreduce.schedule import METHODS, Schedule

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("hybridreduce", "analysis")  # [tool.setuptools.packages.find] include

#: Run in the installed copy: every method's preset, by name and through ``Schedule.load``, as plain data.
PROBE = """
import json, sys
from pathlib import Path
import hybridreduce
from hybridreduce.schedule import METHODS, Schedule

site = Path(sys.argv[1]).resolve()
assert Path(hybridreduce.__file__).resolve().is_relative_to(site), hybridreduce.__file__
out = {"file": hybridreduce.__file__, "methods": list(METHODS), "presets": {}}
for name in METHODS:
    preset, loaded = Schedule.preset(name), Schedule.load(name)
    assert loaded == preset, name
    plan = preset.resolve(24)
    out["presets"][name] = {
        "preset": preset.to_dict(), "load": loaded.to_dict(), "name": loaded.name,
        "plan": [list(plan.prune_points), list(plan.ratios)],
    }
print(json.dumps(out))
"""


def _in_tree() -> dict:
    out = {}
    for name in METHODS:
        preset, loaded = Schedule.preset(name), Schedule.load(name)
        plan = preset.resolve(24)
        out[name] = {
            "preset": preset.to_dict(),
            "load": loaded.to_dict(),
            "name": loaded.name,
            "plan": [list(plan.prune_points), list(plan.ratios)],
        }
    return json.loads(json.dumps(out))  # tuples -> lists, as the probe's JSON has them


def _run(args: list[str], **kw) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, timeout=600, **kw)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.mark.skipif(importlib.util.find_spec("setuptools") is None, reason="building the wheel needs setuptools")
def test_wheel_ships_every_preset(tmp_path):
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "partial")  # partial: training shards
    for package in PACKAGES:
        shutil.copytree(ROOT / package, src / package, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)

    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    dist = tmp_path / "dist"
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(dist), str(src)])
    (wheel,) = dist.glob("hybridreduce-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    assert "hybridreduce/schedule.py" in names
    assert not [n for n in names if n.startswith("configs/")], "presets must come from the package, not configs/"

    site = tmp_path / "site"
    _run([*pip, "install", "--no-deps", "--no-index", "-q", "--target", str(site), str(wheel)])
    assert not (site / "configs").exists()

    work = tmp_path / "elsewhere"  # cwd: neither the checkout nor the source copy
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "PYTHONNOUSERSITE": "1"}
    result = _run([sys.executable, "-c", PROBE, str(site)], cwd=work, env=env)
    installed = json.loads(result.stdout.strip().splitlines()[-1])

    assert Path(installed["file"]).resolve().is_relative_to(site.resolve())
    assert installed["methods"] == list(METHODS)
    expected = _in_tree()
    for name in METHODS:
        assert installed["presets"][name] == expected[name], name
        assert installed["presets"][name]["name"] == name
