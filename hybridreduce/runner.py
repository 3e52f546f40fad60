"""``hybridreduce run`` / ``merge``: answer a video-QA manifest with a real VLM, with and without reduction.

Every item of the manifest (:mod:`hybridreduce.manifest`) is answered once per *setting*: ``full`` (every
token), and the schedule's name (e.g. ``progressive``), each optionally after EVS at a pruning rate. Each answer
is one JSON line appended to the predictions file and flushed at once, so an interrupted run loses nothing.
A broken item — a missing or corrupt video, too few frames — becomes a line with its ``error`` and the run
goes on.

Every line records under ``config`` what produced it: the model directory and dtype, ``frames`` / ``fps`` /
``max_frames``, the EVS rate, the schedule (with its ``keep``) and ``max_new_tokens``. A rerun into the same
directory reuses a line only when its ``config`` equals the rerun's and it is not an error (error lines are
answered again unless ``retry_errors=False``); the lines it does not reuse are moved, never deleted, to
``superseded.jsonl`` (``superseded.shard-i-of-N.jsonl``) and answered again. Lines of settings the rerun does
not have are left as they are.

Every argument is checked (:mod:`hybridreduce.validate`) before anything is written: a bad one raises
:class:`~hybridreduce.errors.InputError` instead of becoming an error line on every item.

Sharding: ``shard=(index, count)`` (``--shard i/N`` on the command line: shard ``i`` of ``N``) answers items
``i, i + N, i + 2N, ...`` and writes ``predictions.shard-i-of-N.jsonl``; :func:`merge` combines the shards in
manifest order into ``predictions.jsonl`` and writes the summary. Under ``torchrun --nproc-per-node N`` the command
line takes ``i`` and ``N`` from ``RANK`` / ``WORLD_SIZE``, and rank 0 merges after a barrier. (``i/N`` is the
command line's syntax; ``N`` here counts shards, not samples.) :func:`merge` refuses
missing shards (``allow_partial=True`` merges them anyway and marks the summary ``"partial": true`` with the
missing ones), shards of two different splits, an item answered in two files, a setting answered under two
configurations, predictions made from two versions of the manifest, and shards still being written; :func:`run`
refuses to start a shard that would collide with the files already in the directory. Each shard holds its own lock
on the directory while it writes, and every file is replaced atomically (:mod:`hybridreduce.rundir`).

The summary (``summary.json``, ``results.csv``): per setting, accuracy over the answered items (a wrong or
unparsable answer counts as wrong; broken items are counted apart), accuracy per question type, mean
prefill time, time to first token and decode time, visual tokens in the prompt, after EVS, and the mean
over blocks of the share each block carried; the prefill speed-up against ``full`` when both ran on the same
inputs; the setting's ``config``. ``summary.json`` also lists the ``sources`` merged, ``partial`` and
``missing``.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import validate
from .errors import HybridReduceError, InputError, Interrupted
from .rundir import (  # noqa: F401  (check_shard, parse_shard, on_rank_zero_after_all: this module's API too)
    RunFolder,
    check_shard,
    find_shards,
    missing_shards,
    on_rank_zero_after_all,
    parse_shard,
    refuse_mixed_split,
    shard_name,
    shards_being_written,
    write_text,
)
from .schedule import Schedule

#: Fields of a prediction line that are measurements of time (they differ between any two runs).
TIMINGS = ("embed_s", "evs_s", "prefill_s", "ttft_s", "decode_s")
#: Most frames ``frames`` / ``max_frames`` may ask for: a guard against typos (100000 for 10000), far above
#: what a video VLM's context holds.
MAX_FRAMES = 4096
#: The predictions file of one shard (:func:`hybridreduce.rundir.find_shards`).
SHARD_FILES = "predictions.{shard}.jsonl"


@dataclass(frozen=True)
class Setting:
    """One way of answering: a schedule inside the language model (or none) after EVS at rate ``evs``."""

    name: str
    schedule: Schedule | None
    evs: float = 0.0


def check_evs(rate) -> float:
    """The EVS pruning rate: the fraction of video tokens dropped before the language model, ``0 <= rate < 1``."""
    return validate.number(
        rate, "evs (--evs)", 0, 1, high_open=True, fix="it is the fraction of video tokens EVS drops; 0 turns EVS off"
    )


def check_keep(keep, name: str = "keep (--keep)") -> float:
    """A schedule's keep budget, ``0 < keep <= 1`` (whether a model's depth can meet it: :func:`check_settings`)."""
    return validate.number(keep, name, 0, 1, low_open=True, fix="it is the fraction of visual tokens kept, e.g. 0.25")


def check_max_new_tokens(max_new_tokens) -> int:
    """The greedy answer length: at least one token."""
    return validate.integer(
        max_new_tokens,
        "max_new_tokens (--max-new-tokens)",
        1,
        fix="the answer's length in tokens, e.g. 8 (the default)",
    )


def check_sampling(frames: int | None, fps: float | None, max_frames: int | None) -> None:
    """Frame sampling: exactly one of ``frames`` (uniform) and ``fps`` (by rate); ``max_frames`` only caps ``fps``."""
    if (frames is None) == (fps is None):
        raise InputError(
            f"give one of frames (--frames) and fps (--fps), got frames={frames!r} and fps={fps!r}; "
            "--frames N samples N frames uniformly, --fps R samples R a second (in Python pass frames=None with fps)"
        )
    if frames is not None:
        validate.integer(
            frames, "frames (--frames)", 1, MAX_FRAMES, fix="the frames sampled from each video, e.g. 32 (the default)"
        )
    else:
        validate.number(
            fps, "fps (--fps)", 0, low_open=True, fix="it is frames sampled per second of video, e.g. 1 or 0.5"
        )
    if max_frames is not None:
        if fps is None:
            raise InputError(
                f"max_frames (--max-frames) {max_frames!r} caps the frames fps (--fps) samples, but frames are sampled "
                "by count (--frames); give the count itself with --frames, or sample by --fps"
            )
        validate.integer(
            max_frames,
            "max_frames (--max-frames)",
            1,
            MAX_FRAMES,
            fix="the most frames --fps takes from one video, e.g. 64",
        )


def settings_for(schedule: str | None, evs: float = 0.0, full: bool = True, keep: float | None = None) -> list[Setting]:
    """The settings of a run: ``full`` (unless ``full=False``) and the schedule's (unless ``schedule`` is None).

    ``schedule`` is a preset name or a YAML file; ``keep`` overrides its budget. With ``evs > 0`` EVS runs
    before both and the names carry ``+evs``.
    """
    evs = check_evs(evs)
    has_schedule = schedule is not None and schedule != "none"
    if keep is not None:
        keep = check_keep(keep)
        if not has_schedule:
            raise InputError(
                f"keep (--keep) {keep:g} has no schedule to apply to (the schedule is {schedule!r}: every token is "
                "kept); drop --keep, or give a schedule such as --schedule progressive"
            )
    out = []
    suffix = f"+evs{evs:g}" if evs else ""
    if full:
        out.append(Setting("full" + suffix, None, evs))
    if has_schedule:
        sched = Schedule.load(schedule)
        if keep is not None:
            sched = Schedule.from_dict({**sched.to_dict(), "keep": keep})
        name = Path(schedule).stem if str(schedule).endswith((".yaml", ".yml")) else str(schedule)
        out.append(Setting(f"{name}@{sched.keep:g}{suffix}" if sched.keep is not None else name + suffix, sched, evs))
    if not out:
        raise InputError("nothing to run: give a schedule, or keep the full-token setting")
    return out


def check_settings(settings: Sequence[Setting], num_blocks: int | None = None) -> list[Setting]:
    """``settings`` as :func:`settings_for` makes them: distinct names, EVS rates in ``[0, 1)``, and (given the
    model's depth ``num_blocks``) schedules the model can carry out, e.g. a ``keep`` its depth can meet."""
    if isinstance(settings, Setting) or not settings or not all(isinstance(s, Setting) for s in settings):
        raise InputError(f"settings must be a non-empty list of Setting (from settings_for), got {settings!r}")
    names = [s.name for s in settings]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InputError(f"settings named {repeated} more than once; every setting needs its own name")
    for s in settings:
        check_evs(s.evs)
        if s.schedule is not None and num_blocks is not None:
            try:
                Schedule.load(s.schedule).resolve(num_blocks)
            except InputError as exc:
                raise InputError(f"setting {s.name!r} on this {num_blocks}-block model: {exc}") from None
    return list(settings)


def predictions_path(out: Path, shard: tuple[int, int]) -> Path:
    return out / ("predictions.jsonl" if shard[1] == 1 else f"predictions.{shard_name(shard)}.jsonl")


def superseded_path(path: Path) -> Path:
    """Where :func:`run` moves the lines of ``path`` it does not reuse: ``superseded[.shard-i-of-N].jsonl``."""
    return path.with_name(path.name.replace("predictions", "superseded", 1))


def shard_files(out: Path) -> dict[tuple[int, int], Path]:
    """The ``predictions.shard-i-of-N.jsonl`` files of ``out``, by ``(index, count)``."""
    return find_shards(out, SHARD_FILES)


def _merged_from_shards(out: Path) -> bool:
    """Whether ``out/predictions.jsonl`` is what :func:`merge` wrote from shard files (its summary says so)."""
    try:
        sources = json.loads((out / "summary.json").read_text()).get("sources")
    except (OSError, ValueError, AttributeError):
        return False
    return bool(sources) and all(str(name).startswith("predictions.shard-") for name in sources)


def check_out_dir(out_dir: str | Path, shard: tuple[int, int] = (0, 1)) -> Path:
    """``out_dir`` as the output directory of shard ``(index, count)``: writable (or creatable), and holding no
    predictions of another split, which the shard would answer a second time. Nothing is created."""
    out = validate.writable_dir(out_dir, "out_dir (--out)")
    if out.is_dir():
        single = out / "predictions.jsonl"
        whole = single.name if single.is_file() and not _merged_from_shards(out) else None
        refuse_mixed_split(out, shard, shard_files(out), whole, "answer")
    return out


def read_predictions(path: Path) -> list[dict]:
    """The lines of a predictions file; a last line cut off by a kill is dropped.

    Raises:
        InputError: a line other than the last is not JSON, or a line is not an object with ``index``, ``id``
            and ``setting`` (named as ``FILE:LINE``).
    """
    if not path.is_file():
        return []
    rows = []
    lines = path.read_text().splitlines()
    for k, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if k == len(lines) - 1:
                break  # a write interrupted mid-line; the item is answered again
            raise InputError(f"{path}:{k + 1}: not valid JSON; delete the line or the file to redo it") from None
        missing = [key for key in ("index", "id", "setting") if not isinstance(row, dict) or key not in row]
        if missing:
            raise InputError(
                f"{path}:{k + 1}: a prediction line needs index, id and setting, this one lacks {', '.join(missing)}; "
                "delete the line (a rerun of the same command answers it again)"
            )
        rows.append(row)
    return rows


def _write_lines(path: Path, rows: list[dict]) -> None:
    """Replace ``path`` by ``rows``, one JSON line each, all at once (a kill leaves the old file or the new)."""
    write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def _clean_tail(path: Path) -> None:
    """Cut a partial last line (from a killed run) so that appends start on a fresh line."""
    if path.is_file():
        text = path.read_text()
        if text and not text.endswith("\n"):
            write_text(path, text[: text.rfind("\n") + 1])


def answer_config(
    vlm, setting: Setting, frames: int | None, fps: float | None, max_frames: int | None, max_new_tokens: int
) -> dict:
    """What produces an answer of ``setting``, as recorded in each line (``config``) and compared on resume."""
    config = {
        "model": str(Path(vlm.path).resolve()),
        "dtype": str(vlm.model.dtype).removeprefix("torch."),
        "frames": frames,
        "fps": fps,
        "max_frames": max_frames,
        "evs": setting.evs,
        "schedule": None if setting.schedule is None else setting.schedule.to_dict(),
        "max_new_tokens": max_new_tokens,
    }
    if getattr(vlm, "adapter", None) is not None:  # recorded only when there is one: earlier lines stay resumable
        config["adapter"] = str(Path(vlm.adapter).resolve())
    return json.loads(json.dumps(config))  # as read back from a line: lists for tuples


def run(
    vlm,
    items: Sequence,
    out_dir: str | Path,
    settings: Sequence[Setting],
    frames: int | None = 32,
    fps: float | None = None,
    max_frames: int | None = None,
    max_new_tokens: int = 8,
    shard: tuple[int, int] = (0, 1),
    progress: bool = True,
    retry_errors: bool = True,
) -> Path:
    """Answer ``items`` (manifest :class:`~hybridreduce.manifest.Item` s) under every setting.

    Args:
        vlm: a :class:`hybridreduce.vlm.VLM`.
        items: the whole manifest (the shard is taken here, so indices stay those of the manifest).
        out_dir: where the predictions file goes (created).
        settings: from :func:`settings_for`.
        frames, fps, max_frames: frame sampling (:func:`hybridreduce.video.read_video`): ``frames`` or ``fps``
            (then ``frames=None``); ``max_frames`` caps ``fps``.
        max_new_tokens: greedy answer length.
        shard: ``(index, count)``.
        progress: a tqdm bar with ETA.
        retry_errors: answer again the error lines of an earlier run with the same settings (else keep them).
    Returns:
        The predictions file of this shard.
    Raises:
        InputError: a bad argument (see :func:`check_sampling`, :func:`check_settings`, :func:`check_out_dir`),
            before anything is written.
        Interrupted: Ctrl-C (a ``KeyboardInterrupt``); every answer made is a whole line of the predictions file,
            and the message says how many items are answered (a rerun continues).
    """
    from tqdm.auto import tqdm

    from .manifest import Item, parse_choice, prompt_text
    from .video import read_video

    check_sampling(frames, fps, max_frames)
    max_new_tokens = check_max_new_tokens(max_new_tokens)
    settings = check_settings(settings, vlm.adapted.num_blocks)
    shard = check_shard(shard)
    if isinstance(items, (str, Item)) or not all(isinstance(item, Item) for item in items):
        raise InputError("items must be a list of manifest Items; read them with hybridreduce.manifest.read_manifest")
    ids = [item.id for item in items]
    if len(set(ids)) < len(ids):
        raise InputError(
            f"item ids repeat ({sorted({x for x in ids if ids.count(x) > 1})[:5]}); give every item its own id"
        )
    out = check_out_dir(out_dir, shard)
    path = predictions_path(out, shard)
    configs = {s.name: answer_config(vlm, s, frames, fps, max_frames, max_new_tokens) for s in settings}
    # Nothing is written above this line; from here on this shard's lock is held (a second writer is refused).
    with RunFolder(out, shard) as folder:
        reused, redo = [], []
        for r in read_predictions(path):
            config = configs.get(r["setting"])
            if config is None or (r.get("config") == config and ("error" not in r or not retry_errors)):
                reused.append(r)  # a line of this run's settings to keep, or of another setting: left as it is
            else:
                redo.append(r)
        if redo:
            with superseded_path(path).open("a") as f:  # first, so that a kill in between loses nothing
                f.writelines(json.dumps(r) + "\n" for r in redo)
            folder.written.append(superseded_path(path).name)
            _write_lines(path, reused)
            errors = sum("error" in r for r in redo)
            parts = []
            if errors < len(redo):
                parts.append(f"{len(redo) - errors} line(s) made with other settings")
            if errors:
                parts.append(f"{errors} error line(s)")
            print(
                f"{path.name}: answering again {' and '.join(parts)}; the old lines are in "
                f"{superseded_path(path).name}",
                file=sys.stderr,
            )
        else:
            _clean_tail(path)
        done = {(r["id"], r["setting"]) for r in reused}
        i, count = shard
        mine = [(k, item) for k, item in enumerate(items) if k % count == i]
        todo = [(k, item) for k, item in mine if any((item.id, s.name) not in done for s in settings)]

        def lines_of(k: int, item: Item):
            """The lines item ``k`` still owes, one per setting, each yielded as soon as it is answered."""
            base = {"index": k, "id": item.id, "qtype": item.qtype, "answer": item.answer}
            try:
                video = read_video(item.video, num_frames=frames, fps=fps, max_frames=max_frames)
                prompt = vlm.prompt(video, prompt_text(item))
            except HybridReduceError as exc:
                video, prompt, failure = None, None, str(exc)
            for setting in settings:
                if (item.id, setting.name) in done:
                    continue
                row = {**base, "setting": setting.name, "config": configs[setting.name]}
                if prompt is None:
                    row["error"] = failure
                else:
                    try:
                        ans = vlm.answer(prompt, setting.schedule, evs=setting.evs, max_new_tokens=max_new_tokens)
                    except HybridReduceError as exc:
                        row["error"] = str(exc)
                    else:
                        pred = parse_choice(ans.text, item.letters) if item.options else ans.text
                        row.update(
                            pred=pred,
                            correct=None if item.answer is None else pred == item.answer,
                            text=ans.text,
                            frames=len(video.frames),
                            n_visual=ans.n_visual,
                            evs_visual=ans.evs_visual,
                            average_keep=round(ans.average_keep, 6),
                            **{t: round(getattr(ans, t), 6) for t in TIMINGS},
                        )
                yield row

        bar = tqdm(total=len(mine), initial=len(mine) - len(todo), desc=f"run {i}/{count}" if count > 1 else "run",
                   disable=not progress, dynamic_ncols=True)  # fmt: skip
        answered = len(mine) - len(todo)  # items whose every setting is answered
        try:
            with path.open("a") as f:
                for k, item in todo:
                    for row in lines_of(k, item):
                        f.write(json.dumps(row) + "\n")
                        f.flush()  # on disk as soon as it is made: Ctrl-C or a kill loses no answer
                    bar.update(1)
                    answered += 1
        except KeyboardInterrupt:  # the lines written are whole (a line cut by a kill is dropped on reading)
            raise Interrupted(
                f"interrupted with {answered} of {len(mine)} items answered; every answer made is kept in {path}: "
                "rerun the same command to continue"
            ) from None
        finally:
            bar.close()
        folder.written.append(path.name)
    return path


def failure_line(rows: list[dict], names) -> str | None:
    """One line when every line of the settings ``names`` in ``rows`` is an error (None otherwise or when none)."""
    mine = [r for r in rows if r["setting"] in set(names)]
    if not mine or any("error" not in r for r in mine):
        return None
    return (
        f"every answer failed: {len(mine)} of {len(mine)} lines are errors (first: {mine[0]['error']}); "
        "fix the cause and rerun the same command (error lines are answered again)"
    )


def summarize(rows: list[dict]) -> dict:
    """Per-setting accuracy, accuracy per question type, timings and token counts (see the module docstring)."""
    by_setting: dict[str, list[dict]] = {}
    for r in rows:
        by_setting.setdefault(r["setting"], []).append(r)
    results = []
    for name, rs in by_setting.items():
        ok = [r for r in rs if "error" not in r]
        graded = [r for r in ok if r.get("correct") is not None]
        per_type: dict[str, dict] = {}
        for r in graded:
            t = per_type.setdefault(r["qtype"], {"n": 0, "correct": 0})
            t["n"] += 1
            t["correct"] += bool(r["correct"])
        for t in per_type.values():
            t["accuracy"] = t["correct"] / t["n"]

        def mean(key: str, rows=ok):
            return float(np.mean([r[key] for r in rows])) if rows else None

        results.append(
            {
                "setting": name,
                "items": len(rs),
                "answered": len(ok),
                "errors": len(rs) - len(ok),
                "accuracy": float(np.mean([bool(r["correct"]) for r in graded])) if graded else None,
                "per_type": dict(sorted(per_type.items())),
                "prefill_s": mean("prefill_s"),
                "ttft_s": mean("ttft_s"),
                "decode_s": mean("decode_s"),
                "n_visual": mean("n_visual"),
                "evs_visual": mean("evs_visual"),
                "average_keep": mean("average_keep"),
                "config": rs[0].get("config"),  # one per setting (merge checks)
            }
        )

    def inputs(config: dict | None) -> dict | None:  # what a setting and its full-token reference share
        return None if config is None else {k: v for k, v in config.items() if k != "schedule"}

    by_name = {r["setting"]: r for r in results}
    for r in results:  # against the full-token setting with the same EVS, on the same frames, model, ...
        evs_suffix = r["setting"][r["setting"].index("+") :] if "+" in r["setting"] else ""
        ref = by_name.get("full" + evs_suffix)
        ok = ref is not None and ref["prefill_s"] and r["prefill_s"] and inputs(ref["config"]) == inputs(r["config"])
        r["prefill_speedup"] = ref["prefill_s"] / r["prefill_s"] if ok else None
    return {"results": results}


def write_summary(out_dir: str | Path, rows: list[dict], info: dict | None = None, folder=None) -> dict:
    """``summary.json`` (with ``info`` added, e.g. ``sources``) and ``results.csv`` of ``rows`` into ``out_dir``,
    each written atomically (recorded in ``folder``'s manifest, a :class:`~hybridreduce.rundir.RunFolder`, when
    given); returns the summary."""
    out = Path(out_dir)
    summary = {**summarize(rows), **(info or {})}
    keys = ["setting", "items", "answered", "errors", "accuracy", "prefill_s", "ttft_s", "decode_s", "n_visual",
            "evs_visual", "average_keep", "prefill_speedup"]  # fmt: skip
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=keys, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(summary["results"])
    for name, text in (("summary.json", json.dumps(summary, indent=2) + "\n"), ("results.csv", table.getvalue())):
        write_text(out / name, text)
        if folder is not None:
            folder.written.append(name)
    return summary


def format_summary(summary: dict) -> str:
    """The summary as a text table."""
    head = (
        f"{'setting':<28} {'items':>5} {'errors':>6} {'accuracy':>8} {'prefill ms':>10} {'TTFT ms':>8} "
        f"{'speed-up':>8} {'keep':>6}"
    )
    lines = [head, "-" * len(head)]
    for r in summary["results"]:
        acc = "-" if r["accuracy"] is None else f"{100 * r['accuracy']:.1f}%"
        ms = lambda v: "-" if v is None else f"{1000 * v:.1f}"  # noqa: E731
        speed = "-" if r["prefill_speedup"] is None else f"{r['prefill_speedup']:.2f}x"
        keep = "-" if r["average_keep"] is None else f"{r['average_keep']:.3f}"
        lines.append(
            f"{r['setting']:<28} {r['items']:>5} {r['errors']:>6} {acc:>8} {ms(r['prefill_s']):>10} "
            f"{ms(r['ttft_s']):>8} {speed:>8} {keep:>6}"
        )
    if summary.get("partial"):
        lines.append(f"partial: merged without {', '.join(summary['missing'])}")
    return "\n".join(lines)


def _config_difference(a: dict | None, b: dict | None) -> str:
    """``"frames 8 vs 16"``: the keys whose values differ between two answer configs."""
    if a is None or b is None:
        return "one without a recorded config"
    keys = sorted(k for k in {*a, *b} if a.get(k) != b.get(k))
    return ", ".join(f"{k} {a.get(k)!r} vs {b.get(k)!r}" for k in keys if k != "schedule") or "schedule settings"


def merge(out_dir: str | Path, allow_partial: bool = False) -> dict:
    """Combine the predictions files of ``out_dir`` into ``predictions.jsonl`` (manifest order) and summarise.

    With shard files, the sources are the shards ``0..N-1`` of one split N (an existing ``predictions.jsonl`` is
    then an earlier merge's output and is rewritten); without, ``predictions.jsonl`` itself. A line of the same
    item and setting twice in one file is kept once (the last).

    Args:
        out_dir: the run's output directory.
        allow_partial: merge although shards are missing; the summary says ``"partial": true`` and lists them.
    Returns:
        The summary, with ``sources``, ``partial`` and ``missing``.
    Raises:
        InputError, before anything is written: no predictions; missing shards (without ``allow_partial``);
            shards of two splits; a ``predictions.jsonl`` of a run without shards beside shards; an item answered
            in two files; a setting answered under two configs (e.g. ``frames`` 8 in one shard, 16 in another).
    """
    out = Path(out_dir)
    shards = shard_files(out)
    single = out / "predictions.jsonl"
    missing: list[str] = []
    busy = shards_being_written(out) if out.is_dir() else []
    if busy:
        raise InputError(f"{out}: {'; '.join(busy)} is still being written; merge when every shard has finished")
    if shards:
        splits, absent = missing_shards(shards)
        if len(splits) > 1:
            listing = "; ".join(
                f"of {count}: {', '.join(str(i) for i, other in sorted(shards) if other == count)}" for count in splits
            )
            raise InputError(
                f"{out}: shards of {len(splits)} different splits answer the same items ({listing}); "
                "keep the files of one split (move the others away) and merge again"
            )
        count = splits[0]
        if single.is_file() and not _merged_from_shards(out):
            raise InputError(
                f"{out}: predictions.jsonl (a run without --shard) and {len(shards)} shard file(s) of a {count}-way "
                "split answer the same items; move one of them to another directory and merge again"
            )
        missing = [predictions_path(out, (i, count)).name for i in absent]
        if missing and not allow_partial:
            raise InputError(
                f"{out}: {len(missing)} of {count} shards missing: {', '.join(missing)}; run them (hybridreduce run "
                f"... --shard I/{count} --out {out}), or merge what is there with --allow-partial"
            )
        sources = [shards[key] for key in sorted(shards)]
    elif single.is_file():
        sources = [single]
    else:
        raise InputError(f"{out}: no predictions*.jsonl to merge; run `hybridreduce run ... --out {out}` first")
    validate.writable_dir(out, "out (merge DIR)")
    rows: dict[tuple, dict] = {}
    source_of: dict[tuple, Path] = {}
    id_at: dict[int, tuple[str, Path]] = {}  # manifest index -> the id answered there: one manifest for all
    shard_of = {path: key for key, path in shards.items()}
    for path in sources:
        for r in read_predictions(path):
            key = (r["id"], r["setting"])
            if source_of.get(key, path) != path:
                raise InputError(
                    f"{out}: item {key[0]!r} ({key[1]}) is answered in both {source_of[key].name} and {path.name}: the "
                    "shards overlap (was the manifest changed between them?); rerun the shards on one manifest"
                )
            seen_id, seen_in = id_at.setdefault(r["index"], (r["id"], path))
            i, count = shard_of.get(path, (0, 1))
            if seen_id != r["id"] or r["index"] % count != i:
                other = f"item {seen_id!r} in {seen_in.name}" if seen_id != r["id"] else f"shard {i}/{count}"
                raise InputError(
                    f"{out}: {path.name} answers item {r['id']!r} as manifest line {r['index'] + 1}, which is {other}: "
                    "the predictions come from two versions of the manifest; rerun the stale shards on the current "
                    "manifest (or move them away) and merge again"
                )
            rows[key], source_of[key] = r, path
    first: dict[str, dict] = {}
    for key, r in rows.items():
        seen = first.setdefault(r["setting"], r)
        if seen.get("config") != r.get("config"):
            where = f"item {seen['id']!r} in {source_of[(seen['id'], seen['setting'])].name}"
            where += f", item {key[0]!r} in {source_of[key].name}"
            raise InputError(
                f"{out}: setting {r['setting']!r} was answered under two configs ({where}: "
                f"{_config_difference(seen.get('config'), r.get('config'))}); rerun the shards with one command "
                "(a rerun answers again what differs)"
            )
    ordered = sorted(rows.values(), key=lambda r: (r["index"], r["setting"]))
    info = {"sources": [p.name for p in sources], "partial": bool(missing), "missing": missing}
    with RunFolder(out) as folder:
        _write_lines(single, ordered)
        folder.written.append(single.name)
        return write_summary(out, ordered, info, folder)
