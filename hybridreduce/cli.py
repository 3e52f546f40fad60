"""Command line: ``verify``, ``bench``, ``train-toy``, ``demo``, and ``run`` / ``generate`` / ``merge`` on real VLMs.

Exit status: 0 done; 1 ``run`` answered nothing (every line an error), ``verify`` found a failing check;
2 a bad argument or input, refused with one line that names it, the allowed range and the fix; 130 Ctrl-C, at any
point, with one line (``calibrate``, ``analyze``: it says what was saved). Every subcommand checks its arguments,
and the folders it will write, before a model loads or a file is written; every command that writes holds its
output folder's lock and writes each file atomically (:mod:`hybridreduce.rundir`).
"""

from __future__ import annotations

import argparse
import json
import sys

from .errors import HybridReduceError, InputError, Interrupted
from .vlm import DEFAULT_FRAMES, LoadOptions, quiet_transformers


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

    from . import validate
    from .verify import DTYPES, available_archs, verify_arch, verify_model

    device = validate.device(args.device)
    dtype = validate.choice(args.dtype, "dtype (--dtype)", tuple(DTYPES))
    if args.model and (device is not None or dtype != "float32"):
        raise InputError("--device and --dtype apply to the tiny models (--arch, --all); --model runs on cpu, float32")
    quiet_transformers()
    if args.model:
        results = verify_model(args.model)
    else:
        archs = available_archs() if args.all else [args.arch]
        unknown = [a for a in archs if a not in available_archs()]
        if unknown:
            raise InputError(f"no tiny model for {unknown}; choose from {', '.join(available_archs())}")
        results = []
        for arch in tqdm(archs, desc="verify", unit="arch", disable=len(archs) == 1, file=sys.stderr):
            results.extend(verify_arch(arch, device, dtype))
    rows = [r.to_dict() for r in results]
    if args.json:
        print(json.dumps([{k: r[k] for k in ("arch", "check", "passed", "max_err")} for r in rows], indent=1))
    else:
        print(_format_table(rows))
        failed = sum(not r["passed"] for r in rows)
        print(f"\n{len(rows) - failed} passed, {failed} failed")
    return 0 if all(r["passed"] for r in rows) else 1


def cmd_demo(args: argparse.Namespace) -> int:
    """The embedded toy VLM under every reduction method: a table, summary.json, results.csv and plots."""
    from . import validate
    from .rundir import RunFolder, refuse_to_replace
    from .toy.demo import (
        DEFAULT_METHODS,
        DEMO_METHODS,
        KEEPS,
        OUTPUT_FILES,
        expected_seconds,
        format_table,
        run_demo,
        write_outputs,
    )

    # Every argument, the checkpoint and --out before the first question is answered: the table takes minutes,
    # and a folder that cannot be written must not be found only after it.
    if args.quick and args.full:
        raise InputError("--quick and --full contradict each other; pick one")
    if args.size is not None:
        validate.integer(args.size, "size (--size)", 1, fix="held-out questions per variant, e.g. 192 (the default)")
    if args.checkpoint is not None:
        validate.checkpoint_dir(args.checkpoint, "checkpoint (--checkpoint)")
    keeps = (0.25,) if args.quick else KEEPS
    if args.keeps is not None:
        keeps = tuple(_parse_keeps(args.keeps, "--keeps"))
        if any(k >= 1 for k in keeps):
            raise InputError(f"--keeps: full tokens is every table's first row; give fractions below 1, got {keeps}")
    methods = tuple(DEMO_METHODS) if args.full else DEFAULT_METHODS
    if args.methods is not None:
        methods = tuple(_parse_list(args.methods, "--methods", f"demo methods from {', '.join(DEMO_METHODS)}"))
        unknown = [m for m in methods if m not in DEMO_METHODS]
        if unknown:
            raise InputError(f"--methods: unknown {unknown}; choose from {', '.join(DEMO_METHODS)}")
    validate.writable_dir(args.out, "out (--out)")
    refuse_to_replace(args.out, OUTPUT_FILES, args.overwrite)
    quiet_transformers()
    size = args.size if args.size is not None else (96 if args.quick else 1024 if args.full else 192)
    with RunFolder(args.out) as folder:  # held from here: a second demo into --out is refused at once
        seconds = expected_seconds(args.checkpoint, size, keeps, methods)
        print(f"demo: expect about {_duration(seconds)} on an idle 2-core CPU (longer under load)", file=sys.stderr)
        summary = run_demo(
            args.checkpoint, size=size, keeps=keeps, methods=methods, progress=not args.no_progress, split=args.split
        )
        print(format_table(summary))
        paths = folder.stage(lambda staging: write_outputs(summary, staging))
    print(
        "\nfull-token accuracy "
        + ", ".join(f"{v} {100 * i['full_accuracy']:.1f}%" for v, i in summary["variants"].items())
        + f" on {size} {args.split} questions per variant; "
        f"wrote {', '.join(p.name for p in paths)} to {args.out}"
    )
    return 0


