"""``hybridreduce bench``: its FLOP model, its timers and memory meters, the report, the CLI and its files (tiny sizes).

Nothing here asserts a timing: the machines that run the tests are shared. Memory is asserted where it is
deterministic (the scorers' tensor allocations) or a lower bound (a known allocation shows in the peak).
"""

from __future__ import annotations

import csv
import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from hybridreduce import InputError, Schedule, cli
from hybridreduce.bench import (
    BLOCK_COLUMNS,
    NEMOTRON_H_8B_PATTERN,
    NEMOTRON_H_PATTERN,
    SCALE_COLUMNS,
    BenchConfig,
    BlockTimer,
    block_flop_ratios,
    block_flops,
    build_bench_model,
    ideal_speedup,
    ideal_speedup_timed,
    mamba_scan_flops,
    nemotron_h_8b,
    run_bench,
    run_scale,
    scoring_peak_bytes,
    write_scale,
    write_sweep,
)
from hybridreduce.peakmem import PeakMemory, TensorAllocations, _status_kib

TINY = dict(hidden=32, attn_heads=4, kv_heads=2, head_dim=8, mamba_head_dim=16, ssm_state=8, chunk_size=16)


def test_pattern_is_nemotron_h_shaped():
    counts = {k: NEMOTRON_H_8B_PATTERN.count(k) for k in "M-*"}
    assert len(NEMOTRON_H_8B_PATTERN) == 52 and counts == {"M": 24, "-": 24, "*": 4}
    assert NEMOTRON_H_8B_PATTERN.startswith(NEMOTRON_H_PATTERN)
    counts = {k: NEMOTRON_H_PATTERN.count(k) for k in "M-*"}
    assert counts == {"M": 12, "-": 12, "*": 2}  # Nemotron-H-8B's 24 : 24 : 4, halved


def test_8b_shape():
    cfg = nemotron_h_8b(16384)
    assert (cfg.hidden, cfg.mlp_width, cfg.mamba_heads, cfg.attn_heads * cfg.head_dim) == (4096, 21504, 128, 4096)
    assert len(cfg.pattern) == 52 and cfg.visual_tokens == 16384


