"""``hybridreduce bench``: prefill and decode speed, and memory, with and without reduction.

The model is Nemotron-H-shaped: the block pattern of Nemotron-H-8B (``M`` Mamba-2, ``-`` MLP,
``*`` attention; 24 : 24 : 4 over 52 blocks) cut to its first 26 blocks (12 : 12 : 2), with the
real family's ratios (Mamba expand 2, ReLU² MLP of 4× the width, GQA attention) at a width that
fits a CPU. :func:`nemotron_h_8b` gives all 52 blocks at the real width (hidden 4096) for a GPU.
Weights are random: speed does not depend on them.

Timing: one warm-up round, then ``repeats`` rounds; each round runs the full and the reduced
variant back to back in the same process (alternating which goes first, so that drift hits both),
and each variant is a timed prefill followed by ``decode_steps`` timed greedy decode steps from its
cache. The medians are reported. Every prefill runs under a :class:`BlockTimer` (the time of each
block, and of the engine's pre-hook work in it) and a :class:`~hybridreduce.peakmem.PeakMemory`.

The reported figures:

``speedup``                full prefill time / reduced prefill time.
``ideal_speedup``          the ratio of the two runs' FLOPs under a per-block cost model (:func:`block_flops`):
                           projections, MLP, convolution, the chunked scan as the path that ran computes it
                           (``mamba_path``), and the quadratic attention term, at the tokens each block carries.
``efficiency``             ``speedup / ideal_speedup``.
``ideal_speedup_timed``    the same per-block FLOP ratios, weighted by each block's measured time in the full
                           prefill instead of its FLOPs (:func:`ideal_speedup_timed`): the speed-up if every
                           block's time shrank exactly as its FLOPs do. It differs from ``ideal_speedup`` where
                           FLOPs misjudge the blocks' relative cost (on a CPU the torch Mamba path is memory-bound).
``efficiency_timed``       ``speedup / ideal_speedup_timed``: what the reduction's own work (scoring, cuts,
                           slicing, hooks) and smaller, less efficient operations cost.
``scoring_overhead_frac``  time inside the scorers / reduced prefill time (on CUDA a lower bound: asynchronous).
``merging_overhead_frac``  time spent merging at the cuts (``combine: merge``: assigning removed tokens, forming
                           the size-weighted rows; ``merging_s``) / reduced prefill time; 0 when the schedule
                           drops. The size-aware work inside the blocks is not in it: compare the reduced prefill
                           of a merging schedule with its dropping twin for the whole cost
                           (``scripts/bench_merging.py``).
``peak_bytes_full/reduced``  peak memory of the prefill above the level before it (``memory_source``: the CUDA
                           allocator, or the process's resident set on Linux).
``scoring_peak_bytes``     the most the scorers of one block allocate (:func:`scoring_peak_bytes`).
``kv_bytes_full/reduced``  bytes of attention keys and values in the cache after the prefill.
``decode_tok_s_full/reduced``  greedy decode steps per second (batch 1) after each prefill.
``block_s_full/reduced``   per block, its median seconds in the full and in the reduced prefill.
``block_hook_s``, ``hook_s``  per block, and summed: the part of the reduced time spent in the reduction engine's
                           pre-hook (the cut at a prune point, the slicing of masks and position tensors).

Shapes and token counts use the letters of :mod:`hybridreduce.glossary`.
"""

from __future__ import annotations

import importlib.util
import statistics
import time
from dataclasses import asdict, dataclass, field, replace

import torch
from torch import nn

from . import compat
from .engine import cache_nbytes, reduce
from .errors import InputError
from .peakmem import PeakMemory, TensorAllocations
from .schedule import Schedule

#: Nemotron-H-8B's ``hybrid_override_pattern``: 52 blocks, 24 Mamba-2, 24 MLP, 4 attention.
NEMOTRON_H_8B_PATTERN = "M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M-"
#: Its first 26 blocks, the default bench model.
NEMOTRON_H_PATTERN = NEMOTRON_H_8B_PATTERN[:26]
_KIND = {"M": "mamba", "-": "mlp", "*": "attention"}
MAMBA_PATHS = ("torch", "kernel")


@dataclass
class BenchConfig:
    """The benchmark's model and prompt sizes.

    ``intermediate`` is the MLP width (default ``mlp_mult × hidden``); ``attn_implementation`` the attention
    function the model runs (``sdpa``, ``eager``, ``flash_attention_2``).
    """

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
    intermediate: int | None = None
    conv_kernel: int = 4
    attn_implementation: str = "sdpa"

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

    @property
    def mlp_width(self) -> int:
        return self.intermediate if self.intermediate is not None else self.mlp_mult * self.hidden


def nemotron_h_8b(visual_tokens: int = 16384, **overrides) -> BenchConfig:
    """Nemotron-H-8B's shape: 52 blocks, hidden 4096, MLP 21504, 32 query / 8 KV heads of 128, 128 Mamba heads
    of 64 with state 128 in 8 groups, chunk 128 (the public ``config.json``, also transformers'
    ``NemotronHConfig`` defaults). The vocabulary is cut to 1,024: the bench keeps only the last row's logits,
    so the 131,072-row embedding would cost memory and nothing else."""
    shape = dict(
        pattern=NEMOTRON_H_8B_PATTERN,
        hidden=4096,
        attn_heads=32,
        kv_heads=8,
        head_dim=128,
        mamba_head_dim=64,
        ssm_state=128,
        n_groups=8,
        intermediate=21504,
        chunk_size=128,
        vocab=1024,
        visual_tokens=visual_tokens,
    )
    return BenchConfig(**{**shape, **overrides})


