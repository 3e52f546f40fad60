"""Command line: ``hybridreduce verify`` and ``hybridreduce demo``."""

from __future__ import annotations

import argparse
import json
import sys

from .errors import HybridReduceError


def _quiet_transformers() -> None:
    """Silence transformers' load progress bars and kernel fall-back notices on the console."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _format_table(rows: list[dict]) -> str:
    header = f"{'arch':<18} {'check':<22} {'result':<8} {'max_err':>10}  detail"
    lines = [header, "-" * len(header)]
    for r in rows:
        err = "-" if r["max_err"] is None else f"{r['max_err']:.2e}"
        result = "PASS" if r["passed"] else "FAIL"
        lines.append(f"{r['arch']:<18} {r['check']:<22} {result:<8} {err:>10}  {r['detail']}")
    return "\n".join(lines)


def cmd_verify(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .verify import available_archs, verify_arch, verify_model

    _quiet_transformers()
    if args.model:
        results = verify_model(args.model)
    else:
        archs = available_archs() if args.all else [args.arch]
        unknown = [a for a in archs if a not in available_archs()]
        if unknown:
            raise HybridReduceError(f"no tiny model for {unknown}; choose from {', '.join(available_archs())}")
        results = []
        for arch in tqdm(archs, desc="verify", unit="arch", disable=len(archs) == 1, file=sys.stderr):
            results.extend(verify_arch(arch))
    rows = [r.to_dict() for r in results]
    if args.json:
        print(json.dumps([{k: r[k] for k in ("arch", "check", "passed", "max_err")} for r in rows], indent=1))
    else:
        print(_format_table(rows))
        failed = sum(not r["passed"] for r in rows)
        print(f"\n{len(rows) - failed} passed, {failed} failed")
    return 0 if all(r["passed"] for r in rows) else 1


def cmd_demo(args: argparse.Namespace) -> int:
    """Until the embedded trained model lands, the demo scores a tiny random Nemotron-H and verifies it."""
    import torch

    from . import capture, get_adapter
    from .tiny import build_tiny_model
    from .verify import make_prompt, verify_arch

    _quiet_transformers()
    model = build_tiny_model("nemotron_h")
    adapted = get_adapter(model)
    print(adapted.describe())
    prompt = make_prompt(model.config.vocab_size, 4, 24, 8, seed=0)
    for mode in ("decay_free", "exact"):
        with capture(model, prompt.visual_mask, scorer=mode) as scores, torch.no_grad():
            model(prompt.input_ids)
        print(f"\nimportance ({mode} Mamba scorer), top 5 visual tokens per scoring block:")
        for layer, kind in zip(scores.layers, scores.kinds, strict=True):
            top = scores[layer][0].topk(5)
            tokens = ", ".join(f"{int(i)}:{float(v):.3f}" for v, i in zip(top.values, top.indices, strict=True))
            print(f"  block {layer:2d} {kind:<8} {tokens}")
    rows = [r.to_dict() for r in verify_arch("nemotron_h")]
    print("\n" + _format_table(rows))
    return 0 if all(r["passed"] for r in rows) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hybridreduce", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    v = sub.add_parser("verify", help="run the scoring invariants on tiny models or a checkpoint")
    target = v.add_mutually_exclusive_group()
    target.add_argument("--arch", default="nemotron_h", help="tiny architecture to check (default: nemotron_h)")
    target.add_argument("--all", action="store_true", help="check every supported architecture")
    target.add_argument("--model", metavar="PATH", help="a checkpoint directory to check instead of a tiny model")
    v.add_argument("--json", action="store_true", help="print a JSON list of {arch, check, passed, max_err}")
    v.set_defaults(func=cmd_verify)

    d = sub.add_parser("demo", help="score a tiny Nemotron-H and verify it (the main job)")
    d.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except HybridReduceError as exc:
        print(f"hybridreduce {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
