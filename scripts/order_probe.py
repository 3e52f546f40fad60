"""Where does an ``order`` question fail: retrieving the two times, or comparing them?

``did A appear before B`` needs two facts at the ``<answer>`` position — the first frame of shape A and of shape B —
and one comparison. A model that answers one word to every order question (``scripts/answer_confusion.py``) either
never brings the two times to that position or brings them and never learns to compare. Linear probes on the
residual stream at ``<answer>``, after every block, tell those apart:

- ``start_a`` / ``start_b``: ridge regression of each named shape's first frame (R² on held-out questions);
- ``order``: the sign of ``start_b - start_a``, i.e. the answer (ridge on ±1, accuracy on held-out questions);
The same probes apply to ``first`` questions (``which appeared first A or B``: the same two facts, answered with
the earlier colour); the probe reads the pair question the variant asks (``order``, else ``first``).

- ``when``: the same regression for the one shape of ``when`` questions, the single retrieval the model does
  answer, as the reference of what a probe finds when the information is there.

If ``start_a`` and ``start_b`` are decodable late in the stack but ``order`` is not answered, the comparison is
what is missing; if they are not decodable, retrieval is. Probes are fitted on one part of the ``val`` questions
and scored on another (the ridge penalty picked on a third); the model is never changed.

    python scripts/order_probe.py --checkpoint DIR [--size 768] [--out DIR]

Prints one line per block and writes ``order_probe.json`` into ``--out`` (default: nothing written).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import torch
from toy_diagnostics import load_variant, write_result

from hybridreduce.adapters import get_adapter
from hybridreduce.errors import InputError
from hybridreduce.toy import ToyDataset
from hybridreduce.toy.questions import PAIR_QTYPES, order_starts

PENALTIES = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)  # ridge penalties, relative to the mean feature variance


def named_starts(sample) -> list[int]:
    """First frames of the shapes a question names: A's and B's for ``order`` and ``first``
    (:func:`~hybridreduce.toy.questions.order_starts`), the one shape's for ``when``."""
    if sample.qtype in PAIR_QTYPES:
        return list(order_starts(sample.question, sample.events))
    starts = [e.start for e in sample.events if e.colour in sample.question]
    if len(starts) != 1:
        raise AssertionError(f"{sample.id}: a {sample.qtype} question names one shape, found {len(starts)}")
    return starts


def ridge_fit(x: torch.Tensor, y: torch.Tensor, penalty: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights and bias of ridge regression ``y ≈ x w + b`` (float64, ``x`` centred, penalty × mean variance)."""
    mean, y_mean = x.mean(0), y.mean(0)
    xc = x - mean
    gram = xc.T @ xc
    lam = penalty * gram.diagonal().mean().clamp_min(1e-12)  # a constant feature (the embedding) has no variance
    w = torch.linalg.solve(gram + lam * torch.eye(gram.shape[0], dtype=x.dtype), xc.T @ (y - y_mean))
    return w, y_mean - mean @ w


def r2(pred: torch.Tensor, y: torch.Tensor) -> float:
    return float(1 - ((pred - y) ** 2).sum() / ((y - y.mean()) ** 2).sum())


def probe(x: torch.Tensor, y: torch.Tensor, parts: tuple[slice, slice, slice], sign: bool = False) -> float:
    """Held-out R² (or sign accuracy with ``sign``) of the ridge probe whose penalty scores best on the middle part."""
    fit, pick, test = parts

    def score(w, b, part):
        pred = x[part] @ w + b
        return float(((pred > 0) == (y[part] > 0)).double().mean()) if sign else r2(pred, y[part])

    best = max(PENALTIES, key=lambda p: score(*ridge_fit(x[fit], y[fit], p), pick))
    return score(*ridge_fit(x[fit], y[fit], best), test)


@torch.no_grad()
def states_at_answer(model, data: ToyDataset, batch_size: int) -> torch.Tensor:
    """``(blocks + 1, n, d)`` float64 residual stream at ``<answer>``: the embedding, then after every block."""
    out = []
    for start in range(0, len(data), batch_size):
        idx = list(range(start, min(start + batch_size, len(data))))
        batch = data.batch(idx)
        hidden = model(
            batch["input_ids"],
            pixel_values=batch["pixels"],
            attention_mask=batch["attention_mask"],
            use_cache=False,
            logits_to_keep=1,
            output_hidden_states=True,
        ).hidden_states
        out.append(torch.stack([h[:, -1] for h in hidden]).double())
    return torch.cat(out, dim=1)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a train-toy output directory")
    parser.add_argument("--variant", default="clutter", help="benchmark variant with order or first questions")
    parser.add_argument("--size", type=int, default=768, help="questions of each type probed (default 768)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", default=None, help="a folder to write order_probe.json into")
    args = parser.parse_args(argv)
    if args.size < 30 or args.batch_size < 1:
        parser.error("--size must be at least 30 (three probe parts) and --batch-size at least 1")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    model, spec, cfg = load_variant(args.checkpoint, args.variant)
    pair = next((q for q in PAIR_QTYPES if q in cfg.qtypes), None)
    if pair is None:
        raise InputError(f"the {args.variant!r} variant asks no order or first questions; use one that does (clutter)")
    third = args.size // 3
    parts = (slice(0, third), slice(third, 2 * third), slice(2 * third, args.size))
    columns: dict[str, list[float]] = {}
    for qtype in (pair, "when"):
        data = ToyDataset(dataclasses.replace(cfg, qtypes=(qtype,)), "val", args.size, vocab=spec.vocab)
        states = states_at_answer(model, data, args.batch_size)
        starts = torch.tensor([named_starts(data[i]) for i in range(len(data))], dtype=torch.float64)
        if qtype == pair:
            targets = {"start_a": (starts[:, 0], False), "start_b": (starts[:, 1], False)}
            targets["order"] = (torch.sign(starts[:, 1] - starts[:, 0]), True)
        else:
            targets = {"when": (starts[:, 0], False)}
        for name, (y, sign) in targets.items():
            columns[name] = [probe(x, y, parts, sign=sign) for x in states]
    print("block  kind   " + "  ".join(f"{n:>8s}" for n in columns) + "   (R², order: accuracy; held-out)")
    kinds = ["embed", *get_adapter(model).kinds]
    for layer, kind in enumerate(kinds):
        print(f"{layer - 1:5d}  {kind:5s}  " + "  ".join(f"{columns[n][layer]:8.3f}" for n in columns))
    result = {"checkpoint": str(args.checkpoint), "variant": args.variant, "pair": pair, "split": "val"}
    result["size"] = args.size
    result["blocks"] = [{"block": i - 1, "kind": k, **{n: columns[n][i] for n in columns}} for i, k in enumerate(kinds)]
    write_result(args.out, "order_probe.json", result)
    return result


if __name__ == "__main__":
    try:
        main()
    except InputError as exc:
        sys.exit(f"order_probe: {exc}")