#: Peak memory of the default bench model per prompt token, above a fixed part: measured as the process's peak RSS
#: above the built model, 485 MiB at 4,096 visual tokens and 1,422 MiB at 16,384 (78 KiB a token; CPU, float32,
#: transformers 5.24), rounded up.
BENCH_BYTES_PER_TOKEN = 80 * 2**10
#: The model, torch and its libraries, with room to spare.
BENCH_FIXED_BYTES = 2**30
#: The dtypes the bench model is built in (``bench --dtype``).
BENCH_DTYPES = ("float32", "bfloat16", "float16")


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux ``MemAvailable``); None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_memory(cfg: BenchConfig) -> None:
    """Refuse a CPU prompt whose estimated peak memory (``BENCH_*_BYTES``) exceeds the memory available now.

    Raises:
        InputError: the estimate, what is available and the largest ``--visual-tokens`` that fits.
    """
    available = available_memory()
    tokens = cfg.visual_tokens + cfg.text_tokens
    need = BENCH_FIXED_BYTES + BENCH_BYTES_PER_TOKEN * tokens
    if available is None or need <= available:
        return
    fit = (available - BENCH_FIXED_BYTES) // BENCH_BYTES_PER_TOKEN - cfg.text_tokens
    gib = 2**30
    fix = f"use at most --visual-tokens {fit}" if fit >= 16 else "free some memory first"
    raise InputError(
        f"visual_tokens (--visual-tokens) {cfg.visual_tokens} needs about {need / gib:,.1f} GiB of memory "
        f"({BENCH_BYTES_PER_TOKEN // 2**10} KiB a token, measured), but {available / gib:.1f} GiB is available; {fix}"
    )


def build_bench_model(cfg: BenchConfig, seed: int = 0, device=None, dtype: torch.dtype = torch.float32):
    """A random Nemotron-H-pattern causal LM, built directly on ``device`` (default cpu) in ``dtype``, eval mode."""
    from transformers import AutoModelForCausalLM, NemotronHConfig

    config = NemotronHConfig(
        vocab_size=cfg.vocab,
        hidden_size=cfg.hidden,
        layers_block_type=[_KIND[c] for c in cfg.pattern],
        num_attention_heads=cfg.attn_heads,
        num_key_value_heads=cfg.kv_heads,
        head_dim=cfg.head_dim,
        intermediate_size=cfg.mlp_width,
        mamba_num_heads=cfg.mamba_heads,
        mamba_head_dim=cfg.mamba_head_dim,
        ssm_state_size=cfg.ssm_state,
        n_groups=cfg.n_groups,
        chunk_size=cfg.chunk_size,
        conv_kernel=cfg.conv_kernel,
        max_position_embeddings=cfg.visual_tokens + cfg.text_tokens + 1024,
    )
    torch.manual_seed(seed)
    with torch.device(device or "cpu"):
        model = AutoModelForCausalLM.from_config(config, attn_implementation=cfg.attn_implementation, dtype=dtype)
    return model.eval()


