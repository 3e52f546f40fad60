"""``hybridreduce bench``: prefill and decode speed with and without reduction.

The model is Nemotron-H-shaped: the block pattern of Nemotron-H-8B (``M`` Mamba-2, ``-`` MLP,
``*`` attention; 24 : 24 : 4 over 52 blocks) cut to its first 26 blocks (12 : 12 : 2), with the
real family's ratios (Mamba expand 2, ReLU² MLP of 4× the width, GQA attention) at a width that
fits a CPU. Weights are random: speed does not depend on them.

Timing: one warm-up of each variant, then ``repeats`` rounds that time the full and the reduced
prefill back to back in the same process (alternating which goes first), and the median of each.
The reported figures:

``speedup``                full prefill time / reduced prefill time.
``ideal_speedup``          the ratio of the two runs' FLOPs under a per-block cost model: linear
                           terms (projections, MLP, convolution, the chunked scan) and the quadratic
                           attention term, evaluated at the tokens each block carries.
``efficiency``             ``speedup / ideal_speedup``.
``scoring_overhead_frac``  time inside the scorers / reduced prefill time.
``kv_bytes_full/reduced``  bytes of attention keys and values in the cache after the prefill.
``decode_tok_s_full/reduced``  greedy decode steps per second (batch 1) after each prefill.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import torch

from . import compat
from .engine import cache_nbytes, reduce
from .errors import InputError
from .schedule import Schedule

#: The first 26 blocks of Nemotron-H-8B's ``hybrid_override_pattern``.
NEMOTRON_H_PATTERN = "M-M-M-M*-M-M-M-M-M*-M-M-M-"
_KIND = {"M": "mamba", "-": "mlp", "*": "attention"}


@dataclass
class BenchConfig:
    """The benchmark's model and prompt sizes."""

    pattern: str = NEMOTRON_H_PATTERN
    hidden: int = 256
    attn_heads: int = 8
    kv_heads: int = 2
    head_dim: int = 32
    mamba_head_dim: int = 32
    ssm_state: int = 64
    n_groups: int = 2
    mlp_mult: int = 4
    chunk_size: int = 128
    visual_tokens: int = 8192
    text_tokens: int = 32  # prompt text before the video and question after it, in total
    vocab: int = 256

    def __post_init__(self) -> None:
        bad = set(self.pattern) - set(_KIND)
        if bad:
            raise InputError(f"pattern may only hold 'M' (Mamba), '-' (MLP) and '*' (attention), got {sorted(bad)}")
        if self.visual_tokens < 16:
            raise InputError(f"--visual-tokens must be at least 16, got {self.visual_tokens}")
        if self.text_tokens < 2:
            raise InputError("text_tokens must be at least 2 (a prefix and a question)")

    @property
    def mamba_heads(self) -> int:
        return 2 * self.hidden // self.mamba_head_dim  # expand = 2


def build_bench_model(cfg: BenchConfig, seed: int = 0):
    """A random Nemotron-H-pattern causal LM in float32, eval mode."""
    from transformers import NemotronHConfig, NemotronHForCausalLM

    config = NemotronHConfig(
        vocab_size=cfg.vocab,
        hidden_size=cfg.hidden,
        layers_block_type=[_KIND[c] for c in cfg.pattern],
        num_attention_heads=cfg.attn_heads,
        num_key_value_heads=cfg.kv_heads,
        head_dim=cfg.head_dim,
        intermediate_size=cfg.mlp_mult * cfg.hidden,
        mamba_num_heads=cfg.mamba_heads,
        mamba_head_dim=cfg.mamba_head_dim,
        ssm_state_size=cfg.ssm_state,
        n_groups=cfg.n_groups,
        chunk_size=cfg.chunk_size,
        max_position_embeddings=cfg.visual_tokens + cfg.text_tokens + 1024,
    )
    torch.manual_seed(seed)
    return NemotronHForCausalLM(config).eval()


