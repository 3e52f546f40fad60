"""The toy benchmark's own statistics: how few tokens a question needs, and how many of them EVS keeps.

For ``size`` balanced items of one split of a config (:class:`~hybridreduce.toy.dataset.ToyDataset`)::

    relevant_pct     relevant tokens per question, % of the V visual tokens     mean, max (overall, per type)
    evs[mode][k]     EVS (hybridreduce.evs) at keep k, i.e. pruning rate 1 − k:
        share        kept relevant tokens / relevant tokens, averaged over questions (overall, per type)
        complete     share of questions whose every relevant token is kept
        any          share of questions with at least one relevant token kept (enough for when / where /
                     colour; order and first need one of each shape, count every shape)

``mode`` is ``"pixel"`` (mean absolute RGB change of each patch against the previous frame) and, when a vision
encoder is given, ``"embedding"`` (1 − cos of its embeddings against the previous frame). On ``static`` a
still camera makes temporal change an oracle for events; on ``clutter`` it is not (DESIGN decision 12).

Run as a script (prints a table; ``--out FILE`` also writes the dict as JSON)::

    python -m hybridreduce.toy.stats --variant clutter --split val --size 256 [--embedding] [--out stats.json]

Shapes use the dimension letters of :mod:`hybridreduce.glossary` (``d`` is the vision encoder's width here).
"""

from __future__ import annotations

import argparse
import json
import numbers
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import HybridReduceError, InputError
from ..evs import evs_retention_mask
from .config import SPLITS, VARIANTS, ToyConfig
from .dataset import ToyDataset

#: The keep fractions reported by default.
KEEPS = (0.5, 0.25, 0.125)


def _keeps(keeps) -> tuple[float, ...]:
    if isinstance(keeps, (str, bytes)) or not isinstance(keeps, Sequence) or len(keeps) == 0:
        raise InputError(f"keeps must be a non-empty list of keep fractions in (0, 1], got {keeps!r}")
    for k in keeps:
        if isinstance(k, bool) or not isinstance(k, numbers.Real) or not 0.0 < float(k) <= 1.0:
            raise InputError(f"every keep fraction must be a number in (0, 1] (1 − the EVS pruning rate), got {k!r}")
    return tuple(float(k) for k in keeps)


def _summary(values: dict[str, list[float]], qtypes: Sequence[str]) -> dict:
    """``{"mean", "per_type": {q: mean}}`` over questions (``values[q]``: one value per question of type q)."""
    every = [v for q in qtypes for v in values[q]]
    return {"mean": float(np.mean(every)), "per_type": {q: float(np.mean(values[q])) for q in qtypes if values[q]}}


def benchmark_stats(
    cfg: ToyConfig,
    split: str = "val",
    size: int = 256,
    keeps: Sequence[float] = KEEPS,
    encoder: Callable[[torch.Tensor], torch.Tensor] | None = None,
    batch_size: int = 32,
) -> dict:
    """Relevant-token and EVS statistics of the first ``size`` balanced items of a split (see the module docstring).

    Args:
        cfg: the benchmark config (e.g. ``ToyConfig.preset("clutter")``).
        split: ``"train"``, ``"val"`` or ``"test"``.
        size: number of items (``≥ 1``; a multiple of ``len(cfg.qtypes)`` keeps the types equally weighted).
        keeps: keep fractions ``k`` in ``(0, 1]``; EVS runs at pruning rate ``1 − k``.
        encoder: optional vision encoder for embedding-mode EVS: pixels ``(b, F, 3, H·P, W·P)`` in ``[0, 1]`` →
            ``(b, V, d)`` in visual-token order (e.g. the shipped checkpoint's ``model.vision``,
            :class:`~hybridreduce.toy.model.ToyVisionEncoder`); called under ``torch.no_grad()``.
        batch_size: items per encoder call.
    Returns:
        A plain dict (JSON-ready)::

            {"variant", "split", "size", "n_visual", "qtypes",
             "relevant_pct": {"mean", "max", "per_type": {q: {"mean", "max"}}},
             "evs": {mode: {"0.5": {"share": {"mean", "per_type"}, "complete": {...}, "any": {...}}, ...}}}

        with ``mode`` ``"pixel"`` and, given an encoder, ``"embedding"``; keep keys are ``f"{k:g}"``.
    Raises:
        InputError: a bad config, split, size, keeps, or an encoder output of the wrong shape.
    """
    keeps = _keeps(keeps)
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    dataset = ToyDataset(cfg, split, size)  # checks cfg, split and size
    F, H, W, V = cfg.frames, cfg.rows, cfg.cols, cfg.n_visual
    modes = ("pixel", "embedding") if encoder is not None else ("pixel",)
    rel_pct = {q: [] for q in cfg.qtypes}
    kept = {
        m: {k: {name: {q: [] for q in cfg.qtypes} for name in ("share", "complete", "any")} for k in keeps}
        for m in modes
    }
    for start in range(0, len(dataset), batch_size):
        samples = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        pixels = torch.from_numpy(np.stack([s.video for s in samples])).permute(0, 1, 4, 2, 3)  # (b, F, 3, H·P, W·P) u8
        embeds = None
        if encoder is not None:
            with torch.no_grad():
                embeds = encoder(pixels.float() / 255.0)  # (b, V, d)
            if not isinstance(embeds, torch.Tensor) or embeds.dim() != 3 or embeds.shape[:2] != (len(samples), V):
                shape = tuple(embeds.shape) if isinstance(embeds, torch.Tensor) else type(embeds).__name__
                raise InputError(
                    f"encoder must map (b, F, 3, H·P, W·P) pixels to (b, V, d) = ({len(samples)}, {V}, d) embeddings, "
                    f"got {shape}; is it the encoder of a model with this config's frames and grid?"
                )
            embeds = embeds.float()
        for b, sample in enumerate(samples):
            relevant = torch.zeros(V, dtype=torch.bool)
            relevant[[t * H * W + r * W + c for t, r, c in sample.relevant]] = True
            n_rel = int(relevant.sum())
            rel_pct[sample.qtype].append(100.0 * n_rel / V)
            for mode in modes:
                for k in keeps:
                    rate = 1.0 - k
                    if mode == "pixel":
                        keep = evs_retention_mask(pixels[b], rate, mode="pixel", patch_size=cfg.patch)  # (V,)
                    else:
                        keep = evs_retention_mask(embeds[b].reshape(F, H, W, -1), rate, mode="embedding")
                    hit = int((keep & relevant).sum())
                    slot = kept[mode][k]
                    slot["share"][sample.qtype].append(hit / n_rel)
                    slot["complete"][sample.qtype].append(float(hit == n_rel))
                    slot["any"][sample.qtype].append(float(hit > 0))
    every = [v for q in cfg.qtypes for v in rel_pct[q]]
    return {
        "variant": cfg.variant,
        "split": split,
        "size": len(dataset),
        "n_visual": V,
        "qtypes": list(cfg.qtypes),
        "relevant_pct": {
            "mean": float(np.mean(every)),
            "max": float(np.max(every)),
            "per_type": {q: {"mean": float(np.mean(v)), "max": float(np.max(v))} for q, v in rel_pct.items() if v},
        },
        "evs": {
            mode: {
                f"{k:g}": {name: _summary(values, cfg.qtypes) for name, values in kept[mode][k].items()} for k in keeps
            }
            for mode in modes
        },
    }