def bench_prompt(cfg: BenchConfig, seed: int = 0, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, visual_mask)``, each ``(1, T)``: a quarter of the text before the video, the rest after it."""
    g = torch.Generator().manual_seed(seed)
    prefix = cfg.text_tokens // 4 or 1
    T = cfg.visual_tokens + cfg.text_tokens
    ids = torch.randint(3, cfg.vocab, (1, T), generator=g)
    vm = torch.zeros(1, T, dtype=torch.bool)
    vm[0, prefix : prefix + cfg.visual_tokens] = True
    return ids.to(device or "cpu"), vm.to(device or "cpu")


def mamba_path(model: nn.Module) -> str:
    """``"kernel"`` where transformers runs the Mamba-2 scan with mamba-ssm (it imports, the model is on CUDA).

    Else ``"torch"``.

    transformers picks mamba-ssm's ``mamba_chunk_scan_combined`` at import when the package imports, and its
    own torch implementation (``mamba2_chunk_scan``) otherwise.
    """
    device = next(model.parameters()).device
    return "kernel" if device.type == "cuda" and importlib.util.find_spec("mamba_ssm") is not None else "torch"


# --------------------------------------------------------------------------------------------------
# FLOP model
# --------------------------------------------------------------------------------------------------
def mamba_scan_flops(cfg: BenchConfig, tokens: int, path: str = "torch") -> float:
    """FLOPs of the chunked Mamba-2 scan (SSD) on ``T' = tokens`` tokens as ``path`` computes it (multiply-adds
    count 2).

    With ``chunk`` the chunk size, ``h`` heads of ``p`` channels (``h·p = d_inner``), state ``n`` in ``g`` groups:

    ``kernel`` (mamba-ssm): ``C·Bᵀ`` within each chunk per *group* (``2T'·chunk·g·n``), its product with ``x``
    (``2T'·chunk·d_inner``), the chunk states and their read-out (``4T'·d_inner·n``): linear in ``T'``.

    ``torch`` (transformers' ``mamba2_chunk_scan``): ``B`` and ``C`` are first repeated to every head, so
    ``C·Bᵀ`` costs ``2·T_pad·chunk·h·n``; the sequence is padded to ``T_pad = n_chunks·chunk``
    (``n_chunks = ⌈T'/chunk⌉``); and the states are passed between chunks by one
    ``(n_chunks+1) × (n_chunks+1)`` product per head and channel, ``2(n_chunks+1)²·d_inner·n``: quadratic in the
    number of chunks (a sequential scan would be linear). Elementwise work (the ``exp``/``cumsum``/masking of the
    ``(h, n_chunks, chunk, chunk)`` decay tensors) is not counted, in either path.
    """
    if path not in MAMBA_PATHS:
        raise InputError(f"mamba path must be one of {MAMBA_PATHS}, got {path!r}")
    d_inner, n, chunk = 2 * cfg.hidden, cfg.ssm_state, cfg.chunk_size
    gn, hn = cfg.n_groups * n, cfg.mamba_heads * n
    if path == "kernel":
        return float(2 * tokens * chunk * (gn + d_inner) + 4 * tokens * d_inner * n)
    n_chunks = -(-tokens // chunk)
    padded = n_chunks * chunk
    return float(2 * padded * chunk * (hn + d_inner) + 4 * padded * d_inner * n + 2 * (n_chunks + 1) ** 2 * d_inner * n)


def block_flops(cfg: BenchConfig, kind: str, tokens: int, mamba_path: str = "torch") -> float:
    """Forward FLOPs of one block of ``kind`` (``M``, ``-``, ``*``) on ``T' = tokens`` tokens (multiply-adds
    count 2).

    Mamba: in/out projections, the depthwise convolution, the scan (:func:`mamba_scan_flops`). MLP: up and
    down projections. Attention: projections and ``2T'²`` times the query width (causal: ``QKᵀ`` and ``AV``
    over half of the ``T'²`` pairs each). On the torch path the Mamba and MLP counts equal what
    ``torch.utils.flop_counter`` counts on transformers' own code (``tests/test_bench.py``).
    """
    d = cfg.hidden
    if kind == "M":
        d_inner = 2 * d
        gn = cfg.n_groups * cfg.ssm_state
        proj = 2 * tokens * d * (2 * d_inner + 2 * gn + cfg.mamba_heads) + 2 * tokens * d_inner * d
        # transformers' torch path convolves with padding conv_kernel - 1 on both sides and cuts the tail afterwards.
        conv_out = tokens + (cfg.conv_kernel - 1 if mamba_path == "torch" else 0)
        conv = 2 * conv_out * (d_inner + 2 * gn) * cfg.conv_kernel
        return float(proj + conv) + mamba_scan_flops(cfg, tokens, mamba_path)
    if kind == "-":
        return float(2 * tokens * d * cfg.mlp_width * 2)
    inner = cfg.attn_heads * cfg.head_dim
    kv = cfg.kv_heads * cfg.head_dim
    proj = 2 * tokens * d * (inner + 2 * kv) + 2 * tokens * inner * d
    attn = 2 * tokens * tokens * inner  # causal: QKᵀ and AV over half of the T'² pairs each
    return float(proj + attn)


def block_flop_ratios(cfg: BenchConfig, block_visual: list[int], mamba_path: str = "torch") -> list[float]:
    """Per block: FLOPs on the full prompt / FLOPs on the ``block_visual[i]`` visual tokens it carries reduced."""
    T = cfg.visual_tokens + cfg.text_tokens
    return [
        block_flops(cfg, kind, T, mamba_path) / block_flops(cfg, kind, v + cfg.text_tokens, mamba_path)
        for kind, v in zip(cfg.pattern, block_visual, strict=True)
    ]


def ideal_speedup(cfg: BenchConfig, block_visual: list[int], mamba_path: str = "torch") -> float:
    """FLOPs of the full prefill / FLOPs with ``block_visual[i]`` visual tokens at block ``i``."""
    full = sum(block_flops(cfg, kind, cfg.visual_tokens + cfg.text_tokens, mamba_path) for kind in cfg.pattern)
    reduced = sum(
        block_flops(cfg, kind, v + cfg.text_tokens, mamba_path)
        for kind, v in zip(cfg.pattern, block_visual, strict=True)
    )
    return full / reduced


def ideal_speedup_timed(
    cfg: BenchConfig, block_visual: list[int], block_s_full: list[float], mamba_path: str = "torch"
) -> float:
    """``Σ_i t_i / Σ_i t_i / r_i``: each block's measured full-prefill time ``t_i`` shrunk by its FLOP ratio ``r_i``.

    The FLOP model decides how each block scales with its tokens; the measurement decides how much each
    block weighs. Time outside the blocks (embedding, final norm, logits) is left out of both sides.
    """
    ratios = block_flop_ratios(cfg, block_visual, mamba_path)
    return sum(block_s_full) / sum(t / r for t, r in zip(block_s_full, ratios, strict=True))


# --------------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class BlockTimer:
    """Time of every decoder block in the forwards run inside, from forward hooks (removed on exit).

    Three marks per block call: before every other pre-hook (registered with ``prepend``), after the
    pre-hooks that were registered before this timer (the reduction engine's: a cut and the slicing of
    masks and positions), and after the block's forward. On CUDA the marks are CUDA events (no
    synchronisation inside the forward); elsewhere ``time.perf_counter``.

    Attributes (after exit, summed over the forwards inside):
        block_s: ``(blocks,)`` seconds in each block, its pre-hooks included.
        hook_s: ``(blocks,)`` seconds of those in the pre-hooks registered before the timer.
    """

    def __init__(self, blocks: list[nn.Module], device: torch.device) -> None:
        self.blocks = blocks
        self.cuda = device.type == "cuda"
        self.device = device
        self.marks: list[list] = [[] for _ in blocks]  # per block: (start, ready, end) of each call
        self.handles: list = []
        self.block_s: list[float] = []
        self.hook_s: list[float] = []

    def _now(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def __enter__(self) -> BlockTimer:
        try:
            for i, block in enumerate(self.blocks):

                def start(module, args, i=i):
                    self.marks[i].append([self._now(), None, None])

                def ready(module, args, i=i):
                    self.marks[i][-1][1] = self._now()

                def end(module, args, output, i=i):
                    self.marks[i][-1][2] = self._now()

                self.handles.append(block.register_forward_pre_hook(start, prepend=True))
                self.handles.append(block.register_forward_pre_hook(ready))
                self.handles.append(block.register_forward_hook(end, always_call=True))
        except BaseException:
            self._remove()
            raise
        return self

    def _remove(self) -> None:
        while self.handles:
            self.handles.pop().remove()

    def __exit__(self, *exc) -> None:
        self._remove()
        if exc[0] is not None:
            return
        _sync(self.device)

        def seconds(a, b) -> float:
            return a.elapsed_time(b) / 1000 if self.cuda else b - a

        self.block_s = [sum(seconds(s, e) for s, _, e in calls) for calls in self.marks]
        self.hook_s = [sum(seconds(s, r) for s, r, _ in calls) for calls in self.marks]


def prefill(model, ids):
    """The timed forward: the prompt ``ids`` ``(b, T)`` into a cache, the last row's logits only, no autograd."""
    with torch.no_grad():
        return model(ids, use_cache=True, logits_to_keep=1)


def _decode(model, out, ids, steps: int) -> float:
    """Greedy decode ``steps`` tokens from a prefill's cache; returns tokens per second."""
    cache = compat.output_cache(out)
    token = out.logits[:, -1:].argmax(-1)
    T = ids.shape[1]
    positions = torch.arange(T, T + steps, device=ids.device)[None]  # (1, steps), made before the clock starts
    _sync(ids.device)
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(steps):
            step = model(
                token,
                **{compat.cache_kwarg(model): cache},
                use_cache=True,
                position_ids=positions[:, i : i + 1],
                logits_to_keep=1,
            )
            token = step.logits[:, -1:].argmax(-1)
    _sync(ids.device)
    return steps / (time.perf_counter() - start)


@dataclass
class _Round:
    """One timed prefill (and its decode) of one variant."""

    prefill_s: float
    peak_bytes: int | None
    memory_source: str | None
    block_s: list[float]
    hook_s: list[float]
    kv: dict[str, int]
    decode_tok_s: float
    scoring_s: float = 0.0
    merging_s: float = 0.0
    block_visual: list[int] = field(default_factory=list)


def _median_lists(rows: list[list[float]]) -> list[float]:
    return [statistics.median(col) for col in zip(*rows, strict=True)]


@dataclass
class BenchResult:
    """One point of the benchmark: the figures of the module docstring, the sizes and where it ran."""

    arch: str
    schedule: str
    keep: float
    achieved_keep: float
    visual_tokens: int
    text_tokens: int
    blocks: int
    hidden: int
    params_m: float
    device: str
    dtype: str
    attn_implementation: str
    mamba_path: str
    threads: int
    repeats: int
    full_s: float
    reduced_s: float
    speedup: float
    ideal_speedup: float
    efficiency: float
    ideal_speedup_timed: float
    efficiency_timed: float
    scoring_s: float
    scoring_overhead_frac: float
    merging_s: float
    merging_overhead_frac: float
    hook_s: float
    peak_bytes_full: int | None
    peak_bytes_reduced: int | None
    memory_source: str | None
    scoring_peak_bytes: int
    kv_bytes_full: int
    kv_bytes_reduced: int
    state_bytes: int
    decode_tok_s_full: float
    decode_tok_s_reduced: float
    block_visual: list[int]
    block_s_full: list[float]
    block_s_reduced: list[float]
    block_hook_s: list[float]
    config: dict  # the BenchConfig, as a dict

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
    device=None,
    dtype: torch.dtype = torch.float32,
) -> BenchResult:
    """Time full and reduced prefill (and decode) of the bench model; see the module docstring.

    Args:
        cfg: model and prompt sizes (default :class:`BenchConfig`).
        schedule: a schedule name/file/instance; its ``keep`` is replaced by ``keep``.
        decode_steps: greedy steps timed after each prefill (0: no decode, its figures are NaN).
        model: reuse an already built bench model (a sweep or a scale run builds it once); its device and
            dtype are used and ``device``/``dtype`` are ignored.
        progress: optional callable ``progress(message)`` for long runs.
        device, dtype: where and in what to build the model when ``model`` is None (default cpu, float32).
    """
    cfg = cfg or BenchConfig()
    if repeats < 1:
        raise InputError(f"repeats must be at least 1, got {repeats}")
    sched = Schedule.load(schedule)
    if sched.method != "none" and sched.shape != "explicit":
        sched = replace(sched, keep=keep)
    sched.resolve(len(cfg.pattern))  # a budget the model's depth cannot meet: refused before the model is built
    model = model if model is not None else build_bench_model(cfg, device=device, dtype=dtype)
    param = next(model.parameters())
    dev = param.device
    ids, vm = bench_prompt(cfg, device=dev)
    blocks = list(model.model.layers)
    path = mamba_path(model)
    say = progress or (lambda msg: None)

    def timed_prefill() -> tuple[object, float, PeakMemory, BlockTimer]:
        with PeakMemory(dev) as mem, BlockTimer(blocks, dev) as timer:
            _sync(dev)
            start = time.perf_counter()
            out = prefill(model, ids)
            _sync(dev)
            elapsed = time.perf_counter() - start
        return out, elapsed, mem, timer

    def one_round(which: str) -> _Round:
        if which == "full":
            out, elapsed, mem, timer = timed_prefill()
            kv = cache_nbytes(compat.output_cache(out))
            tok_s = _decode(model, out, ids, decode_steps) if decode_steps else float("nan")
            return _Round(elapsed, mem.bytes, mem.source, timer.block_s, timer.hook_s, kv, tok_s)
        with reduce(model, sched, visual_mask=vm) as red:
            out, elapsed, mem, timer = timed_prefill()
            kv = cache_nbytes(compat.output_cache(out))
            scoring_s, merging_s, block_visual = red.scoring_seconds, red.merging_seconds, red.block_visual
            tok_s = _decode(model, out, ids, decode_steps) if decode_steps else float("nan")
        return _Round(
            elapsed, mem.bytes, mem.source, timer.block_s, timer.hook_s, kv, tok_s, scoring_s, merging_s, block_visual
        )

    say("warm-up")
    one_round("full")
    one_round("reduced")
    rounds: dict[str, list[_Round]] = {"full": [], "reduced": []}
    for r in range(repeats):
        say(f"repeat {r + 1}/{repeats}")
        for which in ("full", "reduced") if r % 2 == 0 else ("reduced", "full"):
            rounds[which].append(one_round(which))
    full, red = rounds["full"], rounds["reduced"]
    full_s = statistics.median(x.prefill_s for x in full)
    reduced_s = statistics.median(x.prefill_s for x in red)
    scoring_s = statistics.median(x.scoring_s for x in red)
    merging_s = statistics.median(x.merging_s for x in red)
    block_visual = red[-1].block_visual
    block_s_full = _median_lists([x.block_s for x in full])
    block_hook_s = _median_lists([x.hook_s for x in red])
    ideal = ideal_speedup(cfg, block_visual, path)
    ideal_timed = ideal_speedup_timed(cfg, block_visual, block_s_full, path)
    peaks_full = [x.peak_bytes for x in full if x.peak_bytes is not None]
    peaks_red = [x.peak_bytes for x in red if x.peak_bytes is not None]
    n_visual = block_visual[0] if block_visual else cfg.visual_tokens
    say("scoring memory")
    return BenchResult(
        arch="nemotron_h",
        schedule=sched.name or sched.method,
        keep=float(sched.keep) if sched.keep is not None else sum(block_visual) / (len(block_visual) * n_visual),
        achieved_keep=sum(block_visual) / (len(block_visual) * n_visual),
        visual_tokens=cfg.visual_tokens,
        text_tokens=cfg.text_tokens,
        blocks=len(cfg.pattern),
        hidden=cfg.hidden,
        params_m=sum(p.numel() for p in model.parameters()) / 1e6,
        device=str(dev),
        dtype=str(param.dtype).removeprefix("torch."),
        attn_implementation=attn_implementation_of(model),
        mamba_path=path,
        threads=torch.get_num_threads(),
        repeats=repeats,
        full_s=full_s,
        reduced_s=reduced_s,
        speedup=full_s / reduced_s,
        ideal_speedup=ideal,
        efficiency=(full_s / reduced_s) / ideal,
        ideal_speedup_timed=ideal_timed,
        efficiency_timed=(full_s / reduced_s) / ideal_timed,
        scoring_s=scoring_s,
        scoring_overhead_frac=scoring_s / reduced_s,
        merging_s=merging_s,
        merging_overhead_frac=merging_s / reduced_s,
        hook_s=sum(block_hook_s),
        peak_bytes_full=max(peaks_full) if peaks_full else None,
        peak_bytes_reduced=max(peaks_red) if peaks_red else None,
        memory_source=full[-1].memory_source,
        scoring_peak_bytes=max(scoring_peak_bytes(model, cfg, sched).values(), default=0),
        kv_bytes_full=full[-1].kv["kv"],
        kv_bytes_reduced=red[-1].kv["kv"],
        state_bytes=red[-1].kv["state"],
        decode_tok_s_full=statistics.median(x.decode_tok_s for x in full),
        decode_tok_s_reduced=statistics.median(x.decode_tok_s for x in red),
        block_visual=block_visual,
        block_s_full=block_s_full,
        block_s_reduced=_median_lists([x.block_s for x in red]),
        block_hook_s=block_hook_s,
        config=asdict(cfg),
    )


