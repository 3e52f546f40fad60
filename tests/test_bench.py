"""``hybridreduce bench``: its FLOP model, its report, the CLI and the sweep files (tiny sizes)."""

from __future__ import annotations

import csv
import json

import pytest

from hybridreduce import InputError, cli
from hybridreduce.bench import NEMOTRON_H_PATTERN, BenchConfig, block_flops, ideal_speedup, run_bench, write_sweep

TINY = dict(hidden=32, attn_heads=4, kv_heads=2, head_dim=8, mamba_head_dim=16, ssm_state=8, chunk_size=16)


def test_pattern_is_nemotron_h_shaped():
    assert len(NEMOTRON_H_PATTERN) >= 24
    counts = {k: NEMOTRON_H_PATTERN.count(k) for k in "M-*"}
    assert counts == {"M": 12, "-": 12, "*": 2}  # Nemotron-H-8B's 24 : 24 : 4, halved


def test_flop_model():
    cfg = BenchConfig(**TINY, visual_tokens=256)
    full = [cfg.visual_tokens] * len(cfg.pattern)
    assert ideal_speedup(cfg, full) == 1.0
    # Linear blocks scale linearly, attention has a quadratic term.
    assert block_flops(cfg, "M", 200) == 2 * block_flops(cfg, "M", 100)
    assert block_flops(cfg, "-", 200) == 2 * block_flops(cfg, "-", 100)
    assert block_flops(cfg, "*", 200) > 2 * block_flops(cfg, "*", 100)
    half = [cfg.visual_tokens // 2] * len(cfg.pattern)
    linear = (256 + 32) / (128 + 32)  # text tokens are never dropped
    assert linear < ideal_speedup(cfg, half) < linear**2


def test_run_bench_reports_consistent_figures():
    cfg = BenchConfig(**TINY, pattern="M-*M-*M-", visual_tokens=64)
    r = run_bench(cfg, "progressive", keep=0.25, repeats=1, decode_steps=2)
    assert r.blocks == 8 and r.visual_tokens == 64
    assert abs(r.achieved_keep - 0.25) < 0.02
    assert r.speedup == pytest.approx(r.full_s / r.reduced_s)
    assert r.efficiency == pytest.approx(r.speedup / r.ideal_speedup)
    assert r.ideal_speedup == pytest.approx(ideal_speedup(cfg, r.block_visual))
    assert 0 < r.scoring_overhead_frac < 1
    assert 0 < r.kv_bytes_reduced < r.kv_bytes_full
    assert r.decode_tok_s_full > 0 and r.decode_tok_s_reduced > 0


def test_bad_config():
    with pytest.raises(InputError, match="pattern may only hold"):
        BenchConfig(pattern="MX-")
    with pytest.raises(InputError, match="at least 16"):
        BenchConfig(visual_tokens=4)


def test_cli_json(capsys):
    code = cli.main(["bench", "--visual-tokens", "32", "--repeats", "1", "--decode-steps", "1", "--json"])
    row = json.loads(capsys.readouterr().out)
    assert code == 0
    for key in (
        "speedup",
        "ideal_speedup",
        "efficiency",
        "scoring_overhead_frac",
        "kv_bytes_full",
        "kv_bytes_reduced",
        "keep",
        "visual_tokens",
        "decode_tok_s_full",
        "decode_tok_s_reduced",
    ):
        assert key in row
    assert row["visual_tokens"] == 32 and row["keep"] == 0.25


def test_cli_errors(capsys):
    assert cli.main(["bench", "--arch", "jamba"]) == 2
    assert "not available" in capsys.readouterr().err
    assert cli.main(["bench", "--sweep", "0.25"]) == 2
    assert "--out DIR" in capsys.readouterr().err
    assert cli.main(["bench", "--sweep", "a,b", "--out", "x"]) == 2


def test_sweep_files(tmp_path):
    cfg = BenchConfig(**TINY, pattern="M-*M-*M-", visual_tokens=48)
    results = [run_bench(cfg, "progressive", keep=k, repeats=1, decode_steps=0) for k in (0.25, 0.5)]
    paths = write_sweep(results, tmp_path)
    assert {p.name for p in paths} == {"bench_sweep.csv", "bench_sweep.png", "bench_sweep.pdf"}
    rows = list(csv.DictReader((tmp_path / "bench_sweep.csv").open()))
    assert [float(r["keep"]) for r in rows] == [0.25, 0.5]
    assert (tmp_path / "bench_sweep.png").stat().st_size > 10_000