def _duration(seconds: float) -> str:
    """``"40 s"``, ``"7 min"``, ``"1.5 h"``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def _parse_list(text: str, flag: str, what: str) -> list[str]:
    """The comma-separated entries of ``flag``: at least one, none repeated (a repeat would be a second row of
    the same thing)."""
    entries = [x.strip() for x in text.split(",") if x.strip()]
    if not entries:
        raise InputError(f"{flag} needs at least one entry: {what}")
    repeated = sorted({x for x in entries if entries.count(x) > 1})
    if repeated:
        raise InputError(f"{flag} lists {', '.join(repeated)} more than once; give each once")
    return entries


def _parse_keeps(text: str, flag: str = "--sweep") -> list[float]:
    from .runner import check_keep

    try:
        keeps = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"{flag} takes comma-separated keep fractions, e.g. 0.125,0.25,0.5; got {text!r}") from None
    if not keeps:
        raise InputError(f"{flag} needs at least one keep fraction")
    keeps = [check_keep(k, name=f"keep {k:g} of {flag}") for k in keeps]
    repeated = sorted({k for k in keeps if keeps.count(k) > 1})
    if repeated:
        raise InputError(f"{flag} lists {', '.join(f'{k:g}' for k in repeated)} more than once; give each keep once")
    return keeps


def _parse_scale(text: str) -> list[int]:
    """``--scale``: comma-separated visual-token counts, each at least 16, no repeats; returned in increasing order."""
    from . import validate

    points = []
    for item in (x.strip() for x in text.split(",")):
        if not item:
            continue
        try:
            value = int(item)
        except ValueError:
            raise InputError(
                f"--scale takes comma-separated visual-token counts, e.g. 2048,4096,8192; got {item!r} in {text!r}"
            ) from None
        points.append(
            validate.integer(value, f"visual tokens {value} of --scale", 16, fix="e.g. --scale 2048,4096,8192")
        )
    if not points:
        raise InputError("--scale needs at least one visual-token count, e.g. --scale 2048,4096,8192")
    repeated = sorted({v for v in points if points.count(v) > 1})
    if repeated:
        raise InputError(f"--scale lists {', '.join(map(str, repeated))} more than once; give each count once")
    return sorted(points)


def cmd_bench(args: argparse.Namespace) -> int:
    from dataclasses import replace

    import torch

    from . import validate
    from .bench import (
        BENCH_DTYPES,
        BenchConfig,
        build_bench_model,
        check_memory,
        format_result,
        format_scale,
        format_sweep,
        run_bench,
        run_scale,
        write_scale,
        write_sweep,
    )
    from .rundir import RunFolder
    from .runner import check_keep
    from .schedule import Schedule

    # Every argument is checked before the model is built.
    if args.arch != "nemotron_h":
        raise InputError(f"the benchmark model is Nemotron-H-shaped; --arch {args.arch!r} is not available")
    if args.visual_tokens is not None:
        validate.integer(args.visual_tokens, "visual_tokens (--visual-tokens)", 16, fix="the default is 8192")
    validate.integer(args.repeats, "repeats (--repeats)", 1, fix="the median of the timed rounds is reported")
    validate.integer(
        args.decode_steps, "decode_steps (--decode-steps)", 1,
        fix="decode cannot be skipped (it is short next to the prefill); --decode-steps 1 times the least",
    )  # fmt: skip
    device = validate.device(args.device) or "cpu"
    dtype = getattr(torch, validate.choice(args.dtype, "dtype (--dtype)", BENCH_DTYPES))
    schedule = Schedule.load(args.schedule)
    if args.sweep and args.scale:
        raise InputError("--sweep varies the keep, --scale the prompt length: give one of them")
    if args.scale:
        points = _parse_scale(args.scale)
        if args.visual_tokens is not None:
            raise InputError(f"--visual-tokens {args.visual_tokens} with --scale: the scale's counts replace it")
        if not args.out:
            raise InputError("--scale writes a CSV, a JSON and a plot: give --out DIR")
        validate.writable_dir(args.out, "out (--out)")
    if args.sweep:
        keeps = _parse_keeps(args.sweep)
        if not args.out:
            raise InputError("--sweep writes a CSV and a plot: give --out DIR")
        if args.keep is not None:
            raise InputError(f"--keep {args.keep:g} with --sweep: the sweep's keeps replace it; drop --keep")
        validate.writable_dir(args.out, "out (--out)")
    else:
        keep = check_keep(0.25 if args.keep is None else args.keep)
        if args.out and not args.scale:
            raise InputError(
                f"--out {args.out!r} is written only by --sweep or --scale; drop --out, or add --sweep KEEPS or "
                "--scale COUNTS"
            )
    if (args.keep is not None or args.sweep) and (schedule.method == "none" or schedule.shape == "explicit"):
        raise InputError(
            f"schedule {args.schedule!r} fixes its own budget (method none, or explicit ratios), so --keep and --sweep "
            "would be ignored; drop them, or give a schedule with a keep target such as progressive"
        )
    cfg = BenchConfig(visual_tokens=8192 if args.visual_tokens is None else args.visual_tokens)
    if schedule.method != "none" and schedule.shape != "explicit":  # a keep its depth cannot meet: before building
        for k in keeps if args.sweep else [keep]:
            replace(schedule, keep=k).resolve(len(cfg.pattern))
    if torch.device(device).type == "cpu":
        check_memory(replace(cfg, visual_tokens=max(points)) if args.scale else cfg)
    quiet_transformers()

    def progress(msg: str) -> None:
        if not args.json:
            print(f"[bench] {msg}", file=sys.stderr, flush=True)

    if args.scale:
        with RunFolder(args.out) as folder:  # held while timing: a second bench into --out is refused at once
            results = run_scale(
                cfg, points, args.schedule, keep, args.repeats, args.decode_steps, progress, device=device, dtype=dtype
            )
            paths = folder.stage(lambda staging: write_scale(results, staging))
        if args.json:
            print(json.dumps([r.to_dict() for r in results]))
        else:
            print(format_scale(results))
            print("wrote " + ", ".join(str(p) for p in paths))
        return 0
    if args.sweep:
        with RunFolder(args.out) as folder:
            model = build_bench_model(cfg, device=device, dtype=dtype)
            results = []
            for keep in keeps:
                progress(f"keep {keep}")
                results.append(run_bench(cfg, args.schedule, keep, args.repeats, args.decode_steps, model, progress))
            paths = folder.stage(lambda staging: write_sweep(results, staging))
        if args.json:
            print(json.dumps([r.to_dict() for r in results]))
        else:
            print(format_sweep(results))
            print("wrote " + ", ".join(str(p) for p in paths))
        return 0
    result = run_bench(
        cfg, args.schedule, keep, args.repeats, args.decode_steps, progress=progress, device=device, dtype=dtype
    )
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        print(format_result(result))
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Choose a schedule's layout from unlabeled prompts (hybridreduce.calibrate): schedule YAML, JSON and a plot."""
    import shlex
    from pathlib import Path

    from . import validate
    from .adapters import get_adapter
    from .calibrate import (
        CALIBRATION_PLACEMENTS,
        OBJECTIVES,
        CalibrationScores,
        calibration_files,
        check_budget,
        score_prompts,
        search,
        write_calibration,
    )
    from .rundir import RunFolder, refuse_to_replace
    from .runner import check_keep, check_sampling
    from .schedule import BUDGETS

    # -- every argument first ------------------------------------------------------------------------------
    keep = check_keep(args.keep)
    validate.choice(args.budget, "budget (--budget)", BUDGETS)
    validate.choice(args.objective, "objective (--objective)", OBJECTIVES)
    validate.choice(args.placement, "placement (--placement)", CALIBRATION_PLACEMENTS)
    validate.integer(args.size, "size (--size)", 4, fix="the number of calibration prompts, e.g. 64")
    validate.integer(args.max_stages, "max_stages (--max-stages)", 1, 8)
    check_sampling(args.frames, None, None)
    out = Path(args.out)
    if out.suffix not in (".yaml", ".yml"):
        raise InputError(f"--out {out} must be the schedule file to write, ending in .yaml (e.g. schedule.yaml)")
    validate.writable_dir(out.parent, "the folder of --out")
    if out.exists() and not args.overwrite:
        raise InputError(f"{out} exists; pass --overwrite to replace it (and its calibration.json and plots)")
    toy = args.model == "toy" or (Path(args.model) / "train_config.yaml").is_file()
    if toy != (args.data == "toy"):
        raise InputError(
            "--model toy (or a train-toy directory) takes --data toy, and a video VLM checkpoint takes a JSONL "
            f"manifest: got --model {args.model} --data {args.data}"
        )
    quiet_transformers()
    if toy:
        from .toy import ToyDataset
        from .toy.demo import calibration_batches, load_toy_spec

        model, spec = load_toy_spec(None if args.model == "toy" else args.model)
        check_budget(get_adapter(model), keep, args.budget, args.max_stages, args.placement)  # before any scoring
        configs = {c.variant: c for c in spec.configs}
        variant = args.variant or next(iter(configs))
        if variant not in configs:
            raise InputError(f"--variant {variant}: the checkpoint knows {sorted(configs)}")
        dataset = ToyDataset(configs[variant], args.split, args.size, vocab=spec.vocab)
        batches = calibration_batches(dataset)
    else:
        from .calibrate import manifest_batches
        from .manifest import read_manifest

        validate.checkpoint_dir(args.model)
        items = read_manifest(args.data)
        if len(items) < args.size:
            raise InputError(
                f"size (--size) {args.size}: the manifest {args.data} has only {len(items)} items; pass --size "
                f"{len(items)} (at least 4) or give a longer manifest"
            )
        items = items[: args.size]
        check_budget(_model_layout(args), keep, args.budget, args.max_stages, args.placement)  # before the weights
        vlm = _load_vlm(args, validate.device(args.device))
        model = vlm.model
        batches = manifest_batches(vlm, items, args.frames)
    # -- one scoring forward per prompt, then the search ----------------------------------------------------
    from tqdm.auto import tqdm

    scores = CalibrationScores.empty(model)
    # calibration.json and the plots are named for the folder, not the schedule: a second schedule there would
    # replace the first's, whose provenance points at them.
    refuse_to_replace(out.parent, calibration_files(out), args.overwrite, "folder (of --out)")
    with RunFolder(out.parent) as folder:  # a second writer into this folder is refused from here
        bar = tqdm(total=args.size, desc="calibrate", unit="prompt", disable=args.no_progress, dynamic_ncols=True)
        try:
            score_prompts(model, batches, progress=bar.update, keep=scores)
        except (HybridReduceError, KeyboardInterrupt) as exc:
            bar.close()
            saved = ""
            if scores.n_prompts:
                partial = out.with_name(out.stem + ".scores.partial.pt")
                with folder.file(partial.name) as tmp:
                    scores.save(tmp)
                saved = f"the scores of {scores.n_prompts} prompts are saved in {partial}"
            if isinstance(exc, KeyboardInterrupt):  # one line (main prints it): what was kept
                raise Interrupted(f"interrupted; no schedule written{'; ' + saved if saved else ''}") from None
            if saved:
                print(f"hybridreduce calibrate: {saved}", file=sys.stderr)
            raise
        bar.close()
        cal = search(scores, keep, args.budget, args.max_stages, target=args.objective, placement=args.placement)
        command = "hybridreduce " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else ""
        paths = write_calibration(cal, out, command)
        folder.written += [p.name for p in paths]
    best = cal.candidates[0]
    presets = ", ".join(f"{k} {v:.4f}" for k, v in cal.presets.items() if v is not None)
    print(
        f"chosen: first cut before block {best['first_prune']}, {best['stages']} cut(s) at {best['prune_points']}, "
        f"{best['shape']}; {'J_ref' if cal.target == 'reference' else 'retained importance mass J'} = "
        f"{cal.objective:.4f} ± {cal.objective_se:.4f} over "
        f"{cal.n_prompts} prompts ({len(cal.candidates)} layouts; presets: {presets or 'none feasible'})"
    )
    print(f"wrote {', '.join(str(p) for p in paths)}; use it with --schedule {out}")
    return 0