def attn_implementation_of(model: nn.Module) -> str:
    """The attention implementation the model runs (``sdpa``, ``eager``, ``flash_attention_2``, ...)."""
    return str(getattr(model.config, "_attn_implementation", None) or "eager")


# --------------------------------------------------------------------------------------------------
# Scoring memory
# --------------------------------------------------------------------------------------------------
def scoring_peak_bytes(
    model, cfg: BenchConfig, schedule: str | Schedule = "progressive", scorer=None
) -> dict[str, int]:
    """Peak bytes the scorers allocate for one attention and one Mamba block of the bench model on its prompt.

    The same calls the taps make (``attention_rows`` then ``attention_importance``; ``mamba2_primitives``
    then ``mamba2_importance``) on inputs of the shapes the taps receive — post-RoPE ``query (1, h, T, p)``
    and ``key (1, h_kv, T, p)``, ``in_proj``'s output ``(1, T, 2·d_inner + 2·g·n + h)`` in the model's dtype
    and device — measured with :class:`~hybridreduce.peakmem.TensorAllocations` (the inputs themselves do
    not count; their values are random, memory does not depend on them). The schedule decides which block
    kinds score (``score: attention`` leaves the Mamba entry out); ``scorer`` is the Mamba scorer's settings
    (default ``decay_free``, as :func:`~hybridreduce.engine.reduce`; ``"exact"`` works in chunks of
    ``chunk_elements``). The scores themselves are ``O(Q·V·h)``; the Mamba primitives the scorer builds (``B, C, Δ``
    in float32, no ``x``) are ``O(T·(2·g·n + h))``: linear in the prompt either way, never ``O(T²)``.

    Returns:
        ``{"attention": bytes, "mamba": bytes}`` for the blocks kinds the schedule scores with.
    """
    from .adapters import get_adapter
    from .scoring.attention import attention_importance, attention_rows
    from .scoring.config import ScorerConfig
    from .scoring.mamba import mamba2_importance, mamba2_primitives
    from .taps import resolve_positions

    sched = Schedule.load(schedule)
    adapted = get_adapter(model)
    param = next(model.parameters())
    dev, dtype = param.device, param.dtype
    _, vm = bench_prompt(cfg, device=dev)
    pos = resolve_positions(vm, None, None, sched.query)
    scorer = ScorerConfig.parse(scorer)
    T = vm.shape[1]
    g = torch.Generator().manual_seed(0)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(device=dev, dtype=dtype)

    out: dict[str, int] = {}
    attn = next((b for b in adapted.blocks if b.attn is not None), None)
    if attn is not None and sched.score != "none":
        q, k = randn(1, cfg.attn_heads, T, cfg.head_dim), randn(1, cfg.kv_heads, T, cfg.head_dim)
        with torch.no_grad(), TensorAllocations() as alloc:
            rows = attention_rows(q, k, None, cfg.head_dim**-0.5, pos.q_index)  # (1, h, Q, T)
            attention_importance(rows, pos.q_valid, pos.v_index, scorer)
            del rows
        out["attention"] = alloc.peak
        del q, k
    ssm = next((b for b in adapted.blocks if b.ssm is not None), None)
    if ssm is not None and sched.score == "unified":
        projected = randn(1, T, ssm.ssm.in_proj.out_features)
        with torch.no_grad(), TensorAllocations() as alloc:
            prims = mamba2_primitives(ssm.ssm, projected, None, with_x=False)  # what the scorer builds
            mamba2_importance(prims, pos.q_index, pos.q_valid, pos.v_index, scorer)
            del prims
        out["mamba"] = alloc.peak
    return out


