"""Which calibration objective to make the default, measured with merging (issue 30, deliverable 5).

``hybridreduce calibrate`` chooses a layout by a label-free objective: ``own`` (each scoring block's importance
mass on the tokens it still carries, DESIGN decision 13) or ``reference`` (the deepest attention block's importance
on the tokens the last block carries). For every embedded checkpoint and benchmark variant it was trained on, this
script calibrates with each objective (spread and free cut placement) on the scores of the demo's unlabeled val
prompts and answers ``--size`` val questions under the chosen layout with ``combine: merge`` (size-aware), and with
``--drop`` also with ``drop``. Only the val split is read: the default is chosen here, and the demo reports it once
on test.

    python experiments/merging/objectives.py [--size 128] [--keeps 0.5,0.25] [--drop] [--out FILE.csv]

Prints one row per (checkpoint, variant, objective, placement, keep, combine) and writes them as CSV.
"""

from __future__ import annotations

import argparse
import csv
import math
from dataclasses import replace
from pathlib import Path

from hybridreduce.calibrate import CALIBRATION_PLACEMENTS, OBJECTIVES, score_prompts, search
from hybridreduce.toy import ToyDataset
from hybridreduce.toy.demo import (
    CALIBRATION_PROMPTS,
    CHECKPOINT,
    CHECKPOINT12,
    calibration_batches,
    evaluate_method,
    load_toy_spec,
)
from hybridreduce.toy.evaluate import AnswerSheet

FIELDS = ("checkpoint", "variant", "objective", "placement", "keep", "combine", "prune_points", "accuracy", "count",
          "full_accuracy", "relevant_kept", "n")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128, help="val questions per variant (default 128)")
    parser.add_argument("--keeps", default="0.5,0.25", help="average keeps (default 0.5,0.25)")
    parser.add_argument("--drop", action="store_true", help="also measure each layout with combine: drop")
    parser.add_argument("--out", type=Path, default=None, help="CSV of the rows (default: print only)")
    args = parser.parse_args()
    keeps = tuple(float(k) for k in args.keeps.split(","))
    combines = ({"combine": "merge"}, {"combine": "drop"}) if args.drop else ({"combine": "merge"},)

    rows = []
    for name, checkpoint in (("toy24", CHECKPOINT), ("toy12", CHECKPOINT12)):
        model, spec = load_toy_spec(checkpoint)
        for data in spec.configs:
            dataset = ToyDataset(data, "val", args.size, vocab=spec.vocab)
            sheet = AnswerSheet(dataset.vocab)
            batches = [dataset.batch(range(s, min(s + 64, args.size))) for s in range(0, args.size, 64)]
            full = evaluate_method(model, batches, "full", 1.0, sheet, variant=data.variant)
            prompts = ToyDataset(data, "val", CALIBRATION_PROMPTS, vocab=spec.vocab)
            scores = score_prompts(model, calibration_batches(prompts))
            for objective in OBJECTIVES:
                for placement in CALIBRATION_PLACEMENTS:
                    for keep in keeps:
                        chosen = search(scores, keep, target=objective, placement=placement).schedule
                        for combine in combines:
                            sched = replace(chosen, **combine)
                            r = evaluate_method(model, batches, "progressive-calibrated", keep, sheet,
                                                variant=data.variant, schedule=sched)  # fmt: skip
                            row = {
                                "checkpoint": name, "variant": data.variant, "objective": objective,
                                "placement": placement, "keep": keep, "combine": combine["combine"],
                                "prune_points": " ".join(map(str, sched.resolve(len(r.block_visual)).prune_points)),
                                "accuracy": round(r.accuracy, 4), "count": round(r.per_type.get("count", math.nan), 4),
                                "full_accuracy": round(full.accuracy, 4), "relevant_kept": round(r.relevant_kept, 4),
                                "n": r.n,
                            }  # fmt: skip
                            rows.append(row)
                            print("  ".join(f"{row[k]}" for k in FIELDS), flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