#: The training config ``train-toy`` reads when ``--config`` is not given (relative to the working directory).
DEFAULT_TOY_CONFIG = "configs/toy.yaml"


def _training_config(given: str | None):
    """The path of ``--config`` (default :data:`DEFAULT_TOY_CONFIG`), or an error that says where it looked."""
    from pathlib import Path

    path = Path(DEFAULT_TOY_CONFIG if given is None else given)
    if path.is_file():
        return path
    shipped = Path(__file__).resolve().parents[1] / DEFAULT_TOY_CONFIG  # present in a source checkout
    example = f" (the repository's is {shipped})" if shipped.is_file() else ""
    looked = f"looked for {path.absolute()}, which does not exist"
    if given is None:
        raise InputError(
            f"config (--config) not given, and the default {DEFAULT_TOY_CONFIG} is read from the working directory: "
            f"{looked}; run from the repository root, or pass --config PATH{example}"
        )
    raise InputError(f"config (--config) {given!r}: {looked}; pass --config PATH of a training config{example}")


def cmd_train_toy(args: argparse.Namespace) -> int:
    from . import validate
    from .rundir import RunFolder
    from .toy.evaluate import accuracy_line
    from .toy.train import train
    from .toy.train_config import load_spec

    # Every argument before the config is read or a file is written (train() creates --out).
    config = _training_config(args.config)
    out = validate.writable_dir(args.out)
    if args.steps is not None:
        validate.integer(args.steps, "steps (--steps)", 1, fix="the number of optimiser steps, e.g. 20 for a smoke run")
    if args.max_minutes is not None:
        validate.number(
            args.max_minutes, "max_minutes (--max-minutes)", 0,
            fix="0 stops at the first evaluation; leave it out to train to the end",
        )  # fmt: skip
    if args.branch_from is not None:
        if args.resume:
            raise InputError("--branch-from starts a new run from another run's saved state; drop --resume")
        validate.checkpoint_dir(args.branch_from, "branch_from (--branch-from)")
    previous = [n for n in ("train_config.yaml", "model.safetensors", "trainer_state.pt") if (out / n).exists()]
    if previous and args.branch_from is not None:
        raise InputError(f"{out} holds a train-toy run ({', '.join(previous)}); --branch-from needs a new --out")
    if previous and not (args.resume or args.overwrite):
        raise InputError(
            f"{out} holds a train-toy run ({', '.join(previous)}); continue it with --resume, replace it with "
            "--overwrite, or choose another --out"
        )
    if args.resume and not (out / "trainer_state.pt").is_file():
        what = "does not exist" if not out.exists() else "holds no trainer_state.pt (it is saved at every evaluation)"
        raise InputError(f"--resume: nothing to resume, {out} {what}; start the run without --resume")
    quiet_transformers()
    spec = load_spec(config)
    if args.steps is not None:
        spec.train.steps = args.steps
    if args.init_from is not None:
        spec.train.init_from = args.init_from
    spec.train.__post_init__()
    if spec.train.init_from is not None and not args.resume and args.branch_from is None:
        validate.checkpoint_dir(spec.train.init_from, "init_from (--init-from, or train.init_from in the config)")
    command = "hybridreduce " + " ".join(sys.argv[1:]) if args.command_line is None else args.command_line
    with RunFolder(out, command=command):  # a second train-toy into --out is refused while this one runs
        result = train(
            spec, out, progress=not args.no_progress, command=command, resume=args.resume,
            max_minutes=args.max_minutes, branch_from=args.branch_from,
        )  # fmt: skip
    if result is None:
        print(f"stopped after --max-minutes {args.max_minutes:g}; continue with the same command plus --resume")
        return 0
    print(accuracy_line(f"held-out ({result['split']}, full tokens)", result))
    print(f"wrote {args.out}/model.safetensors, config.json, train_config.yaml, train_log.jsonl, eval.json")
    return 0