# --------------------------------------------------------------------------------------------------
# Scale: the same measurement at growing prompt lengths
# --------------------------------------------------------------------------------------------------
def run_scale(
    cfg: BenchConfig,
    points: list[int],
    schedule: str | Schedule = "progressive",
    keep: float = 0.25,
    repeats: int = 3,
    decode_steps: int = 16,
    progress=None,
    device=None,
    dtype: torch.dtype = torch.float32,
    model=None,
) -> list[BenchResult]:
    """:func:`run_bench` at every visual-token count of ``points``, in one process on one model.

    The model is built once (for the largest point); each point interleaves its full and reduced rounds.
    """
    if not points:
        raise InputError("points must hold at least one visual-token count")
    say = progress or (lambda msg: None)
    if model is None:
        model = build_bench_model(replace(cfg, visual_tokens=max(points)), device=device, dtype=dtype)
    results = []
    for v in points:
        point = replace(cfg, visual_tokens=v)
        results.append(run_bench(point, schedule, keep, repeats, decode_steps, model, lambda m, v=v: say(f"{v}: {m}")))
    return results


SCALE_COLUMNS = (
    "visual_tokens",
    "full_s",
    "reduced_s",
    "speedup",
    "ideal_speedup",
    "efficiency",
    "ideal_speedup_timed",
    "efficiency_timed",
    "scoring_s",
    "scoring_overhead_frac",
    "merging_s",
    "merging_overhead_frac",
    "hook_s",
    "peak_bytes_full",
    "peak_bytes_reduced",
    "scoring_peak_bytes",
    "kv_bytes_full",
    "kv_bytes_reduced",
    "decode_tok_s_full",
    "decode_tok_s_reduced",
    "achieved_keep",
    "keep",
    "schedule",
    "blocks",
    "hidden",
    "device",
    "dtype",
    "attn_implementation",
    "mamba_path",
    "memory_source",
    "threads",
    "repeats",
)