def bench_prompt(cfg: BenchConfig, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, visual_mask)``: a quarter of the text before the video, the rest after it."""
    g = torch.Generator().manual_seed(seed)
    prefix = cfg.text_tokens // 4 or 1
    T = cfg.visual_tokens + cfg.text_tokens
    ids = torch.randint(3, cfg.vocab, (1, T), generator=g)
    vm = torch.zeros(1, T, dtype=torch.bool)
    vm[0, prefix : prefix + cfg.visual_tokens] = True
    return ids, vm


# --------------------------------------------------------------------------------------------------
# FLOP model
# --------------------------------------------------------------------------------------------------
def block_flops(cfg: BenchConfig, kind: str, n: int) -> float:
    """Forward FLOPs of one block on ``n`` tokens (multiply-adds count 2)."""
    d = cfg.hidden
    if kind == "M":
        d_inner = 2 * d
        gn = cfg.n_groups * cfg.ssm_state
        proj = 2 * n * d * (2 * d_inner + 2 * gn + cfg.mamba_heads) + 2 * n * d_inner * d
        conv = 2 * n * (d_inner + 2 * gn) * 4
        # Chunked SSD: intra-chunk C·Bᵀ and its product with x (quadratic in the chunk only), and the
        # state passing (linear), per token.
        L = cfg.chunk_size
        scan = 2 * n * L * (gn + d_inner) + 4 * n * d_inner * cfg.ssm_state
        return float(proj + conv + scan)
    if kind == "-":
        return float(2 * n * d * cfg.mlp_mult * d * 2)
    inner = cfg.attn_heads * cfg.head_dim
    kv = cfg.kv_heads * cfg.head_dim
    proj = 2 * n * d * (inner + 2 * kv) + 2 * n * inner * d
    attn = 2 * n * n * inner  # causal: QKᵀ and AV over half of the n² pairs each
    return float(proj + attn)


def ideal_speedup(cfg: BenchConfig, block_visual: list[int]) -> float:
    """FLOPs of the full prefill / FLOPs with ``block_visual[i]`` visual tokens at block ``i``."""
    full = sum(block_flops(cfg, k, cfg.visual_tokens + cfg.text_tokens) for k in cfg.pattern)
    reduced = sum(block_flops(cfg, k, v + cfg.text_tokens) for k, v in zip(cfg.pattern, block_visual, strict=True))
    return full / reduced


# --------------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------------
def _prefill(model, ids):
    with torch.no_grad():
        return model(ids, use_cache=True, logits_to_keep=1)


def _decode(model, out, ids, steps: int) -> float:
    """Greedy decode ``steps`` tokens from a prefill's cache; returns tokens per second."""
    cache = compat.output_cache(out)
    token = out.logits[:, -1:].argmax(-1)
    T = ids.shape[1]
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(steps):
            pos = torch.tensor([[T + i]])
            step = model(
                token, **{compat.cache_kwarg(model): cache}, use_cache=True, position_ids=pos, logits_to_keep=1
            )
            token = step.logits[:, -1:].argmax(-1)
    return steps / (time.perf_counter() - start)


@dataclass
class BenchResult:
    arch: str
    schedule: str
    keep: float
    achieved_keep: float
    visual_tokens: int
    text_tokens: int
    blocks: int
    params_m: float
    threads: int
    repeats: int
    full_s: float
    reduced_s: float
    speedup: float
    ideal_speedup: float
    efficiency: float
    scoring_s: float
    scoring_overhead_frac: float
    kv_bytes_full: int
    kv_bytes_reduced: int
    state_bytes: int
    decode_tok_s_full: float
    decode_tok_s_reduced: float
    block_visual: list[int]

    def to_dict(self) -> dict:
        return asdict(self)


