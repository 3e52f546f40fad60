"""Is calibrate's label-free objective a good proxy for accuracy? (issue 17)

Scores ``--prompts`` unlabeled val prompts once (as ``hybridreduce calibrate`` does), computes both objectives of
every candidate layout (spread cuts) at ``--keep`` — the retained importance mass ``J`` and the reference objective
``J_ref`` (:func:`hybridreduce.calibrate.objective`) — then measures each candidate's accuracy on ``--size``
*other* val questions (the calibration prompts are never scored for accuracy; the test split is never touched) and
reports the Spearman rank correlation of each objective with accuracy, with the layout each picks and the layout
accuracy would have picked.

    python scripts/calibration_proxy.py --keep 0.5 --size 256 --out runs/calibration_proxy

Writes ``proxy.json`` (every candidate: layout, J, accuracy, relevant tokens kept), ``proxy.csv`` and
``proxy.{png,pdf}`` (accuracy against J).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np


def average_ranks(values: list[float]) -> np.ndarray:
    """Ranks 1..n, tied values sharing the mean of their ranks."""
    v = np.asarray(values, dtype=float)
    order = np.argsort(v, kind="stable")
    ranks = np.empty(len(v))
    ranks[order] = np.arange(1, len(v) + 1)
    for value in np.unique(v):
        tied = v == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's ρ: the Pearson correlation of the average ranks (NaN when either is constant)."""
    rx, ry = average_ranks(x), average_ranks(y)
    if np.std(rx) == 0 or np.std(ry) == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", help="a train-toy directory (default: the shipped one)")
    p.add_argument("--variant", help="benchmark variant (default: the checkpoint's first)")
    p.add_argument("--keep", type=float, default=0.5, help="average keep (default 0.5)")
    p.add_argument("--prompts", type=int, default=64, help="calibration prompts (default 64)")
    p.add_argument("--size", type=int, default=256, help="val questions each candidate is measured on (default 256)")
    p.add_argument("--out", default="runs/calibration_proxy", help="output directory")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    args = p.parse_args(argv)

    from hybridreduce import validate
    from hybridreduce.errors import HybridReduceError, InputError

    try:
        keep = validate.number(args.keep, "keep (--keep)", 0, 1, low_open=True, high_open=True)
        validate.integer(args.prompts, "prompts (--prompts)", 4)
        validate.integer(args.size, "size (--size)", 1)
        out = validate.writable_dir(args.out)
        if out.is_dir() and any(out.iterdir()) and not args.overwrite:
            raise InputError(f"--out {out} is not empty; pass --overwrite or choose another folder")
        return _run(args, keep, out)
    except HybridReduceError as exc:
        print(f"calibration_proxy: error: {exc}", file=sys.stderr)
        return 2


def _run(args, keep: float, out: Path) -> int:
    import torch
    from tqdm.auto import tqdm

    from hybridreduce import Schedule
    from hybridreduce.calibrate import objective, score_prompts, search
    from hybridreduce.errors import InputError
    from hybridreduce.toy import ToyDataset
    from hybridreduce.toy.demo import calibration_batches, evaluate_method, load_toy_spec
    from hybridreduce.toy.evaluate import AnswerSheet

    torch.set_num_threads(1)
    model, spec = load_toy_spec(args.checkpoint)
    configs = {c.variant: c for c in spec.configs}
    variant = args.variant or next(iter(configs))
    if variant not in configs:
        raise InputError(f"--variant {variant}: the checkpoint knows {sorted(configs)}")
    val = ToyDataset(configs[variant], "val", args.prompts + args.size, vocab=spec.vocab)
    calibration = ToyDataset(configs[variant], "val", args.prompts, vocab=spec.vocab)  # the first items of val
    scores = score_prompts(model, calibration_batches(calibration))
    cal = search(scores, keep)
    sheet = AnswerSheet(val.vocab)
    batches = [val.batch(range(s, min(s + 64, len(val)))) for s in range(args.prompts, len(val), 64)]
    rows = []
    for cand in tqdm(cal.candidates, desc="candidates", dynamic_ncols=True):
        sched = Schedule(keep=keep, first_prune=cand["first_prune"], stages=cand["stages"], shape=cand["shape"])
        r = evaluate_method(model, batches, "progressive", keep, sheet, variant=variant, schedule=sched)
        reference = objective(scores, sched.resolve(scores.num_blocks), "reference")[0]
        rows.append({**cand, "reference_objective": reference, "accuracy": r.accuracy,
                     "relevant_kept": r.relevant_kept, "per_type": r.per_type})  # fmt: skip
    J = [r["objective"] for r in rows]
    acc = [r["accuracy"] for r in rows]
    rho = spearman(J, acc)
    rho_rel = spearman(J, [r["relevant_kept"] for r in rows])
    rho_ref = spearman([r["reference_objective"] for r in rows], acc)
    by_ref = max(rows, key=lambda r: r["reference_objective"])
    by_acc = max(rows, key=lambda r: r["accuracy"])
    result = {
        "checkpoint": args.checkpoint or "shipped",
        "variant": variant,
        "keep": keep,
        "calibration_prompts": args.prompts,
        "questions": args.size,
        "spearman_objective_accuracy": rho,
        "spearman_objective_relevant_kept": rho_rel,
        "spearman_reference_objective_accuracy": rho_ref,
        "chosen_by_objective": rows[0],
        "chosen_by_reference_objective": by_ref,
        "best_by_accuracy": by_acc,
        "candidates": rows,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "proxy.json").write_text(json.dumps(result, indent=2) + "\n")
    with (out / "proxy.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["first_prune", "stages", "shape", "prune_points", "objective", "reference_objective", "accuracy",
                    "relevant_kept"])  # fmt: skip
        for r in rows:
            w.writerow([r["first_prune"], r["stages"], r["shape"], " ".join(map(str, r["prune_points"])),
                        r["objective"], r["reference_objective"], r["accuracy"], r["relevant_kept"]])  # fmt: skip
    _plot(rows, rho, keep, variant, out / "proxy")
    print(
        f"{len(rows)} layouts at keep {keep:g} ({variant}, {args.size} val questions): Spearman rho(J, accuracy) = "
        f"{rho:.2f}, rho(J, relevant kept) = {rho_rel:.2f}; J picks first cut {rows[0]['first_prune']} "
        f"({rows[0]['accuracy']:.3f}); rho(J_ref, accuracy) = {rho_ref:.2f}, J_ref picks {by_ref['prune_points']} "
        f"({by_ref['accuracy']:.3f}); accuracy would pick {by_acc['prune_points']} {by_acc['shape']} "
        f"({by_acc['accuracy']:.3f}); wrote {out}"
    )
    return 0


def _plot(rows: list[dict], rho: float, keep: float, variant: str, stem: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    sc = ax.scatter([r["objective"] for r in rows], [r["accuracy"] for r in rows],
                    c=[r["first_prune"] for r in rows], cmap="viridis", s=28)  # fmt: skip
    ax.scatter([rows[0]["objective"]], [rows[0]["accuracy"]], marker="*", s=220, color="black", label="chosen by J")
    fig.colorbar(sc, ax=ax, label="first cut (block)")
    ax.set_xlabel("retained importance mass J (label-free, calibration prompts)")
    ax.set_ylabel("accuracy (other val questions)")
    ax.set_title(f"{variant}, keep {keep:g}: Spearman ρ = {rho:.2f} over {len(rows)} layouts")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    for suffix in (".png", ".pdf"):
        fig.savefig(stem.with_suffix(suffix), dpi=130)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