#: Columns of ``bench_scale_blocks.csv``: per point and block, the block's kind, the visual tokens it carried
#: reduced, its median time in the full and the reduced prefill (the engine's pre-hook work included), that
#: pre-hook work alone, the measured ratio and the FLOP model's.
BLOCK_COLUMNS = ("visual_tokens", "block", "kind", "visual_reduced", "full_s", "reduced_s", "hook_s", "speedup",
                 "flop_ratio")  # fmt: skip


def write_scale(results: list[BenchResult], out_dir) -> list:
    """Write ``bench_scale.csv`` (one row per point), ``bench_scale_blocks.csv`` (one row per point and block),
    ``bench_scale.json`` (everything) and ``bench_scale.{png,pdf}`` (:func:`plot_scale`)."""
    import csv
    import json
    from pathlib import Path

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rs = sorted(results, key=lambda r: r.visual_tokens)
    csv_path = out / "bench_scale.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=SCALE_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(r.to_dict() for r in rs)
    blocks_path = out / "bench_scale_blocks.csv"
    with blocks_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(BLOCK_COLUMNS)
        for r in rs:
            cfg = BenchConfig(**r.config)
            ratios = block_flop_ratios(cfg, r.block_visual, r.mamba_path)
            for i, kind in enumerate(cfg.pattern):
                full_i, red_i = r.block_s_full[i], r.block_s_reduced[i]
                writer.writerow(
                    [r.visual_tokens, i, kind, r.block_visual[i], f"{full_i:.6f}", f"{red_i:.6f}",
                     f"{r.block_hook_s[i]:.6f}", f"{full_i / red_i:.3f}" if red_i else "", f"{ratios[i]:.3f}"]
                )  # fmt: skip
    json_path = out / "bench_scale.json"
    json_path.write_text(json.dumps([r.to_dict() for r in rs], indent=1))
    return [csv_path, blocks_path, json_path, *plot_scale(rs, out)]


