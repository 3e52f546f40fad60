"""Command line: every ``hybridreduce`` subcommand plus ``analyze`` and ``plot``.

``hybridreduce analyze --config FILE --out DIR`` scores a model over a dataset and writes the run
directory (:func:`analysis.collect.collect`); ``hybridreduce plot DIR`` draws its figures
(:func:`analysis.plots.plot_run`). The other subcommands come unchanged from
:func:`hybridreduce.cli.build_parser`, so this ``main`` can serve as the console script.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from hybridreduce.cli import _quiet_transformers, build_parser
from hybridreduce.cli import main as hybridreduce_main


def cmd_analyze(args: argparse.Namespace) -> int:
    """Collect scores and metrics; 0 when everything ran, 1 when some part failed (see metrics.json)."""
    from dataclasses import replace

    from .collect import AnalysisConfig, collect

    _quiet_transformers()
    config = AnalysisConfig.from_yaml(args.config)
    if args.samples is not None:
        config = replace(config, samples=args.samples)
    metrics = collect(config, args.out, progress=not args.no_progress)
    ok = [name for name, s in metrics["scorers"].items() if s["status"] == "ok"]
    print(f"scored {metrics['model']['samples']} samples with scorers {', '.join(ok)}; wrote {args.out}/metrics.json")
    for err in metrics["errors"]:
        where = f"{err['stage']}" + (f" ({err['scorer']})" if err["scorer"] else "")
        print(f"hybridreduce analyze: warning: {where} failed: {err['type']}: {err['message']}", file=sys.stderr)
    print(f"draw the figures with: hybridreduce plot {args.out}")
    return 1 if metrics["errors"] else 0


def cmd_plot(args: argparse.Namespace) -> int:
    """Draw the figures of a run directory; skipped figures are one warning line each."""
    from .plots import plot_run

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        paths = plot_run(args.run_dir, args.out)
    for w in caught:
        print(f"hybridreduce plot: warning: {w.message}", file=sys.stderr)
    folder = paths[0].parent if paths else args.run_dir
    print(f"wrote {len(paths)} files to {folder}: {', '.join(sorted({p.stem for p in paths}))}")
    return 0


def add_subcommands(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``analyze`` and ``plot`` to the subcommands of ``hybridreduce.cli.build_parser()``."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    a = sub.add_parser("analyze", help="score a model over a dataset: sparsity, stability, relevance, score files")
    a.add_argument("--config", required=True, metavar="FILE", help="analysis config (configs/analysis/*.yaml)")
    a.add_argument("--out", required=True, metavar="DIR", help="run directory to write")
    a.add_argument("--samples", type=int, help="override the config's number of samples")
    a.add_argument("--no-progress", action="store_true", help="no progress bar")
    a.set_defaults(func=cmd_analyze)

    p = sub.add_parser("plot", help="draw the figures of an analysis run directory (PNG and PDF)")
    p.add_argument("run_dir", metavar="DIR", help="a directory written by `hybridreduce analyze`")
    p.add_argument("--out", metavar="DIR", help="where the figures go (default DIR/plots)")
    p.set_defaults(func=cmd_plot)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = add_subcommands(build_parser())
    parser.description = __doc__
    return hybridreduce_main(argv, parser)


if __name__ == "__main__":
    sys.exit(main())