def format_stats(stats: dict) -> str:
    """A text table of :func:`benchmark_stats`: relevant % and EVS-kept share per question type and keep."""
    qtypes = [q for q in stats["qtypes"] if q in stats["relevant_pct"]["per_type"]]  # types with items
    header = f"{'':<30}" + "".join(f"{q:>9}" for q in qtypes) + f"{'all':>9}"
    rel = stats["relevant_pct"]
    lines = [
        f"{stats['variant']} benchmark, {stats['split']} split, {stats['size']} questions, "
        f"{stats['n_visual']} visual tokens each",
        header,
        "-" * len(header),
        f"{'relevant % (mean)':<30}"
        + "".join(f"{rel['per_type'][q]['mean']:>9.2f}" for q in qtypes)
        + f"{rel['mean']:>9.2f}",
        f"{'relevant % (max)':<30}"
        + "".join(f"{rel['per_type'][q]['max']:>9.2f}" for q in qtypes)
        + f"{rel['max']:>9.2f}",
    ]
    for mode, per_keep in stats["evs"].items():
        for k, parts in per_keep.items():
            for name, what in (("share", "kept"), ("complete", "all kept"), ("any", "any kept")):
                part = parts[name]
                label = f"evs {mode} {k} {what}"
                lines.append(
                    f"{label:<30}" + "".join(f"{part['per_type'][q]:>9.3f}" for q in qtypes) + f"{part['mean']:>9.3f}"
                )
    lines.append(
        "kept: mean share of a question's relevant tokens that EVS keeps; all kept / any kept: share of questions "
        "with all / at least one of them kept"
    )
    return "\n".join(lines)


def _parse_override(text: str) -> tuple[str, object]:
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise InputError(f"--set takes KEY=VALUE (a ToyConfig field and a YAML value), got {text!r}")
    return key.strip(), yaml.safe_load(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hybridreduce.toy.stats", description="statistics of the toy benchmark (relevant tokens, EVS)"
    )
    parser.add_argument("--variant", default="static", choices=VARIANTS, help="benchmark variant (default static)")
    parser.add_argument("--split", default="val", choices=tuple(SPLITS), help="split (default val)")
    parser.add_argument("--size", type=int, default=256, help="number of balanced items (default 256)")
    parser.add_argument(
        "--keep", type=float, nargs="+", default=list(KEEPS), help="EVS keep fractions (default 0.5 0.25 0.125)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a ToyConfig field, e.g. --set where_answer=quadrant --set event_len=[3,3] (repeat)",
    )
    parser.add_argument(
        "--embedding", action="store_true", help="also EVS on embeddings of a train-toy checkpoint's vision encoder"
    )
    parser.add_argument("--checkpoint", metavar="DIR", help="checkpoint for --embedding (default: the shipped one)")
    parser.add_argument("--out", metavar="FILE", help="also write the statistics as JSON")
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    return parser


def main(argv: list[str] | None = None) -> int:
    """The script entry; an InputError becomes one line on stderr and exit status 2."""
    args = build_parser().parse_args(argv)
    try:
        out = Path(args.out) if args.out else None
        if out is not None and out.exists() and not args.force:
            raise InputError(f"{out} exists; pass --force to overwrite it or choose another --out")
        overrides = dict(_parse_override(t) for t in args.set)
        cfg = ToyConfig.preset(args.variant, **overrides)
        encoder = None
        if args.checkpoint and not args.embedding:
            raise InputError("--checkpoint only selects the encoder of --embedding; add --embedding")
        if args.embedding:
            from transformers.utils import logging as hf_logging

            from .demo import load_toy  # the model stack, only when asked for

            hf_logging.set_verbosity_error()
            hf_logging.disable_progress_bar()
            model, _ = load_toy(args.checkpoint)
            encoder = model.vision
        stats = benchmark_stats(cfg, args.split, args.size, args.keep, encoder=encoder)
    except HybridReduceError as exc:
        print(f"hybridreduce.toy.stats: error: {exc}", file=sys.stderr)
        return 2
    print(format_stats(stats))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(stats, indent=1) + "\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
