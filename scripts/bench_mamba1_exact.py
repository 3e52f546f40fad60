"""Time Jamba's exact Mamba-1 scorer against the forward of the block it scores.

Builds the tiny random Jamba (``hybridreduce.tiny_models``; ``--hidden`` widens it), runs one prefill of
``--tokens`` tokens — ``--prefix`` text tokens, then visual tokens, then ``--queries`` query tokens
(``query="after_visual"``) — and reports, for the first Mamba block:

- forward: wall time of that decoder block inside the model's forward (norm, Mamba mixer on
  transformers' torch path, feed-forward), measured by a pre- and a post-hook;
- scorer: wall time of what the taps do on that block with ``ScorerConfig(mamba="exact")``:
  :func:`mamba1_primitives` on the recorded ``in_proj`` output, then :func:`mamba1_importance`;
- their ratio (the target of issue 16 is ≤ 3 at 4,096 tokens).

Each figure is the median of ``--repeats`` runs after one warm-up run. Speed is measured here, never
asserted in tests. Run on an otherwise idle machine; the thread count is torch's (set
``OMP_NUM_THREADS``)::

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_mamba1_exact.py --tokens 4096
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from hybridreduce import ScorerConfig, get_adapter
from hybridreduce.scoring.mamba import mamba1_importance, mamba1_primitives
from hybridreduce.taps import resolve_positions
from hybridreduce.tiny_models import build_tiny_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=4096, help="prompt length T")
    ap.add_argument("--queries", type=int, default=32, help="query tokens after the visual tokens (|Q|)")
    ap.add_argument("--prefix", type=int, default=16, help="text tokens before the visual tokens")
    ap.add_argument("--hidden", type=int, default=None, help="hidden size (default: the tiny config's)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    overrides = {} if args.hidden is None else {"hidden_size": args.hidden}
    model = build_tiny_model("jamba", **overrides)
    spec = next(s for s in get_adapter(model).scoring_blocks if s.ssm_type == "mamba1")
    mixer = spec.ssm
    T, Q = args.tokens, args.queries
    V = T - args.prefix - Q
    torch.manual_seed(0)
    ids = torch.randint(8, model.config.vocab_size, (1, T))
    visual = torch.zeros(1, T, dtype=torch.bool)
    visual[:, args.prefix : args.prefix + V] = True
    pos = resolve_positions(visual)  # q_index (1, Q), q_valid (1, Q), v_index (1, V)
    cfg = ScorerConfig(mamba="exact")
    c, n = mixer.A_log.shape
    print(
        f"Jamba tiny: hidden {model.config.hidden_size}, Mamba-1 channels c = {c}, state n = {n}, "
        f"dt_rank {mixer.time_step_rank}, conv {mixer.conv_kernel_size}; block {spec.index} ({spec.name})"
    )
    print(
        f"prompt: T = {T} tokens, |V| = {V} visual, |Q| = {Q} query rows; torch threads {torch.get_num_threads()}; "
        f"chunk_elements = {cfg.chunk_elements:,}"
    )

    rec: dict[str, object] = {}
    hooks = [
        spec.module.register_forward_pre_hook(lambda m, a: rec.__setitem__("t0", time.perf_counter())),
        spec.module.register_forward_hook(lambda m, a, o: rec.__setitem__("t1", time.perf_counter())),
        mixer.in_proj.register_forward_hook(lambda m, a, o: rec.__setitem__("proj", o.detach())),
    ]
    forward_s, scorer_s = [], []
    try:
        for rep in range(args.repeats + 1):  # the first run warms up
            with torch.no_grad():
                model(ids, use_cache=False)
                t0 = time.perf_counter()
                prims = mamba1_primitives(mixer, rec["proj"])
                scores = mamba1_importance(prims, pos.q_index, pos.q_valid, pos.v_index, cfg)
                t1 = time.perf_counter()
            if rep:
                forward_s.append(rec["t1"] - rec["t0"])
                scorer_s.append(t1 - t0)
    finally:
        for h in hooks:
            h.remove()
    assert torch.isfinite(scores).all() and abs(float(scores.sum()) - 1.0) < 1e-5
    fwd, sc = statistics.median(forward_s), statistics.median(scorer_s)
    print(f"block forward {fwd:.3f} s   exact scorer {sc:.3f} s   ratio {sc / fwd:.2f}x   (median of {args.repeats})")


if __name__ == "__main__":
    main()
