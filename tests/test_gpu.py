"""Checks that need a CUDA GPU (``pytest -m cuda``); they skip without one. ``scripts/gpu_check.sh`` runs the
full-size versions (the 8B-shaped bench, ``verify --all`` in two dtypes) and writes one JSON."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(hidden=32, attn_heads=4, kv_heads=2, head_dim=8, mamba_head_dim=16, ssm_state=8, chunk_size=16)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_verify_on_cuda(dtype):
    from hybridreduce.verify import verify_arch

    failed = [f"{r.check}: {r.max_err} {r.detail}" for r in verify_arch("nemotron_h", "cuda", dtype) if not r.passed]
    assert not failed


def test_scores_on_cuda_equal_those_on_cpu(tiny_models):
    import copy

    from hybridreduce import capture

    from .conftest import prompt

    cpu = tiny_models("nemotron_h")
    gpu = copy.deepcopy(cpu).cuda()
    ids, vm = prompt(batch=2)
    for scorer in ("decay_free", "exact"):
        with capture(cpu, vm, scorer=scorer) as on_cpu, torch.no_grad():
            cpu(ids)
        with capture(gpu, vm.cuda(), scorer=scorer) as on_gpu, torch.no_grad():
            gpu(ids.cuda())
        assert on_cpu.layers == on_gpu.layers
        diff = (on_cpu.stack() - on_gpu.stack().cpu()).abs().max()
        assert diff < 1e-5, (scorer, float(diff))


def test_bench_on_cuda_measures_the_allocator():
    from hybridreduce.bench import BenchConfig, run_bench

    cfg = BenchConfig(**TINY, pattern="M-*M-*M-", visual_tokens=256)
    r = run_bench(cfg, "progressive", keep=0.25, repeats=1, decode_steps=2, device="cuda", dtype=torch.bfloat16)
    assert (r.device, r.dtype, r.memory_source) == ("cuda:0", "bfloat16", "cuda_allocator")
    assert r.mamba_path == ("kernel" if importlib.util.find_spec("mamba_ssm") else "torch")
    assert r.peak_bytes_full > 0 and r.peak_bytes_reduced > 0 and r.scoring_peak_bytes > 0
    assert 0 < r.kv_bytes_reduced < r.kv_bytes_full


@pytest.mark.skipif(
    importlib.util.find_spec("mamba_ssm") is None or importlib.util.find_spec("causal_conv1d") is None,
    reason="needs mamba-ssm and causal-conv1d",
)
def test_scores_on_the_kernel_path_equal_the_torch_path(tmp_path):
    """The taps read ``in_proj``'s output, which the kernel path computes too: same scores as the torch path."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import gpu_check
    finally:
        sys.path.pop(0)
    paths = {}
    for mamba in ("default", "torch"):
        paths[mamba] = tmp_path / f"{mamba}.pt"
        cmd = [sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--worker", "scores", "--tiny", "--device",
               "cuda", "--tokens", "256", "--dtype", "float32", "--mamba", mamba, "--scores", str(paths[mamba]),
               "--result", str(tmp_path / f"{mamba}.json")]  # fmt: skip
        subprocess.run(cmd, check=True, cwd=ROOT, timeout=600)
    report = gpu_check.compare_scores(str(paths["default"]), str(paths["torch"]))
    assert report["passed"], report
