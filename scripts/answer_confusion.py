"""What does a toy checkpoint answer? Per question type: accuracy, the answers given against the true ones, and, for
``order`` and ``first`` questions, accuracy by the number of frames between the two named shapes (and for ``first``,
how often the answer is one of the two named colours, and the one named first).

A question type stuck at chance is either a model that answers one word whatever it sees (a bias: the histogram of
answers given has one bar) or one that answers at random (a flat histogram), and an ``order`` question that fails
only when its two shapes are close in time is a resolution problem, not a missing comparison. This script tells
those apart before any training setting is changed (issue 14: measure why a target is missed before tuning).

    python scripts/answer_confusion.py --checkpoint DIR [--variant clutter] [--split val] [--size 512]

Prints one block per question type and writes ``confusion.json`` into ``--out`` (default: nothing written).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter

import torch
from toy_diagnostics import load_variant, write_result

from hybridreduce.errors import InputError
from hybridreduce.toy import ToyDataset
from hybridreduce.toy.evaluate import AnswerSheet, answer_logits
from hybridreduce.toy.questions import PAIR_QTYPES, answer_words

GAP_BINS = (0, 4, 8, 12, 16, 24)  # frames between the starts of the two shapes of an order / first question


def order_gap(sample) -> int:
    """Frames between the starts of the two shapes an ``order`` or ``first`` question names."""
    named = {w for w in sample.question if any(e.colour == w for e in sample.events)}
    starts = [e.start for e in sample.events if e.colour in named]
    if len(starts) != 2:
        raise AssertionError(f"{sample.id}: a {sample.qtype} question names two shapes, found {len(starts)}")
    return abs(starts[0] - starts[1])


def confusion(records: list[dict], candidates: dict[str, list[str]]) -> dict:
    """Per question type: ``n``, ``accuracy``, ``given`` and ``true`` answer counts and the ``matrix`` true →
    given → count (every candidate, zeros included); for ``order`` and ``first`` the accuracy per :data:`GAP_BINS`
    bin; for records with ``named`` (``first``: the two colours, in the question's order) the shares of answers that
    are a named colour (``named``) and the colour named first (``named_first``)."""
    out = {}
    for qtype in sorted({r["qtype"] for r in records}):
        rows = [r for r in records if r["qtype"] == qtype]
        entry = {
            "n": len(rows),
            "accuracy": sum(r["given"] == r["true"] for r in rows) / len(rows),
            "given": {a: Counter(r["given"] for r in rows)[a] for a in candidates[qtype]},
            "true": {a: Counter(r["true"] for r in rows)[a] for a in candidates[qtype]},
            "matrix": {
                t: {g: sum(r["true"] == t and r["given"] == g for r in rows) for g in candidates[qtype]}
                for t in candidates[qtype]
            },
        }
        if any("named" in r for r in rows):
            entry["named"] = sum(r["given"] in r["named"] for r in rows) / len(rows)
            entry["named_first"] = sum(r["given"] == r["named"][0] for r in rows) / len(rows)
        if qtype in PAIR_QTYPES:
            bins = {}
            for lo, hi in zip(GAP_BINS, (*GAP_BINS[1:], None), strict=True):
                inside = [r for r in rows if r["gap"] >= lo and (hi is None or r["gap"] < hi)]
                if inside:
                    label = f"{lo}-{hi - 1}" if hi is not None else f"{lo}+"
                    bins[label] = {
                        "n": len(inside),
                        "accuracy": sum(r["given"] == r["true"] for r in inside) / len(inside),
                    }
            entry["by_gap"] = bins
        out[qtype] = entry
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a train-toy output directory")
    parser.add_argument("--variant", default=None, help="benchmark variant (default: the checkpoint's last)")
    parser.add_argument("--split", default="val", choices=("val", "test"), help="held-out split (default val)")
    parser.add_argument("--size", type=int, default=512, help="questions, balanced over types (default 512)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", default=None, help="a folder to write confusion.json into")
    args = parser.parse_args(argv)
    if args.size < 1 or args.batch_size < 1:
        parser.error("--size and --batch-size must be at least 1")
    return args


@torch.no_grad()
def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    model, spec, cfg = load_variant(args.checkpoint, args.variant)
    variant = cfg.variant
    data = ToyDataset(cfg, args.split, args.size, vocab=spec.vocab)
    sheet = AnswerSheet(spec.vocab)
    candidates = {q: answer_words(cfg, q) for q in cfg.qtypes}
    records = []
    for start in range(0, args.size, args.batch_size):
        indices = list(range(start, min(start + args.batch_size, args.size)))
        samples = [data[i] for i in indices]
        qtypes = [s.qtype for s in samples]
        picks = sheet.choose(answer_logits(model, data.batch(indices)), qtypes)
        for sample, pick in zip(samples, picks.tolist(), strict=True):
            record = {"qtype": sample.qtype, "true": sample.answer, "given": candidates[sample.qtype][pick]}
            if sample.qtype in PAIR_QTYPES:
                record["gap"] = order_gap(sample)
            if sample.qtype == "first":
                record["named"] = [w for w in sample.question if w in cfg.colours]
            records.append(record)
    table = confusion(records, candidates)
    for qtype, entry in table.items():
        given = ", ".join(f"{a} {n}" for a, n in entry["given"].items())
        print(f"{qtype:7s} n={entry['n']:4d} accuracy {entry['accuracy']:.1%}   answers given: {given}")
        if "named" in entry:
            print(f"          a named colour {entry['named']:.1%}, the one named first {entry['named_first']:.1%}")
        for label, b in entry.get("by_gap", {}).items():
            print(f"          frames between the two shapes {label:>6s}: n={b['n']:4d} accuracy {b['accuracy']:.1%}")
    result = {"checkpoint": str(args.checkpoint), "variant": variant, "split": args.split, "size": args.size}
    result["types"] = table
    write_result(args.out, "confusion.json", result)
    return result


if __name__ == "__main__":
    try:
        main()
    except InputError as exc:
        sys.exit(f"answer_confusion: {exc}")