def test_flop_model():
    cfg = BenchConfig(**TINY, visual_tokens=256)
    full = [cfg.visual_tokens] * len(cfg.pattern)
    assert ideal_speedup(cfg, full) == 1.0
    # The kernel path's Mamba block and the MLP are linear; attention has a quadratic term.
    assert block_flops(cfg, "M", 200, "kernel") == 2 * block_flops(cfg, "M", 100, "kernel")
    assert block_flops(cfg, "-", 200) == 2 * block_flops(cfg, "-", 100)
    assert block_flops(cfg, "*", 200) > 2 * block_flops(cfg, "*", 100)
    half = [cfg.visual_tokens // 2] * len(cfg.pattern)
    linear = (256 + 32) / (128 + 32)  # text tokens are never dropped
    assert linear < ideal_speedup(cfg, half, "kernel") < linear**2
    with pytest.raises(InputError, match="mamba path"):
        mamba_scan_flops(cfg, 100, "cuda")


def test_torch_scan_pads_to_chunks_and_passes_states_quadratically():
    cfg = BenchConfig(**TINY)
    L, d_inner, N = cfg.chunk_size, 2 * cfg.hidden, cfg.ssm_state
    # Padding: a partial chunk costs a whole one.
    assert mamba_scan_flops(cfg, 2 * L + 1, "torch") == mamba_scan_flops(cfg, 3 * L, "torch")
    # The (c + 1) x (c + 1) state passing: doubling the chunks more than doubles the scan.
    quad = mamba_scan_flops(cfg, 4 * L, "torch") - 2 * mamba_scan_flops(cfg, 2 * L, "torch")
    assert quad == 2 * d_inner * N * ((4 + 1) ** 2 - 2 * (2 + 1) ** 2)
    assert mamba_scan_flops(cfg, 4 * L, "torch") > mamba_scan_flops(cfg, 4 * L, "kernel")


@pytest.mark.parametrize("n", [16, 40, 100])
def test_flop_model_counts_what_the_torch_path_computes(n):
    """Mamba and MLP blocks: the model's count equals torch's FLOP counter on transformers' own code
    (padding to whole chunks and the quadratic state passing included)."""
    cfg = BenchConfig(**TINY, pattern="M-", visual_tokens=64)
    model = build_bench_model(cfg)
    hidden = torch.randn(1, n, cfg.hidden)
    for block, kind in zip(model.model.layers, cfg.pattern, strict=True):
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            block(hidden)
        assert counter.get_total_flops() == block_flops(cfg, kind, n, "torch"), kind


def test_timed_ideal():
    cfg = BenchConfig(**TINY, pattern="M-*M-", visual_tokens=256)
    visual = [256, 128, 64, 64, 32]
    flops = [block_flops(cfg, k, 256 + cfg.text_tokens) for k in cfg.pattern]
    # Block times proportional to their FLOPs: the FLOP model itself.
    assert ideal_speedup_timed(cfg, visual, flops) == pytest.approx(ideal_speedup(cfg, visual))
    # All the time in one block: that block's own ratio.
    ratios = block_flop_ratios(cfg, visual)
    assert ideal_speedup_timed(cfg, visual, [0, 0, 1.0, 0, 0]) == pytest.approx(ratios[2])


# --------------------------------------------------------------------------------------------------
# Meters
# --------------------------------------------------------------------------------------------------
def test_tensor_allocations_count_new_storage_once():
    before = torch.randn(1000, 1000)  # 4 MB that exists before the context: never counted
    with TensorAllocations() as alloc:
        a = before * 2  # 4 MB
        view = a.t()  # a view: no new storage
        del a
        b = view + 1  # 4 MB; a's storage lives on through the view
        before.mul_(1)  # in place on an old tensor: nothing new
        del view  # a's storage is released
        c = b[:10].clone()  # 40 kB
    assert alloc.count == 3
    assert alloc.peak == 8_000_000
    assert alloc.live == 4_000_000 + 40_000
    del b, c
    assert alloc.live == 0


@pytest.mark.skipif(_status_kib("VmRSS") is None, reason="needs /proc/self/status (Linux)")
def test_peak_memory_sees_an_allocation():
    with PeakMemory("cpu") as peak:
        x = torch.ones(10_000_000)  # 40 MB, written (so resident)
        del x
    assert peak.source in ("process_rss", None)
    if peak.source is not None:  # clear_refs may be refused in a sandbox
        assert peak.bytes >= 35_000_000


def test_block_timer_times_every_block_and_leaves_no_hook():
    cfg = BenchConfig(**TINY, pattern="M-*", visual_tokens=32)
    model = build_bench_model(cfg)
    blocks = list(model.model.layers)
    ids = torch.randint(3, cfg.vocab, (1, 40))
    with BlockTimer(blocks, torch.device("cpu")) as timer, torch.no_grad():
        model(ids)
    assert len(timer.block_s) == 3 and all(t > 0 for t in timer.block_s)
    assert all(0 <= h <= t for h, t in zip(timer.hook_s, timer.block_s, strict=True))
    assert all(not b._forward_hooks and not b._forward_pre_hooks for b in blocks)
    with pytest.raises(RuntimeError, match="boom"), BlockTimer(blocks, torch.device("cpu")):
        raise RuntimeError("boom")
    assert all(not b._forward_hooks and not b._forward_pre_hooks for b in blocks)


@pytest.mark.parametrize("scorer", ["decay_free", "exact"])
def test_scoring_memory_grows_linearly(scorer):
    """What the scorers allocate is O(Q·V·h + T·d): it doubles with the prompt, never quadruples."""
    from dataclasses import replace

    cfg = BenchConfig(**TINY, pattern="M-*", visual_tokens=2048)
    model = build_bench_model(cfg)
    sizes = [256, 512, 1024, 2048]
    peaks = [scoring_peak_bytes(model, replace(cfg, visual_tokens=v), "progressive", scorer) for v in sizes]
    assert set(peaks[0]) == {"attention", "mamba"}
    for kind in ("attention", "mamba"):
        per_token = [p[kind] / (v + cfg.text_tokens) for p, v in zip(peaks, sizes, strict=True)]
        growth = [b[kind] / a[kind] for a, b in zip(peaks[:-1], peaks[1:], strict=True)]
        print(kind, scorer, [p[kind] for p in peaks], [f"{g:.3f}" for g in growth])
        assert all(1.5 < g < 2.2 for g in growth), (kind, growth)  # O(T²) would give ~4
        assert max(per_token) < 1.3 * min(per_token), (kind, per_token)
    # The control: a T x T allocation is seen as one, so the bound above would catch it.
    with TensorAllocations() as alloc:
        torch.zeros(2048, 2048)
    assert alloc.peak == 4 * 2048 * 2048
    # Only the attention scorer when the schedule scores with attention alone.
    only = scoring_peak_bytes(model, cfg, {"method": "progressive", "score": "attention"})
    assert set(only) == {"attention"}


# --------------------------------------------------------------------------------------------------
# The benchmark itself
# --------------------------------------------------------------------------------------------------
def test_run_bench_reports_consistent_figures():
    cfg = BenchConfig(**TINY, pattern="M-*M-*M-", visual_tokens=64)
    r = run_bench(cfg, "progressive", keep=0.25, repeats=2, decode_steps=2)
    assert r.blocks == 8 and r.visual_tokens == 64 and r.repeats == 2
    assert (r.device, r.dtype, r.attn_implementation, r.mamba_path) == ("cpu", "float32", "sdpa", "torch")
    assert abs(r.achieved_keep - 0.25) < 0.02
    assert r.speedup == pytest.approx(r.full_s / r.reduced_s)
    assert r.efficiency == pytest.approx(r.speedup / r.ideal_speedup)
    assert r.ideal_speedup == pytest.approx(ideal_speedup(cfg, r.block_visual, "torch"))
    assert r.ideal_speedup_timed == pytest.approx(ideal_speedup_timed(cfg, r.block_visual, r.block_s_full, "torch"))
    assert r.efficiency_timed == pytest.approx(r.speedup / r.ideal_speedup_timed)
    assert 0 < r.scoring_overhead_frac < 1
    assert 0 < r.kv_bytes_reduced < r.kv_bytes_full
    assert r.decode_tok_s_full > 0 and r.decode_tok_s_reduced > 0
    assert len(r.block_s_full) == len(r.block_s_reduced) == len(r.block_hook_s) == 8
    assert sum(r.block_s_full) <= r.full_s and sum(r.block_s_reduced) <= r.reduced_s
    assert r.hook_s == pytest.approx(sum(r.block_hook_s)) and r.hook_s > 0  # the cuts' gathers are pre-hook work
    assert r.scoring_peak_bytes > 0
    if r.memory_source is not None:
        assert r.peak_bytes_full > 0 and r.peak_bytes_reduced > 0
    assert BenchConfig(**r.config) == cfg
    json.dumps(r.to_dict())
    assert r.merging_s == r.merging_overhead_frac == 0.0  # progressive drops


def test_run_bench_times_the_merging():
    cfg = BenchConfig(**TINY, pattern="M-*M-*M-", visual_tokens=64)
    r = run_bench(cfg, Schedule("progressive", combine="merge"), keep=0.25, repeats=1, decode_steps=1)
    assert abs(r.achieved_keep - 0.25) < 0.02
    assert r.merging_s > 0 and r.merging_overhead_frac == pytest.approx(r.merging_s / r.reduced_s)
    assert r.merging_overhead_frac < 1


def test_bad_config():
    with pytest.raises(InputError, match="pattern may only hold"):
        BenchConfig(pattern="MX-")
    with pytest.raises(InputError, match="at least 16"):
        BenchConfig(visual_tokens=4)


def test_scale_files(tmp_path):
    cfg = BenchConfig(**TINY, pattern="M-*M-", visual_tokens=64)
    results = run_scale(cfg, [32, 64], "progressive", keep=0.25, repeats=1, decode_steps=1)
    assert [r.visual_tokens for r in results] == [32, 64]
    paths = write_scale(results, tmp_path)
    assert {p.name for p in paths} == {f"bench_scale{x}" for x in (".csv", "_blocks.csv", ".json", ".png", ".pdf")}
    rows = list(csv.DictReader((tmp_path / "bench_scale.csv").open()))
    assert [int(r["visual_tokens"]) for r in rows] == [32, 64] and list(rows[0]) == list(SCALE_COLUMNS)
    blocks = list(csv.DictReader((tmp_path / "bench_scale_blocks.csv").open()))
    assert len(blocks) == 2 * 5 and list(blocks[0]) == list(BLOCK_COLUMNS)
    assert [b["kind"] for b in blocks[:5]] == list("M-*M-")
    assert json.loads((tmp_path / "bench_scale.json").read_text())[1]["visual_tokens"] == 64
    assert (tmp_path / "bench_scale.png").stat().st_size > 10_000


def test_sweep_files(tmp_path):
    cfg = BenchConfig(**TINY, pattern="M-*M-*M-", visual_tokens=48)
    results = [run_bench(cfg, "progressive", keep=k, repeats=1, decode_steps=0) for k in (0.25, 0.5)]
    paths = write_sweep(results, tmp_path)
    assert {p.name for p in paths} == {"bench_sweep.csv", "bench_sweep.png", "bench_sweep.pdf"}
    rows = list(csv.DictReader((tmp_path / "bench_sweep.csv").open()))
    assert [float(r["keep"]) for r in rows] == [0.25, 0.5]
    assert "block_s_full" not in rows[0] and "config" not in rows[0]
    assert (tmp_path / "bench_sweep.png").stat().st_size > 10_000


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------
def test_cli_json(capsys):
    code = cli.main(["bench", "--visual-tokens", "32", "--repeats", "1", "--decode-steps", "1", "--json"])
    row = json.loads(capsys.readouterr().out)
    assert code == 0
    for key in (
        "speedup",
        "ideal_speedup",
        "efficiency",
        "ideal_speedup_timed",
        "scoring_overhead_frac",
        "peak_bytes_full",
        "scoring_peak_bytes",
        "kv_bytes_full",
        "kv_bytes_reduced",
        "keep",
        "visual_tokens",
        "decode_tok_s_full",
        "decode_tok_s_reduced",
    ):
        assert key in row
    assert row["visual_tokens"] == 32 and row["keep"] == 0.25


def test_cli_scale(tmp_path, capsys):
    out = tmp_path / "scale"
    code = cli.main(["bench", "--scale", "48,32", "--repeats", "1", "--decode-steps", "1", "--out", str(out)])
    text = capsys.readouterr().out
    assert code == 0
    assert [line.split()[0] for line in text.splitlines()[2:4]] == ["32", "48"]  # sorted
    assert (out / "bench_scale.csv").is_file() and (out / "bench_scale.png").is_file()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--scale", "2048,4096"], "--out DIR"),
        (["--scale", "2048,x", "--out", "o"], "got 'x'"),
        (["--scale", "2048,8", "--out", "o"], "visual tokens 8 of --scale must be an integer >= 16"),
        (["--scale", "2048,2048", "--out", "o"], "2048 more than once"),
        (["--scale", ",", "--out", "o"], "at least one"),
        (["--scale", "2048", "--sweep", "0.5", "--out", "o"], "give one of them"),
        (["--scale", "2048", "--visual-tokens", "64", "--out", "o"], "--visual-tokens 64 with --scale"),
        (["--out", "o"], "only by --sweep or --scale"),
        (["--dtype", "float64"], "dtype (--dtype) must be one of float32, bfloat16, float16"),
        (["--device", "gpu0"], "not a torch device"),
    ],
)
def test_cli_refuses(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["bench", *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing written


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a torch without CUDA")
def test_cli_refuses_cuda_on_a_cpu_build(capsys):
    assert cli.main(["bench", "--device", "cuda", "--visual-tokens", "32"]) == 2
    assert "no CUDA" in capsys.readouterr().err


def test_cli_errors(capsys):
    assert cli.main(["bench", "--arch", "jamba"]) == 2
    assert "not available" in capsys.readouterr().err
    assert cli.main(["bench", "--sweep", "0.25"]) == 2
    assert "--out DIR" in capsys.readouterr().err
    assert cli.main(["bench", "--sweep", "a,b", "--out", "x"]) == 2
