"""What a Mamba block's decay-free score measures: its step size Δ and |C·B| on the relevant tokens against the rest.

The decay-free importance of visual token ``j`` for the query row ``i`` is ``|C_i·B_j| Δ_j`` (summed over heads): how
much the block writes token ``j`` into its state, as read by the question. A block whose Δ is small on the tokens a
question needs writes them weakly, so its score ranks them last even when the model answers from them (issue 14:
the Mamba blocks that depth up-scaling added to the 24-block model rank the relevant tokens last). Per Mamba block,
this prints the mean Δ (over heads) and the mean |C·B| (``C`` of the ``<answer>`` row) on the relevant visual tokens
and on the other visual tokens, and their ratio.

    python scripts/step_sizes.py --checkpoint DIR [--variant clutter] [--size 64] [--out DIR]
"""

from __future__ import annotations

import argparse
import sys

import torch
from toy_diagnostics import load_variant, write_result

from hybridreduce.adapters import get_adapter
from hybridreduce.errors import InputError
from hybridreduce.scoring.mamba import mamba2_primitives
from hybridreduce.toy import ToyDataset


@torch.no_grad()
def step_sizes(model, batch: dict) -> list[dict]:
    """Per Mamba block: mean Δ and mean |C·B| on the relevant and on the other visual tokens of ``batch``."""
    adapted = get_adapter(model)
    mixers = {s.index: s.ssm for s in adapted.blocks if s.ssm is not None}
    projected: dict[int, torch.Tensor] = {}
    hooks = [
        m.in_proj.register_forward_hook(lambda mod, args, out, i=i: projected.__setitem__(i, out.detach()))
        for i, m in mixers.items()
    ]
    try:
        model(batch["input_ids"], pixel_values=batch["pixels"], attention_mask=batch["attention_mask"])
    finally:
        for h in hooks:
            h.remove()
    visual, relevant = batch["visual_mask"], batch["relevant_mask"] & batch["visual_mask"]
    other = visual & ~relevant
    rows = []
    for i, mixer in mixers.items():
        p = mamba2_primitives(mixer, projected[i], batch["attention_mask"], with_x=False)
        b, T = visual.shape
        B, C = p.B.reshape(b, T, -1), p.C.reshape(b, T, -1)
        cb = (B * C[:, -1:]).sum(-1).abs()  # (b, T): |C·B| of the <answer> row (one group: the toy has n_groups 1)
        dt = p.dt.reshape(b, T, -1).mean(-1)  # (b, T): Δ averaged over heads
        row = {"block": i}
        for name, value in (("dt", dt), ("cb", cb)):
            row[f"{name}_relevant"] = float(value[relevant].mean())
            row[f"{name}_other"] = float(value[other].mean())
            row[f"{name}_ratio"] = row[f"{name}_relevant"] / row[f"{name}_other"]
        rows.append(row)
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a train-toy output directory")
    parser.add_argument("--variant", default=None, help="benchmark variant (default: the checkpoint's last)")
    parser.add_argument("--size", type=int, default=64, help="test questions (default 64)")
    parser.add_argument("--out", default=None, help="a folder to write step_sizes.json into")
    args = parser.parse_args(argv)
    if args.size < 1:
        parser.error("--size must be at least 1")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    model, spec, cfg = load_variant(args.checkpoint, args.variant)
    variant = cfg.variant
    data = ToyDataset(cfg, "test", args.size, vocab=spec.vocab)
    rows = step_sizes(model, data.batch(range(args.size)))
    print("block   Δ relevant   Δ other   ratio   |C·B| relevant   |C·B| other   ratio")
    for r in rows:
        print(
            f"{r['block']:5d}  {r['dt_relevant']:11.4f}  {r['dt_other']:8.4f}  {r['dt_ratio']:6.2f}  "
            f"{r['cb_relevant']:15.3f}  {r['cb_other']:12.3f}  {r['cb_ratio']:6.2f}"
        )
    result = {"checkpoint": str(args.checkpoint), "variant": variant, "split": "test", "size": args.size}
    result["blocks"] = rows
    write_result(args.out, "step_sizes.json", result)
    return result


if __name__ == "__main__":
    try:
        main()
    except InputError as exc:
        sys.exit(f"step_sizes: {exc}")