def run_bench(
    cfg: BenchConfig | None = None,
    schedule: str | Schedule = "progressive",
    keep: float = 0.25,
    repeats: int = 3,
    decode_steps: int = 16,
    model=None,
    progress=None,
) -> BenchResult:
    """Time full and reduced prefill (and decode) of the bench model; see the module docstring.

    Args:
        cfg: model and prompt sizes (default :class:`BenchConfig`).
        schedule: a schedule name/file/instance; its ``keep`` is replaced by ``keep``.
        model: reuse an already built bench model (a sweep builds it once).
        progress: optional callable ``progress(message)`` for long runs.
    """
    from dataclasses import replace

    cfg = cfg or BenchConfig()
    if repeats < 1:
        raise InputError(f"repeats must be at least 1, got {repeats}")
    sched = Schedule.load(schedule)
    if sched.method != "none" and sched.shape != "explicit":
        sched = replace(sched, keep=keep)
    model = model if model is not None else build_bench_model(cfg)
    ids, vm = bench_prompt(cfg)
    say = progress or (lambda msg: None)

    def reduced_once():
        with reduce(model, sched, visual_mask=vm) as red:
            start = time.perf_counter()
            out = _prefill(model, ids)
            elapsed = time.perf_counter() - start
        return elapsed, red, out

    say("warm-up")
    _prefill(model, ids)
    reduced_once()
    full_times, reduced_times, scoring = [], [], []
    red = None
    for r in range(repeats):
        say(f"repeat {r + 1}/{repeats}")
        order = ("full", "reduced") if r % 2 == 0 else ("reduced", "full")
        for which in order:
            if which == "full":
                start = time.perf_counter()
                _prefill(model, ids)
                full_times.append(time.perf_counter() - start)
            else:
                elapsed, red, _ = reduced_once()
                reduced_times.append(elapsed)
                scoring.append(red.scoring_seconds)
    say("decode")
    out_full = _prefill(model, ids)
    kv_full = cache_nbytes(compat.output_cache(out_full))
    decode_full = _decode(model, out_full, ids, decode_steps) if decode_steps else float("nan")
    with reduce(model, sched, visual_mask=vm) as red_decode:
        out_red = _prefill(model, ids)
        kv_red = cache_nbytes(compat.output_cache(out_red))
        decode_red = _decode(model, out_red, ids, decode_steps) if decode_steps else float("nan")
    full_s, reduced_s = statistics.median(full_times), statistics.median(reduced_times)
    scoring_s = statistics.median(scoring)
    ideal = ideal_speedup(cfg, red.block_visual)
    return BenchResult(
        arch="nemotron_h",
        schedule=sched.name or sched.method,
        keep=float(sched.keep) if sched.keep is not None else red.average_keep,
        achieved_keep=red.average_keep,
        visual_tokens=cfg.visual_tokens,
        text_tokens=cfg.text_tokens,
        blocks=len(cfg.pattern),
        params_m=sum(p.numel() for p in model.parameters()) / 1e6,
        threads=torch.get_num_threads(),
        repeats=repeats,
        full_s=full_s,
        reduced_s=reduced_s,
        speedup=full_s / reduced_s,
        ideal_speedup=ideal,
        efficiency=(full_s / reduced_s) / ideal,
        scoring_s=scoring_s,
        scoring_overhead_frac=scoring_s / reduced_s,
        kv_bytes_full=kv_full["kv"],
        kv_bytes_reduced=kv_red["kv"],
        state_bytes=kv_red["state"],
        decode_tok_s_full=decode_full,
        decode_tok_s_reduced=decode_red,
        block_visual=red_decode.block_visual,
    )


def write_sweep(results: list[BenchResult], out_dir) -> list:
    """Write ``bench_sweep.csv`` and ``bench_sweep.{png,pdf}`` (speedup vs keep against the ideal)."""
    import csv
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = [r.to_dict() for r in results]
    columns = [k for k in rows[0] if k != "block_visual"]
    csv_path = out / "bench_sweep.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    rs = sorted(results, key=lambda r: r.keep)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    keeps = [r.keep for r in rs]
    ax.plot(keeps, [r.ideal_speedup for r in rs], "--", color="grey", marker="o", label="ideal (FLOP model)")
    ax.plot(keeps, [r.speedup for r in rs], "-", color="C0", marker="s", label="measured")
    for r in rs:
        ax.annotate(f"{r.speedup:.2f}x", (r.keep, r.speedup), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xscale("log", base=2)
    ax.set_xticks(keeps, [f"{k:g}" for k in keeps])
    ax.set_xlabel("average fraction of visual tokens kept per block")
    ax.set_ylabel("prefill speed-up (full / reduced)")
    r0 = rs[0]
    ax.set_title(f"{r0.schedule}: Nemotron-H pattern, {r0.blocks} blocks, {r0.visual_tokens} visual tokens", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    paths = [csv_path]
    for ext in ("png", "pdf"):
        path = out / f"bench_sweep.{ext}"
        fig.savefig(path, dpi=150)
        paths.append(path)
    plt.close(fig)
    return paths