def _check_model_args(args: argparse.Namespace, device: str | None) -> None:
    """Every flag of :func:`_model_args` (``device`` as it will be used), before the model loads."""
    from dataclasses import replace

    from .runner import check_evs, check_max_new_tokens, check_sampling

    replace(LoadOptions.from_args(args), device=device).check()  # as given: --device with --device-map is refused
    check_sampling(**_frames_kwargs(args))
    if args.evs is not None:
        check_evs(args.evs)
    check_max_new_tokens(args.max_new_tokens)


def _model_layout(args: argparse.Namespace):
    """``--model``'s blocks from its config.json alone (:func:`hybridreduce.vlm.layout`): for the checks that need
    the model's depth, before :func:`_load_vlm` reads a weight."""
    from .vlm import layout

    quiet_transformers()
    return layout(args.model, args.trust_remote_code)


def _load_vlm(args: argparse.Namespace, device: str | None = None):
    quiet_transformers()
    return LoadOptions.from_args(args, device).load()


def _frames_kwargs(args: argparse.Namespace) -> dict:
    """``frames`` / ``fps`` / ``max_frames`` as given; ``frames`` is 32 when neither it nor ``--fps`` is given."""
    frames = DEFAULT_FRAMES if args.frames is None and args.fps is None else args.frames
    return {"frames": frames, "fps": args.fps, "max_frames": args.max_frames}


