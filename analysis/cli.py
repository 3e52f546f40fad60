"""The ``analyze`` and ``plot`` subcommands of ``hybridreduce``, and ``merge`` of analysis shards.

``hybridreduce analyze --config FILE --out DIR [--shard i/N]`` scores a model over a dataset and writes
the run directory (:func:`analysis.run.collect`). Shards are combined by ``hybridreduce merge DIR``;
under ``torchrun`` each rank takes its shard from ``RANK``/``WORLD_SIZE`` and rank 0 merges.
``hybridreduce plot DIR`` draws a run's figures (:func:`analysis.plots.plot_run`).

``analyze`` refuses a ``--out`` that already holds files unless ``--overwrite`` is given (and never replaces a
folder that is not an analysis run). The run is written into a hidden folder beside ``--out`` and moved into place
when complete. Ctrl-C saves the batches already scored as a partial run (``"partial": true`` in metrics.json;
``plot`` says so in a warning and above every figure's title) into ``--out``, or beside it as ``<out>.partial``
when ``--out`` held a run, which is left as it was; one line says which, and the exit status is 130.

:func:`register` adds them to the ``hybridreduce`` command through its documented extension hook
(the ``hybridreduce.subcommands`` entry-point group, :data:`hybridreduce.cli.SUBCOMMANDS_GROUP`), so that
the console script and ``python -m hybridreduce`` are one program and hybridreduce never imports analysis.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from hybridreduce.vlm import quiet_transformers


def cmd_analyze(args: argparse.Namespace) -> int:
    """Collect scores and metrics; 0 when everything ran, 1 when some part failed (see metrics.json), 2 on a bad
    argument, 130 on Ctrl-C (one line says what was saved: the batches already scored, as a partial run)."""
    from dataclasses import replace

    from hybridreduce import validate
    from hybridreduce.rundir import on_rank_zero_after_all, parse_shard

    from .config import AnalysisConfig
    from .run import Interrupted, collect
    from .rundir import check_out_dir, merge_shards

    # Every argument and the output directory before the model loads.
    config = AnalysisConfig.from_yaml(args.config)
    if args.samples is not None:
        validate.integer(args.samples, "samples (--samples)", 1, fix="the number of samples to score, e.g. 64")
        config = replace(config, samples=args.samples)
    shard = parse_shard(args.shard)
    check_out_dir(args.out, shard, overwrite=args.overwrite)
    quiet_transformers()
    try:
        if shard[1] > 1:
            collect(config, args.out, progress=not args.no_progress, shard=shard, overwrite=args.overwrite)
            print(f"wrote {args.out}/shard-{shard[0]}-of-{shard[1]}")
            if args.shard is not None:
                print(f"when every shard is done, run: hybridreduce merge {args.out}")
                return 0
            code = on_rank_zero_after_all(shard[0], lambda: _report(merge_shards(args.out), args.out))  # torchrun
            return code or 0
        metrics = collect(config, args.out, progress=not args.no_progress, overwrite=args.overwrite)
    except Interrupted as stop:
        print(f"hybridreduce analyze: {stop}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # while the run was being measured or written: the staging folder is removed
        print(f"hybridreduce analyze: interrupted; nothing written ({args.out} is as it was)", file=sys.stderr)
        return 130
    return _report(metrics, args.out)


def _report(metrics: dict, out: str) -> int:
    """Print what a run wrote and its failures; 1 when some part failed, else 0."""
    ok = [name for name, s in metrics["scorers"].items() if s["status"] == "ok"]
    print(f"scored {metrics['model']['samples']} samples with scorers {', '.join(ok)}; wrote {out}/metrics.json")
    for err in metrics["errors"]:
        where = f"{err['stage']}" + (f" ({err['scorer']})" if err["scorer"] else "")
        print(f"hybridreduce analyze: warning: {where} failed: {err['type']}: {err['message']}", file=sys.stderr)
    print(f"draw the figures with: hybridreduce plot {out}")
    return 1 if metrics["errors"] else 0


def merge_analysis(args: argparse.Namespace) -> int | None:
    """``hybridreduce merge DIR`` for an analysis run directory; None for any other directory."""
    from .rundir import is_sharded_run, merge_shards

    if is_sharded_run(args.out):
        return _report(merge_shards(args.out), args.out)
    return None


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


def register(sub, mergers: list) -> None:
    """Add ``analyze`` and ``plot`` to ``hybridreduce``'s subcommands, and the analysis-shard merger."""
    a = sub.add_parser("analyze", help="score a model over a dataset: sparsity, stability, relevance, score files")
    a.add_argument("--config", required=True, metavar="FILE", help="analysis config (configs/analysis/*.yaml)")
    a.add_argument("--out", required=True, metavar="DIR", help="run directory to write")
    a.add_argument("--samples", type=int, help="override the config's number of samples")
    a.add_argument("--shard", metavar="I/N", help="score the i-th of N slices of the samples (then: merge DIR)")
    a.add_argument("--no-progress", action="store_true", help="no progress bar")
    a.add_argument(
        "--overwrite", action="store_true", help="replace the run already in --out once the new one is complete"
    )
    a.set_defaults(func=cmd_analyze)
    mergers.append(merge_analysis)

    p = sub.add_parser("plot", help="draw the figures of an analysis run directory (PNG and PDF)")
    p.add_argument("run_dir", metavar="DIR", help="a directory written by `hybridreduce analyze`")
    p.add_argument("--out", metavar="DIR", help="where the figures go (default DIR/plots)")
    p.set_defaults(func=cmd_plot)
