"""Why dropping tokens hurts the embedded model, measured: share bias, query specificity and Mamba step correlation.

On the shipped 24-block toy checkpoint (both benchmark variants, the val split; :mod:`analysis.diagnostics` defines
the three measurements):

* share bias: the kept share of the asked colour's tokens against their true share, for the model's own
  ``progressive`` schedules (unified score; attention score only) and two oracle keep sets at the same keep
  (labelled tokens first, random);
* query specificity: per scored block, the Spearman ρ between the importance of one video under different questions;
* step correlation: per Mamba block, the Spearman ρ between the decay-free importance and the step size Δ.

Writes ``why_diagnostics.json`` and the figures ``why_<variant>_{share_bias,query_specificity,step_correlation}.png``
into ``--out`` (default ``notebooks/figures``) and prints a table. CPU, a few minutes::

    nice -n 10 python scripts/why_diagnostics.py [--checkpoint DIR] [--samples 128] [--videos 32] [--questions 4]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from toy_diagnostics import write_result

from analysis.diagnostics import diagnose_toy, diagnostics_dict
from analysis.plots import plot_query_specificity, plot_share_bias, plot_step_correlation
from hybridreduce.errors import InputError
from hybridreduce.toy import ToyDataset
from hybridreduce.toy.demo import CHECKPOINT, demo_method, load_toy_spec

ROOT = Path(__file__).resolve().parents[1]
#: The model's own schedules whose keep sets the share bias measures (names of hybridreduce.toy.demo's methods).
SCHEDULES = ("progressive", "progressive-attn-only")
PLOTS = {
    "share_bias": plot_share_bias,
    "query_specificity": plot_query_specificity,
    "step_correlation": plot_step_correlation,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=str(CHECKPOINT), help="a train-toy output directory (default: shipped)")
    parser.add_argument("--split", default="val", choices=("train", "val", "test"))
    parser.add_argument("--samples", type=int, default=128, help="questions of the share bias, per variant")
    parser.add_argument("--videos", type=int, default=32, help="videos of the query specificity, per variant")
    parser.add_argument("--questions", type=int, default=4, help="questions per video")
    parser.add_argument("--keep", type=float, default=0.25, help="average keep of the schedules and the oracles")
    parser.add_argument("--out", default=str(ROOT / "notebooks" / "figures"))
    args = parser.parse_args(argv)
    if min(args.samples, args.videos) < 1 or args.questions < 2 or not 0 < args.keep <= 1:
        parser.error("--samples and --videos must be >= 1, --questions >= 2, --keep in (0, 1]")
    return args


def _fmt(v) -> str:
    return "  n/a" if v is None else f"{v:5.3f}"


def print_table(variant: str, section: dict) -> None:
    print(
        f"\n== {variant}: share bias of the asked colour's tokens at each cut (mean kept and true share, their ratio,"
        " share of samples over-represented)"
    )
    for name, per in section["share_bias"].items():
        for point, r in per.items():
            count = section["share_bias_by_qtype"][name][point].get("count", {})
            print(
                f"  {name:22s} cut {point:>2}  kept {_fmt(r['kept_share'])}  true {_fmt(r['true_share'])}  "
                f"ratio {_fmt(r['ratio'])}  over {_fmt(r['over_fraction'])}  (count questions: ratio "
                f"{_fmt(count.get('ratio'))}, over {_fmt(count.get('over_fraction'))})  n {r['n']}"
            )
    print("  block kind  specificity (ρ across questions)  step correlation (ρ with Δ)")
    steps = {r["block"]: r["mean"] for r in section["step_correlation"]}
    for r in section["query_specificity"]:
        print(f"  {r['block']:5d} {r['kind']:4s}  {_fmt(r['mean'])}  {_fmt(steps.get(r['block']))}")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.manual_seed(0)
    model, spec = load_toy_spec(Path(args.checkpoint))
    model.eval()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "command": "nice -n 10 python scripts/why_diagnostics.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "checkpoint": os.path.relpath(Path(args.checkpoint).resolve(), ROOT),
        "split": args.split,
        "variants": {},
    }
    schedules = {name: demo_method(name).schedule(args.keep, model) for name in SCHEDULES}
    for cfg in spec.configs:
        start = time.perf_counter()
        dataset = ToyDataset(cfg, args.split, max(args.samples, args.videos), vocab=spec.vocab)
        diag = diagnose_toy(model, dataset, args.samples, args.videos, args.questions, schedules, args.keep)
        section = diagnostics_dict(diag)
        section["seconds"] = round(time.perf_counter() - start, 1)
        result["variants"][cfg.variant] = section
        print_table(cfg.variant, section)
        with tempfile.TemporaryDirectory() as tmp:
            for fn in PLOTS.values():
                for path in fn({"diagnostics": section}, Path(tmp), ("png",)):
                    shutil.copy(path, out / f"why_{cfg.variant}_{path.name}")
    write_result(out, "why_diagnostics.json", result)
    print(f"\nwrote {out / 'why_diagnostics.json'} and why_<variant>_*.png")
    return result


if __name__ == "__main__":
    try:
        main()
    except InputError as exc:
        sys.exit(f"why_diagnostics: {exc}")
