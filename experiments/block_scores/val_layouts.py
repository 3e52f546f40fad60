"""Progressive layouts whose cuts follow the blocks that rank, on the val split (issue 14; this folder's README).

On the 24-block model the blocks whose scores find the relevant tokens are Mamba block 5, attention block 13 and
Mamba blocks 14 and 18 (`hybridreduce analyze` on val: recall@25% of the ground-truth tokens); the Mamba blocks
that depth up-scaling added rank them last. A cut is scored by the most recent scoring block before it, so a
layout with cuts right after the good blocks (before blocks 6, 14 and 19) is scored by them. This script measures
such layouts and the demo's methods at the average keep they carry, on ``--split val`` only: what is chosen
here is then reported once on test by the demo.

    python experiments/block_scores/val_layouts.py [--checkpoint DIR] [--size 256] [--out FILE.csv]

Prints one row per (variant, layout): accuracy, share of full, average keep carried, relevant tokens kept in the
last block; writes the rows as CSV.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from hybridreduce import InputError, Schedule
from hybridreduce.calibrate import score_prompts, search
from hybridreduce.toy import ToyDataset
from hybridreduce.toy.demo import CALIBRATION_PROMPTS, CHECKPOINT, calibration_batches, evaluate_method, load_toy_spec
from hybridreduce.toy.evaluate import AnswerSheet

#: name → (demo method whose scorer and EVS setting it uses, its keep, settings of its in-LM schedule or None for the
#: method's own at that keep); layouts with cuts at fixed blocks follow this folder's README (block 5, 13, 18)
HAND_LAYOUTS = {
    "cuts 6 / 14 / 19, final 0.25": ("progressive", 0.25, dict(stages=[6, 14, 19], budget="final", keep=0.25)),
    "cuts 6 / 14 / 19, final 0.125": ("progressive", 0.125, dict(stages=[6, 14, 19], budget="final", keep=0.125)),
    "cut 6, final 0.1": ("progressive", 0.1, dict(stages=[6], budget="final", keep=0.1)),
}
#: average keeps of the calibrated and demo rows
KEEPS = (0.5, 0.35, 0.25)
#: calibrations compared (objective, placement): the demo's ``progressive-calibrated`` ran ("own", "spread")
CALIBRATIONS = (("own", "spread"), ("reference", "spread"), ("reference", "free"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=str(CHECKPOINT), help="a train-toy output directory (default: shipped)")
    parser.add_argument("--size", type=int, default=256, help="val questions per variant (default 256)")
    parser.add_argument("--out", type=Path, default=None, help="CSV of the rows (default: print only)")
    args = parser.parse_args()

    model, spec = load_toy_spec(args.checkpoint)
    rows = []
    for data in spec.configs:
        dataset = ToyDataset(data, "val", args.size, vocab=spec.vocab)
        sheet = AnswerSheet(dataset.vocab)
        batches = [dataset.batch(range(s, min(s + 64, args.size))) for s in range(0, args.size, 64)]
        full = evaluate_method(model, batches, "full", 1.0, sheet, variant=data.variant)
        # label-free: the scores of the first CALIBRATION_PROMPTS val prompts of this variant (as the demo does)
        scores = score_prompts(
            model, calibration_batches(ToyDataset(data, "val", CALIBRATION_PROMPTS, vocab=spec.vocab))
        )
        runs = [(name, method, keep, Schedule.preset("progressive", **settings))
                for name, (method, keep, settings) in HAND_LAYOUTS.items()]  # fmt: skip
        for keep in KEEPS:
            runs += [(f"{m} {keep}", m, keep, None) for m in ("progressive", "random", "evs")]
            for target, placement in CALIBRATIONS:
                try:
                    cal = search(scores, keep, target=target, placement=placement)
                except InputError as exc:
                    print(f"{data.variant}: calibration {target}/{placement} at {keep}: {exc}")
                    continue
                name = f"calibrated {target}/{placement} {keep} {list(cal.candidates[0]['prune_points'])}"
                runs.append((name, "progressive", keep, cal.schedule))
        for name, method, keep, schedule in runs:
            r = evaluate_method(model, batches, method, keep, sheet, variant=data.variant, schedule=schedule)
            row = {
                "variant": data.variant,
                "layout": name,
                "accuracy": round(r.accuracy, 4),
                "of_full": round(r.accuracy / full.accuracy, 4),
                "avg_keep": round(r.achieved_keep, 3),
                "relevant_kept": round(r.relevant_kept, 3),
                **{f"acc_{q}": round(a, 3) for q, a in r.per_type.items()},
            }
            rows.append(row)
            print(
                f"{data.variant:<8} {name:<48} {100 * r.accuracy:5.1f}% ({100 * row['of_full']:3.0f}% of "
                f"{100 * full.accuracy:.1f}%)  avg keep {r.achieved_keep:.3f}  relevant kept {r.relevant_kept:.2f}  "
                + " ".join(f"{q} {100 * a:.0f}" for q, a in r.per_type.items()),
                flush=True,
            )
    if args.out is not None:
        keys = list(dict.fromkeys(k for row in rows for k in row))
        with args.out.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
