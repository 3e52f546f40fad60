"""Evaluate the toy finetuning arms: the base model, each arm and the full-token ablation, at each arm's schedule.

Issue 28 item 4: the shipped checkpoint finetuned under the schedule it is evaluated with, against the ablation
(the same steps, data and learning rate at full tokens). For every arm given as ``NAME=DIR``, where ``DIR`` is a
``hybridreduce finetune --model toy`` output whose ``hybridreduce_finetune.json`` names the arm's schedule and
keep, this runs ``hybridreduce demo`` at that schedule and keep on three models — the base, the arm and the
ablation (``--ablation DIR``) — and writes one row per (method, variant, model) with the accuracy per question
type::

    python experiments/finetune/evaluate.py --split val --size 192 --out runs/finetune_val \\
        --ablation experiments/finetune/toy_ablation random=experiments/finetune/toy_random \\
        progressive-calibrated=experiments/finetune/toy_calibrated

Each model is one demo run (``OUT/<model>/``: ``base``, ``ablation`` — both answering under every arm's schedule —
and each arm's ``NAME``), and the rows go to ``OUT/finetune_eval.csv`` and ``OUT/finetune_eval.md``. A model's
merged weights are read from ``DIR/merged`` (``finetune`` writes it); a run that predates it gets them remade from
the adapter into ``OUT/weights/<NAME>``. An ``OUT`` that holds files is refused, as everywhere in the project.
Choose on ``val``; report ``test`` once.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

from hybridreduce.errors import InputError
from hybridreduce.rundir import holds_files, write_text

ROOT = Path(__file__).resolve().parents[2]


def read_record(folder: Path) -> dict:
    """The ``hybridreduce_finetune.json`` of a finetune output."""
    from hybridreduce.finetune.lora import RECORD
    from hybridreduce.finetune.lora import read_record as read

    record = read(folder)
    if record is None:
        raise InputError(f"{folder} is not a `hybridreduce finetune` output (no {RECORD})")
    return record


def weights(folder: Path, name: str, out: Path) -> Path:
    """A train-toy checkpoint with ``folder``'s finetuned weights: ``folder/merged``, or remade from the adapter."""
    if (folder / "merged" / "model.safetensors").is_file():
        return folder / "merged"
    from hybridreduce.finetune.lora import merge_adapter
    from hybridreduce.finetune.toy import save_demo_checkpoint
    from hybridreduce.toy.demo import CHECKPOINT, load_toy_spec

    model, _ = load_toy_spec()
    return save_demo_checkpoint(merge_adapter(model, folder), CHECKPOINT, out / "weights" / name)


def method_of(record: dict) -> tuple[str, float]:
    """The demo method and keep an arm was trained under."""
    cfg = record["config"]
    if cfg["schedule"] in (None, "none"):
        raise InputError("an arm must be trained under a schedule; the full-token run is the --ablation")
    return cfg["schedule"], float(cfg["keep"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("arms", nargs="+", help="NAME=DIR: a finetune output trained under a schedule")
    ap.add_argument("--ablation", type=Path, required=True, help="the full-token finetune output")
    ap.add_argument("--split", choices=("val", "test"), required=True)
    ap.add_argument("--size", type=int, default=192, help="questions per variant (default 192)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)

    arms = {}
    for item in args.arms:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            ap.error(f"an arm is NAME=DIR, got {item!r}")
        if name in arms:
            ap.error(f"the arm {name!r} is named twice")
        arms[name] = Path(folder)
    try:
        methods = {name: method_of(read_record(folder)) for name, folder in arms.items()}
        if read_record(args.ablation)["config"]["schedule"] not in (None, "none"):
            raise InputError(f"--ablation {args.ablation} was trained under a schedule; give the full-token run")
        if holds_files(args.out):
            raise InputError(f"--out {args.out} holds files; choose another folder")
    except InputError as exc:
        print(f"evaluate: error: {exc}", file=sys.stderr)
        return 2

    args.out.mkdir(parents=True)
    # One demo run per model: the base and the ablation answer under every arm's schedule in one run (the full-token
    # row, the slowest, is then computed once per model), each finetuned model under its own.
    wanted = set(methods.values())  # (method, keep)
    runs = {"base": (None, sorted(wanted)), "ablation": (weights(args.ablation, "ablation", args.out), sorted(wanted))}
    for name, folder in arms.items():
        runs[name] = (weights(folder, name, args.out), [methods[name]])
    found = {}
    for model, (checkpoint, pairs) in runs.items():
        run = args.out / model
        command = [sys.executable, "-m", "hybridreduce", "demo", "--split", args.split, "--size", str(args.size)]
        command += ["--methods", ",".join(dict.fromkeys(m for m, _ in pairs))]
        command += ["--keeps", ",".join(dict.fromkeys(f"{k:g}" for _, k in pairs)), "--out", str(run), "--no-progress"]
        if checkpoint is not None:
            command += ["--checkpoint", str(checkpoint)]
        print("$", " ".join(command[1:]), flush=True)
        subprocess.run(command, check=True, cwd=ROOT)
        for r in json.loads((run / "summary.json").read_text())["results"]:
            found[(r["method"], r["keep"], r["variant"], model)] = r
    rows = []
    for name in arms:
        method, keep = methods[name]
        for model in ("base", name, "ablation"):
            for variant in ("static", "clutter"):
                r = found.get((method, keep, variant, model))
                if r is not None:
                    rows.append(
                        {"method": method, "keep": keep, "variant": variant, "model": model, "n": r["n"]}
                        | {"accuracy": r["accuracy"]}
                        | {f"type_{t}": a for t, a in r["per_type"].items()}
                    )
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(args.out / "finetune_eval.csv", "w", newline="") as f:
        w = csv.DictWriter(f, columns)
        w.writeheader()
        w.writerows(rows)
    types = [c for c in columns if c.startswith("type_")]
    lines = ["| method | variant | model | " + " | ".join(t[5:] for t in types) + " | all |"]
    lines.append("|" + "---|" * (len(types) + 4))
    for r in rows:
        cells = [f"{100 * r[t]:.0f}" if t in r else "" for t in types]
        lines.append(
            f"| {r['method']} | {r['variant']} | {r['model']} | "
            + " | ".join(cells)
            + f" | {100 * r['accuracy']:.1f} |"
        )
    write_text(args.out / "finetune_eval.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