def plot_scale(results: list[BenchResult], out_dir) -> list:
    """``bench_scale.{png,pdf}``: three panels against the visual tokens, log axes.

    Prefill time (full, reduced, the reduced time the FLOP model predicts, ``full_s / ideal_speedup``, and the
    one its time-weighted variant predicts, and the scorers' time); peak memory (full and reduced prefill,
    the scorers' allocations, with a line of slope 1 through the first scorer point and one of slope 2 for
    contrast); greedy decode tokens/s, full and reduced.
    """
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    rs = sorted(results, key=lambda r: r.visual_tokens)
    v = [r.visual_tokens for r in rs]
    fig, (ax_t, ax_m, ax_d) = plt.subplots(1, 3, figsize=(14, 4.2))
    ax_t.plot(v, [r.full_s for r in rs], "-o", color="C0", label="full prefill")
    ax_t.plot(v, [r.reduced_s for r in rs], "-s", color="C1", label="reduced prefill")
    ax_t.plot(v, [r.full_s / r.ideal_speedup for r in rs], "--", color="grey", label="ideal reduced (FLOP model)")
    ax_t.plot(v, [r.full_s / r.ideal_speedup_timed for r in rs], ":", color="black",
              label="ideal reduced (FLOP scaling, measured block weights)")  # fmt: skip
    ax_t.plot(v, [r.scoring_s for r in rs], "-^", color="C2", label="scoring")
    for r in rs:
        ax_t.annotate(f"{r.speedup:.2f}x", (r.visual_tokens, r.reduced_s), textcoords="offset points",
                      xytext=(4, -10), fontsize=7)  # fmt: skip
    ax_t.set_ylabel("seconds")
    ax_t.set_title("prefill time", fontsize=9)
    mib = 2**20
    if all(r.peak_bytes_full is not None for r in rs):
        ax_m.plot(v, [r.peak_bytes_full / mib for r in rs], "-o", color="C0", label="full prefill")
        ax_m.plot(v, [r.peak_bytes_reduced / mib for r in rs], "-s", color="C1", label="reduced prefill")
    scoring = [r.scoring_peak_bytes / mib for r in rs]
    ax_m.plot(v, scoring, "-^", color="C2", label="scorers (one block)")
    ax_m.plot(v, [scoring[0] * x / v[0] for x in v], "--", color="grey", label="∝ tokens")
    ax_m.plot(v, [scoring[0] * (x / v[0]) ** 2 for x in v], ":", color="grey", label="∝ tokens²")
    ax_m.set_ylabel(f"peak MiB ({rs[0].memory_source or 'scorers only'})")
    ax_m.set_title("memory", fontsize=9)
    ax_d.plot(v, [r.decode_tok_s_full for r in rs], "-o", color="C0", label="full")
    ax_d.plot(v, [r.decode_tok_s_reduced for r in rs], "-s", color="C1", label="reduced")
    ax_d.set_ylabel("greedy decode tokens/s (batch 1)")
    ax_d.set_title("decode", fontsize=9)
    for ax in (ax_t, ax_m, ax_d):
        ax.set_xscale("log", base=2)
        ax.set_xticks(v, [f"{x // 1024}k" if x >= 1024 else str(x) for x in v])
        ax.set_xlabel("visual tokens")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    ax_t.set_yscale("log")
    ax_m.set_yscale("log")
    r0 = rs[0]
    fig.suptitle(
        f"Nemotron-H pattern, {r0.blocks} blocks, width {r0.hidden}, {r0.schedule} keep {r0.keep:g}; "
        f"{r0.device} {r0.dtype} {r0.attn_implementation}, Mamba {r0.mamba_path} path, {r0.threads} threads",
        fontsize=9,
    )
    fig.tight_layout()
    paths = []
    for ext in ("png", "pdf"):
        path = out / f"bench_scale.{ext}"
        fig.savefig(path, dpi=150)
        paths.append(path)
    plt.close(fig)
    return paths


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
    columns = [k for k, x in rows[0].items() if not isinstance(x, list | dict)]
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