def _merged_report(out: str, names: list[str]) -> str | None:
    """Merge the run in ``out``, print its table; the one-line failure when every answer of ``names`` failed."""
    from pathlib import Path

    from .runner import failure_line, format_summary, merge, read_predictions

    print(format_summary(merge(out)))
    return failure_line(read_predictions(Path(out) / "predictions.jsonl"), names)


def cmd_run(args: argparse.Namespace) -> int:
    """Answer a manifest; exit 0, or 1 when every answer failed (one line says why), or 2 on a bad argument."""
    import os

    from .manifest import read_manifest
    from .runner import (
        check_out_dir,
        check_settings,
        failure_line,
        on_rank_zero_after_all,
        parse_shard,
        read_predictions,
        run,
        settings_for,
    )

    shard = parse_shard(args.shard)
    distributed = args.shard is None and shard[1] > 1  # launched by torchrun: ranks meet at the end
    device = args.device
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        device = f"cuda:{os.environ['LOCAL_RANK']}"
    # Every argument before the model loads; whether its depth can carry the schedule, from its config.json.
    _check_model_args(args, device)
    items = read_manifest(args.data)
    planned = settings_for(args.schedule, evs=args.evs or 0.0, full=not args.no_full, keep=args.keep)
    check_out_dir(args.out, shard)
    check_settings(planned, _model_layout(args).num_blocks)
    vlm = _load_vlm(args, device)
    settings = settings_for(args.schedule, evs=vlm.evs_rate(args.evs), full=not args.no_full, keep=args.keep)
    path = run(
        vlm, items, args.out, settings, max_new_tokens=args.max_new_tokens, shard=shard,
        progress=not args.no_progress, retry_errors=not args.no_retry_errors, **_frames_kwargs(args),
    )  # fmt: skip
    print(f"wrote {path}")
    names = [s.name for s in settings]
    if distributed:
        failure = on_rank_zero_after_all(shard[0], lambda: _merged_report(args.out, names))
    elif shard[1] == 1:
        failure = _merged_report(args.out, names)
    else:
        print(f"shard {shard[0]}/{shard[1]} done; when every shard is, run: hybridreduce merge {args.out}")
        failure = failure_line(read_predictions(path), names)
    if failure:
        print(f"hybridreduce run: error: {failure}", file=sys.stderr)
        return 1
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from .manifest import Item, parse_choice, parse_options, prompt_text
    from .runner import check_settings, settings_for
    from .video import read_video

    # Every argument, then the video, before the model loads.
    _check_model_args(args, args.device)
    options = parse_options(args.option, "--option")  # at most 26: the letters A to Z
    full = args.schedule in (None, "none")
    check_settings(
        settings_for(args.schedule, evs=args.evs or 0.0, full=full, keep=args.keep), _model_layout(args).num_blocks
    )
    kw = _frames_kwargs(args)
    video = read_video(args.video, num_frames=kw["frames"], fps=kw["fps"], max_frames=kw["max_frames"])
    vlm = _load_vlm(args, args.device)
    item = Item(id="cli", video=str(args.video), question=args.question, options=options)
    prompt = vlm.prompt(video, prompt_text(item))
    settings = settings_for(args.schedule, evs=vlm.evs_rate(args.evs), full=full, keep=args.keep)
    for setting in settings:
        ans = vlm.answer(prompt, setting.schedule, evs=setting.evs, max_new_tokens=args.max_new_tokens)
        choice = f" (choice {parse_choice(ans.text, item.letters)})" if item.options else ""
        print(f"[{setting.name}] {ans.text!r}{choice}")
        print(
            f"  {len(video.frames)} frames, {ans.n_visual} visual tokens, {ans.evs_visual} after EVS, average keep "
            f"{ans.average_keep:.3f}; prefill {1000 * ans.prefill_s:.1f} ms, time to first token "
            f"{1000 * ans.ttft_s:.1f} ms"
        )
    return 0


