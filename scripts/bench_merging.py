"""What merging costs: reduced prefill of a merging schedule against its dropping twin, on the bench model.

``hybridreduce bench --schedule configs/merging/progressive_merge.yaml`` reports ``merging_overhead_frac``, the
time spent at the cuts merging (assigning each removed token, forming the size-weighted rows). The size-aware
work inside the blocks (the ``+log(size)`` attention bias, the Mamba step rewrite) runs inside the blocks and is
not in that figure. This script measures the whole cost: it builds the Nemotron-H-shaped bench model once and
times the *reduced* prefill of three variants of one schedule, interleaved round by round (the order rotates, so
slow drifts of a shared machine fall on every variant alike):

- ``drop``: the schedule as given (``combine: drop``);
- ``merge``: the same keep sets, ``combine: merge``, size-aware blocks;
- ``merge-nosize``: ``combine: merge``, ``size_aware: false``.

The first cut keeps the same tokens in all three; later cuts can keep others, since a merge changes the rows
that later blocks score. Each keeps the same number at every cut (the achieved keep of each is printed). The
overhead is ``median(merge) / median(drop) - 1``; the target of the merging issue is 5% at 8k visual tokens.
Speed is measured here, never asserted in tests. Run on an otherwise idle machine; the thread count is
torch's (set ``OMP_NUM_THREADS``)::

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_merging.py --visual-tokens 8192 --repeats 5 \\
        --json notebooks/figures/bench_merging.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace

import torch

from hybridreduce import Schedule, reduce
from hybridreduce.bench import BenchConfig, bench_prompt, build_bench_model, prefill
from hybridreduce.rundir import write_text

VARIANTS = ("drop", "merge", "merge-nosize")


def variants(schedule: str, keep: float) -> dict[str, Schedule]:
    """The dropping schedule and its two merging twins, at average keep ``keep``."""
    base = replace(Schedule.load(schedule), keep=keep, combine="drop")
    return {
        "drop": base,
        "merge": replace(base, combine="merge", size_aware=True),
        "merge-nosize": replace(base, combine="merge", size_aware=False),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--visual-tokens", type=int, default=8192)
    ap.add_argument("--keep", type=float, default=0.25)
    ap.add_argument(
        "--hidden", type=int, default=None, help="model width (default the bench model's 256; heads of 32 channels)"
    )
    ap.add_argument("--schedule", default="progressive", help="a dropping schedule's name or YAML file")
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds after one warm-up round")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")

    schedules = variants(args.schedule, args.keep)
    width = {} if args.hidden is None else {"hidden": args.hidden, "attn_heads": max(1, args.hidden // 32)}
    cfg = BenchConfig(visual_tokens=args.visual_tokens, **width)
    model = build_bench_model(cfg)
    ids, vm = bench_prompt(cfg)
    print(
        f"bench model: {len(cfg.pattern)} blocks, hidden {cfg.hidden}; {args.visual_tokens} visual tokens; "
        f"schedule {args.schedule} at keep {args.keep}; torch threads {torch.get_num_threads()}"
    )

    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    merging: dict[str, list[float]] = {v: [] for v in VARIANTS}
    achieved: dict[str, float] = {}
    for r in range(args.repeats + 1):  # round 0 warms up
        order = VARIANTS[r % 3 :] + VARIANTS[: r % 3]
        for name in order:
            with reduce(model, schedules[name], visual_mask=vm) as red:
                start = time.perf_counter()
                prefill(model, ids)
                elapsed = time.perf_counter() - start
            if r:
                times[name].append(elapsed)
                merging[name].append(red.merging_seconds)
            achieved[name] = red.average_keep
        if r:
            print(f"round {r}/{args.repeats}: " + ", ".join(f"{v} {times[v][-1]:.2f} s" for v in VARIANTS))

    med = {v: statistics.median(times[v]) for v in VARIANTS}
    result = {
        "visual_tokens": args.visual_tokens,
        "keep": args.keep,
        "schedule": args.schedule,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "hidden": cfg.hidden,
        "prefill_s": med,
        "prefill_s_all": times,
        "achieved_keep": achieved,
        "merging_s": {v: statistics.median(merging[v]) for v in VARIANTS},
        "overhead": {v: med[v] / med["drop"] - 1 for v in VARIANTS[1:]},
        "merging_frac": {v: statistics.median(merging[v]) / med[v] for v in VARIANTS[1:]},
    }
    for v in VARIANTS:
        line = f"{v:>13}: reduced prefill {med[v]:.2f} s (median of {args.repeats}), keep {achieved[v]:.3f}"
        if v != "drop":
            line += (
                f", {100 * result['overhead'][v]:+.1f}% against drop, merging at the cuts "
                f"{result['merging_s'][v]:.3f} s ({100 * result['merging_frac'][v]:.1f}%)"
            )
        print(line)
    if args.json:
        write_text(args.json, json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
