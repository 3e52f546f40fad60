"""The ``finetune`` subcommand: :func:`register` adds it to ``hybridreduce``'s parser (``cli.build_parser``)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from ..errors import InputError
from .train import FinetuneConfig, finetune

#: FinetuneConfig fields a ``--config`` YAML may set (the command line's flags override them).
CONFIG_FIELDS = tuple(f.name for f in fields(FinetuneConfig))


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``finetune`` to an ``argparse`` subparsers action."""
    f = subparsers.add_parser(
        "finetune", help="LoRA-finetune a video VLM on a manifest under the schedule it is evaluated with"
    )
    f.add_argument("--model", required=True, metavar="DIR|toy", help="a video VLM checkpoint, a train-toy run, or toy")
    f.add_argument("--data", required=True, metavar="FILE|toy", help="JSONL manifest with answers (as run), or toy")
    f.add_argument("--eval-data", metavar="FILE", help="JSONL manifest whose loss is logged every --eval-steps")
    f.add_argument("--out", required=True, metavar="DIR", help="output directory (adapter, record, logs, plot)")
    f.add_argument("--config", metavar="FILE", help="YAML of settings (the flags below override it)")
    f.add_argument("--schedule", help="preset name, YAML file, or none for full tokens (default progressive)")
    f.add_argument("--keep", type=float, help="override the schedule's keep budget")
    f.add_argument("--evs", type=float, help="EVS pruning rate before the language model (default 0: off)")
    f.add_argument("--lora-r", type=int, help="LoRA rank, >= 1 (default 16)")
    f.add_argument("--lora-alpha", type=float, help="LoRA alpha (default 32)")
    f.add_argument("--lora-dropout", type=float, help="LoRA dropout (default 0)")
    f.add_argument(
        "--target-modules", metavar="M1,M2",
        help="comma-separated layer names in the language model (default: its attention and Mamba projections)",
    )  # fmt: skip
    f.add_argument("--full", action="store_true", default=None, help="train every weight of the language model")
    f.add_argument("--steps", type=int, help="optimiser steps (default: --epochs over the data)")
    f.add_argument("--epochs", type=float, help="passes over the data when --steps is not given (default 1)")
    f.add_argument("--batch-size", type=int, help="examples per device and step (default 1)")
    f.add_argument("--grad-accum", type=int, help="gradient accumulation steps (default 1)")
    f.add_argument("--lr", type=float, help="peak learning rate (default 1e-4)")
    f.add_argument("--warmup-steps", type=int, help="linear warm-up steps (default 0)")
    f.add_argument("--seed", type=int, help="seed of the data order and initialisation (default 0)")
    f.add_argument("--frames", type=int, help="frames sampled uniformly per video (default 32, as run)")
    f.add_argument("--fps", type=float, help="sample at this rate instead of --frames")
    f.add_argument("--max-frames", type=int, help="cap on the frames --fps samples")
    f.add_argument("--max-answer-tokens", type=int, help="longest answer in tokens, end token included (default 32)")
    f.add_argument("--bf16", action="store_true", default=None, help="bfloat16 autocast")
    f.add_argument(
        "--gradient-checkpointing", action="store_true", default=None, help="recompute the blocks in the backward"
    )
    f.add_argument("--save-steps", type=int, help="save a checkpoint every N steps (default 50)")
    f.add_argument("--eval-steps", type=int, help="evaluate every N steps (default 50)")
    f.add_argument("--logging-steps", type=int, help="log every N steps (default 1)")
    f.add_argument("--variant", help="--model toy: the benchmark variant to train on (default: all, mixed)")
    f.add_argument("--toy-items", type=int, help="--model toy: training items (default: steps × batch × accum)")
    f.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    f.add_argument(
        "--max-minutes", type=float, help="stop (a checkpoint saved) after this many minutes; continue with --resume"
    )
    f.add_argument("--device", default=None, help="cpu or cuda (default: what the Trainer picks)")
    f.add_argument("--dtype", default="auto", help="auto (the checkpoint's), float32, bfloat16 or float16")
    f.add_argument("--no-progress", action="store_true", help="no progress bar (train_log.jsonl is still written)")
    f.set_defaults(func=cmd_finetune)
    return f


def config_from_args(args: argparse.Namespace) -> FinetuneConfig:
    """``--config`` (if given) with every flag that was given on top."""
    from ..yamlio import read_yaml

    values: dict = {}
    if args.config is not None:
        raw = dict(read_yaml(args.config, "finetune config (--config)"))
        unknown = sorted(set(raw) - set(CONFIG_FIELDS))
        if unknown:
            raise InputError(f"--config {args.config}: unknown settings {unknown}; known: {', '.join(CONFIG_FIELDS)}")
        values.update(raw)
    for name in CONFIG_FIELDS:
        given = getattr(args, name, None)
        if given is not None:
            values[name] = given
    if isinstance(values.get("target_modules"), str):
        values["target_modules"] = [t for t in values["target_modules"].split(",") if t.strip()]
    if "frames" not in values and values.get("fps") is not None:
        values["frames"] = None
    return FinetuneConfig(**values)


def cmd_finetune(args: argparse.Namespace) -> int:
    from .. import validate
    from ..vlm import DTYPES, quiet_transformers

    if args.max_minutes is not None:
        validate.number(args.max_minutes, "max_minutes (--max-minutes)", 0, fix="leave it out to train to the end")
    validate.choice(args.dtype, "dtype (--dtype)", DTYPES)
    validate.device(args.device)
    cfg = config_from_args(args)
    quiet_transformers()
    result = finetune(
        args.model, args.data, args.out, cfg, eval_data=args.eval_data, resume=args.resume,
        max_minutes=args.max_minutes, progress=not args.no_progress, device=args.device, dtype=args.dtype,
    )  # fmt: skip
    if result["stopped_early"]:
        print(f"stopped after --max-minutes {args.max_minutes:g} at step {result['steps']}; continue with the same "
              "command plus --resume")  # fmt: skip
    evals = "" if result["eval_loss"] is None else f", eval loss {result['eval_loss']:.4f}"
    print(f"trained {result['steps']} steps, train loss {result['train_loss']:.4f}{evals}; wrote {result['out']}",
          file=sys.stdout)  # fmt: skip
    if args.model == "toy" or args.data == "toy":
        print(f"evaluate it: hybridreduce demo --checkpoint {result['out']}/merged --split val ...")
    else:
        print(f"answer with it: hybridreduce run --model {args.model} --adapter {result['out']} ...")
    return 0