#: The entry-point group through which another installed package adds subcommands (the ``analysis`` package adds
#: ``analyze`` and ``plot``; hybridreduce never imports it). Each entry point names a function
#: ``register(subparsers, mergers)``: it adds its subparsers to ``subparsers`` (an ``argparse`` subparsers action)
#: and may append to ``mergers`` a function ``merger(args) -> int | None`` that ``merge DIR`` tries before the
#: run merge (returning None when the directory is not its kind). Declared in pyproject.toml under
#: ``[project.entry-points."hybridreduce.subcommands"]``.
SUBCOMMANDS_GROUP = "hybridreduce.subcommands"


def cmd_merge(args: argparse.Namespace) -> int:
    """Merge the shards of a directory: a registered merger's kind (analysis runs), else a ``run``."""
    from .runner import format_summary, merge

    for merger in getattr(args, "mergers", ()):
        code = merger(args)
        if code is not None:
            return code
    print(format_summary(merge(args.out, allow_partial=args.allow_partial)))
    print(f"wrote {args.out}/predictions.jsonl, summary.json, results.csv")
    return 0


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="DIR", help="a video VLM checkpoint directory")
    p.add_argument("--dtype", default="auto", help="auto (the checkpoint's), float32, bfloat16 or float16")
    p.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1, ... (default cpu; under torchrun cuda:LOCAL_RANK)"
    )
    p.add_argument("--device-map", default=None, help="e.g. auto: spread a large model over the GPUs (accelerate)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow the checkpoint's own Python code")
    p.add_argument("--adapter", metavar="DIR", help="a LoRA adapter (hybridreduce finetune --out) merged into --model")
    p.add_argument("--frames", type=int, help=f"frames sampled uniformly, 1 to 4096 (default {DEFAULT_FRAMES})")
    p.add_argument("--fps", type=float, help="sample at this rate instead of --frames")
    p.add_argument("--max-frames", type=int, help="cap on the frames --fps samples")
    p.add_argument("--schedule", default="progressive", help="preset name, YAML file, or none (default progressive)")
    p.add_argument("--keep", type=float, help="override the schedule's keep budget")
    p.add_argument(
        "--evs",
        type=float,
        help="EVS pruning rate before the language model (default: the checkpoint's video_pruning_rate, else off)",
    )
    p.add_argument("--max-new-tokens", type=int, default=8, help="greedy answer length (default 8)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hybridreduce", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    v = sub.add_parser("verify", help="run the scoring invariants on tiny models or a checkpoint")
    target = v.add_mutually_exclusive_group()
    target.add_argument("--arch", default="nemotron_h", help="tiny architecture to check (default: nemotron_h)")
    target.add_argument("--all", action="store_true", help="check every supported architecture")
    target.add_argument("--model", metavar="PATH", help="a checkpoint directory to check instead of a tiny model")
    v.add_argument("--json", action="store_true", help="print a JSON list of {arch, check, passed, max_err}")
    v.add_argument("--device", help="run the tiny models on this device: cpu (default), cuda, cuda:N")
    v.add_argument("--dtype", default="float32", help="float32 (default), bfloat16 or float16; tolerances follow")
    v.set_defaults(func=cmd_verify)

    b = sub.add_parser("bench", help="time prefill and decode with and without reduction")
    b.add_argument("--arch", default="nemotron_h", help="benchmark model shape (only nemotron_h)")
    b.add_argument("--visual-tokens", type=int, help="visual tokens in the prompt (default 8192)")
    b.add_argument("--keep", type=float, help="average fraction of visual tokens kept (default 0.25)")
    b.add_argument("--schedule", default="progressive", help="schedule name or YAML file (default progressive)")
    b.add_argument("--repeats", type=int, default=3, help="timed rounds; the median is reported (default 3)")
    b.add_argument("--decode-steps", type=int, default=16, help="greedy decode steps to time, >= 1 (default 16)")
    b.add_argument("--sweep", metavar="KEEPS", help="comma-separated keep fractions: write a CSV and a plot")
    b.add_argument(
        "--scale", metavar="COUNTS",
        help="comma-separated visual-token counts, e.g. 2048,4096,8192: time and memory at each (CSV, JSON, plot)",
    )  # fmt: skip
    b.add_argument("--out", metavar="DIR", help="output directory of --sweep or --scale")
    b.add_argument("--device", help="cpu (default), cuda, cuda:N, ...")
    b.add_argument("--dtype", default="float32", help="float32 (default), bfloat16 or float16")
    b.add_argument("--json", action="store_true", help="print one JSON object (a list with --sweep)")
    b.set_defaults(func=cmd_bench)

    c = sub.add_parser("calibrate", help="choose where and how much to cut from unlabeled prompts (a schedule YAML)")
    c.add_argument("--model", required=True, metavar="DIR|toy", help="a video VLM checkpoint, a train-toy run, or toy")
    c.add_argument("--data", required=True, metavar="FILE|toy", help="a JSONL manifest (answers unused), or toy")
    c.add_argument("--out", required=True, metavar="FILE", help="the schedule YAML to write (calibration.json beside)")
    c.add_argument("--keep", type=float, default=0.25, help="budget to meet (default 0.25)")
    c.add_argument("--budget", default="average", help="average (default) or final")
    c.add_argument("--size", type=int, default=64, help="calibration prompts (default 64)")
    c.add_argument("--max-stages", type=int, default=4, help="most cuts a candidate layout has (default 4)")
    c.add_argument(
        "--objective", default="reference",
        help="reference (default: the deepest attention block's importance, carried to the last block) or own (every "
        "block's own importance kept); docs/guides/calibrating.md says why",
    )  # fmt: skip
    c.add_argument(
        "--placement", default="spread",
        help="spread (default: cuts evenly after the first, as presets) or free (any cut positions, at most 3 cuts)",
    )  # fmt: skip
    c.add_argument("--split", default="val", choices=("train", "val", "test"), help="toy split (default val)")
    c.add_argument("--variant", help="toy benchmark variant (default: the checkpoint's first)")
    c.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    c.add_argument("--no-progress", action="store_true", help="no progress bar")
    c.add_argument("--dtype", default="auto", help="video VLM dtype: auto, float32, bfloat16 or float16")
    c.add_argument("--device", default=None, help="cpu, cuda, ... (video VLM)")
    c.add_argument("--device-map", default=None, help=argparse.SUPPRESS)
    c.add_argument("--trust-remote-code", action="store_true", help=argparse.SUPPRESS)
    c.add_argument("--adapter", metavar="DIR", help="a LoRA adapter (hybridreduce finetune --out) merged into --model")
    c.add_argument("--frames", type=int, default=DEFAULT_FRAMES, help=f"frames per video (default {DEFAULT_FRAMES})")
    c.set_defaults(func=cmd_calibrate)

    t = sub.add_parser("train-toy", help="train the embedded toy video VLM on its synthetic benchmark")
    t.add_argument(
        "--config", help=f"training config (default {DEFAULT_TOY_CONFIG}, relative to the working directory)"
    )
    t.add_argument("--out", required=True, metavar="DIR", help="output directory of the checkpoint and logs")
    t.add_argument("--steps", type=int, help="override train.steps (e.g. a short smoke run)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar (logs still go to train_log.jsonl)")
    t.add_argument("--resume", action="store_true", help="continue the run saved in --out (same config)")
    t.add_argument("--overwrite", action="store_true", help="train into an --out that holds an earlier run")
    t.add_argument(
        "--max-minutes", type=float,
        help="stop (state saved) at the first evaluation after this many minutes, >= 0 (0: at the first evaluation)",
    )  # fmt: skip
    t.add_argument("--init-from", metavar="DIR", help="warm restart from this train-toy run (sets train.init_from)")
    t.add_argument(
        "--branch-from", metavar="DIR",
        help="continue another train-toy run from its last saved state into a new --out, under a config that changes "
        "only how batches are treated (e.g. train.reduce_prob) or evaluated",
    )  # fmt: skip
    t.add_argument("--command-line", help=argparse.SUPPRESS)
    t.set_defaults(func=cmd_train_toy)

    d = sub.add_parser("demo", help="every reduction method on the embedded toy video VLM (the main job)")
    d.add_argument("--out", default="runs/demo", metavar="DIR", help="output directory (default runs/demo)")
    d.add_argument("--quick", action="store_true", help="96 questions per variant at keep 0.25 only (under a minute)")
    d.add_argument("--full", action="store_true", help="the complete table: 1,024 questions per variant")
    d.add_argument("--size", type=int, help="held-out questions per variant (default 192; --quick 96, --full 1024)")
    d.add_argument("--checkpoint", metavar="DIR", help="a train-toy output directory (default: the shipped one)")
    d.add_argument(
        "--split", default="test", choices=("val", "test"),
        help="questions to answer: test (default; the reported table) or val (to choose settings on)",
    )  # fmt: skip
    d.add_argument(
        "--methods",
        metavar="M1,M2",
        help="comma-separated demo methods (default: all but the size-unaware merge ablations, *-nosize; --full: all)",
    )
    d.add_argument("--keeps", metavar="K1,K2", help="comma-separated average keeps below 1 (default 0.5,0.25,0.125)")
    d.add_argument("--no-progress", action="store_true", help="no progress bar")
    d.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier demo in --out")
    d.set_defaults(func=cmd_demo)

    r = sub.add_parser("run", help="answer a video-QA manifest with a VLM checkpoint, with and without reduction")
    _model_args(r)
    r.add_argument(
        "--data", required=True, metavar="FILE", help="JSONL manifest {id, video, question, options, answer}"
    )
    r.add_argument("--out", required=True, metavar="DIR", help="output directory (predictions, summary)")
    r.add_argument("--no-full", action="store_true", help="skip the full-token setting")
    r.add_argument("--shard", metavar="I/N", help="answer items i, i+N, ... (default: torchrun's RANK/WORLD_SIZE)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument(
        "--no-retry-errors",
        action="store_true",
        help="on a rerun, keep the error lines instead of answering them again",
    )
    r.set_defaults(func=cmd_run)

    g = sub.add_parser("generate", help="answer one question about one video")
    _model_args(g)
    g.add_argument("--video", required=True, metavar="FILE", help="a video file or a folder of frames")
    g.add_argument("--question", required=True, help="the question")
    g.add_argument("--option", action="append", help="a multiple-choice option (repeat: A, B, ...)")
    g.set_defaults(func=cmd_generate)

    m = sub.add_parser("merge", help="combine the shards of a run into predictions.jsonl and its summary")
    m.add_argument("out", metavar="DIR", help="the run's output directory")
    m.add_argument(
        "--allow-partial", action="store_true", help="merge although shards are missing (the summary says partial)"
    )
    mergers: list = []
    m.set_defaults(func=cmd_merge, mergers=mergers)
    from .finetune.cli import register as register_finetune

    register_finetune(sub)
    _register_extensions(sub, mergers)
    return parser


def _register_extensions(sub, mergers: list) -> None:
    """Let every installed package in :data:`SUBCOMMANDS_GROUP` add its subcommands (and shard mergers)."""
    from importlib.metadata import entry_points

    for entry in sorted(entry_points(group=SUBCOMMANDS_GROUP), key=lambda e: e.name):
        entry.load()(sub, mergers)


def main(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None) -> int:
    """Run one subcommand; a :class:`HybridReduceError` becomes one line on stderr and exit status 2.

    The same program as the console script and ``python -m hybridreduce``; other packages add subcommands
    through :data:`SUBCOMMANDS_GROUP`. ``parser`` (default :func:`build_parser`) is for tests.
    """
    import shlex

    from . import rundir

    try:
        parser = parser or build_parser()
        args = parser.parse_args(argv)
    except KeyboardInterrupt:
        print("hybridreduce: interrupted while starting; nothing written", file=sys.stderr)
        return 130
    rundir.COMMAND = "hybridreduce " + shlex.join(sys.argv[1:] if argv is None else argv)
    try:
        return args.func(args)
    except HybridReduceError as exc:
        print(f"hybridreduce {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        # Every file is written under a temporary name and renamed when complete (hybridreduce.rundir), so what a
        # Ctrl-C leaves is the files finished before it; a command that saves partial work says so (Interrupted).
        said = str(exc) if isinstance(exc, Interrupted) else ""
        said = said or "interrupted; files finished before Ctrl-C are kept, none is half-written"
        print(f"hybridreduce {args.command}: {said}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