# --- console reports (what ``hybridreduce bench`` prints) -------------------------------------------------------


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:,.1f} MiB"


def format_result(r: BenchResult) -> str:
    """The report of one :func:`run_bench`: model, prompt, prefill, speed-ups, scoring, cache, memory, decode."""
    mib = 1 / 2**20
    return "\n".join(
        [
            f"model      Nemotron-H pattern, {r.blocks} blocks, {r.params_m:.1f} M parameters; {r.device} {r.dtype}, "
            f"{r.attn_implementation}, {r.threads} threads",
            f"prompt     {r.visual_tokens} visual + {r.text_tokens} text tokens, schedule {r.schedule}, "
            f"keep {r.keep:g} (achieved {r.achieved_keep:.4f})",
            f"prefill    full {r.full_s:.3f} s, reduced {r.reduced_s:.3f} s (median of {r.repeats})",
            f"speedup    {r.speedup:.2f}x   ideal (FLOP model, Mamba {r.mamba_path} path) {r.ideal_speedup:.2f}x   "
            f"efficiency {r.efficiency:.2f}",
            f"           ideal with measured block weights {r.ideal_speedup_timed:.2f}x   "
            f"efficiency {r.efficiency_timed:.2f}",
            f"scoring    {r.scoring_s * 1000:.1f} ms = {100 * r.scoring_overhead_frac:.1f}% of the reduced prefill",
            f"KV cache   full {r.kv_bytes_full * mib:.2f} MiB, reduced {r.kv_bytes_reduced * mib:.2f} MiB "
            f"(Mamba states {r.state_bytes * mib:.2f} MiB in both)",
            f"memory     peak {_mib(r.peak_bytes_full)} full, {_mib(r.peak_bytes_reduced)} reduced prefill "
            f"({r.memory_source or 'not measurable here'}); scorers {_mib(r.scoring_peak_bytes)} at most per block",
            f"decode     full {r.decode_tok_s_full:.1f} tok/s, reduced {r.decode_tok_s_reduced:.1f} tok/s",
        ]
    )


def format_sweep(results: list[BenchResult]) -> str:
    """One line per keep of a sweep: measured and ideal speed-up, efficiency, scoring share."""
    return "\n".join(
        f"keep {r.keep:<6g} speedup {r.speedup:5.2f}x  ideal {r.ideal_speedup:5.2f}x  efficiency {r.efficiency:4.2f}  "
        f"scoring {100 * r.scoring_overhead_frac:4.1f}%"
        for r in results
    )


def format_scale(results: list[BenchResult]) -> str:
    """The table of :func:`run_scale`: the setup (from the first point), a header, one line per visual-token count."""
    r, mib = results[0], 1 / 2**20
    lines = [
        f"Nemotron-H pattern, {r.blocks} blocks, width {r.hidden}, {r.schedule} keep {r.keep:g}; {r.device} {r.dtype}, "
        f"{r.attn_implementation}, Mamba {r.mamba_path} path, {r.threads} threads; median of {r.repeats}",
        f"{'visual':>7} {'full s':>8} {'reduced s':>9} {'speedup':>7} {'ideal':>6} {'eff':>5} {'ideal_t':>7} "
        f"{'eff_t':>5} {'scoring':>7} {'peak MiB full/red':>17} {'scorer MiB':>10} {'decode tok/s full/red':>21}",
    ]
    for r in results:
        peak = (
            f"{r.peak_bytes_full * mib:8.0f}/{r.peak_bytes_reduced * mib:<8.0f}"
            if r.peak_bytes_full is not None and r.peak_bytes_reduced is not None
            else f"{'-':>17}"
        )
        lines.append(
            f"{r.visual_tokens:>7} {r.full_s:8.3f} {r.reduced_s:9.3f} {r.speedup:6.2f}x {r.ideal_speedup:5.2f}x "
            f"{r.efficiency:5.2f} {r.ideal_speedup_timed:6.2f}x {r.efficiency_timed:5.2f} "
            f"{100 * r.scoring_overhead_frac:6.1f}% {peak} {r.scoring_peak_bytes * mib:10.1f} "
            f"{r.decode_tok_s_full:10.1f}/{r.decode_tok_s_reduced:<10.1f}"
        )
    return "\n".join(lines)
