"""``hybridreduce run`` / ``merge``: answer a video-QA manifest with a real VLM, with and without reduction.

Every item of the manifest (:mod:`hybridreduce.manifest`) is answered once per *setting*: ``full`` (every
token), and the schedule's name (e.g. ``progressive``), each optionally after EVS at rate ``q``. Each answer
is one JSON line appended to the predictions file and flushed at once, so an interrupted run loses nothing
and a rerun of the same command skips what is written (one line per item and setting, errors included).
A broken item — a missing or corrupt video, too few frames — becomes a line with its ``error`` and the run
goes on.

Sharding: ``shard=(i, N)`` answers items ``i, i + N, i + 2N, ...`` and writes
``predictions.shard-i-of-N.jsonl``; :func:`merge` combines the shards in manifest order into
``predictions.jsonl`` and writes the summary. Under ``torchrun --nproc-per-node N`` the command line takes
``i`` and ``N`` from ``RANK`` / ``WORLD_SIZE``, and rank 0 merges after a barrier.

The summary (``summary.json``, ``results.csv``): per setting, accuracy over the answered items (a wrong or
unparsable answer counts as wrong; broken items are counted apart), accuracy per question type, mean
prefill time, time to first token and decode time, visual tokens in the prompt, after EVS, and the mean
over blocks of the share each block carried; the prefill speed-up against ``full`` when both ran.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import HybridReduceError, InputError
from .schedule import Schedule

#: Fields of a prediction line that are measurements of time (they differ between any two runs).
TIMINGS = ("embed_s", "evs_s", "prefill_s", "ttft_s", "decode_s")


@dataclass(frozen=True)
class Setting:
    """One way of answering: a schedule inside the language model (or none) after EVS at rate ``evs``."""

    name: str
    schedule: Schedule | None
    evs: float = 0.0


def settings_for(schedule: str | None, evs: float = 0.0, full: bool = True, keep: float | None = None) -> list[Setting]:
    """The settings of a run: ``full`` (unless ``full=False``) and the schedule's (unless ``schedule`` is None).

    ``schedule`` is a preset name or a YAML file; ``keep`` overrides its budget. With ``evs > 0`` EVS runs
    before both and the names carry ``+evs``.
    """
    out = []
    suffix = f"+evs{evs:g}" if evs else ""
    if full:
        out.append(Setting("full" + suffix, None, evs))
    if schedule is not None and schedule != "none":
        sched = Schedule.load(schedule)
        if keep is not None:
            sched = Schedule.from_dict({**sched.to_dict(), "keep": keep})
        name = Path(schedule).stem if str(schedule).endswith((".yaml", ".yml")) else str(schedule)
        out.append(Setting(f"{name}@{sched.keep:g}{suffix}" if sched.keep is not None else name + suffix, sched, evs))
    if not out:
        raise InputError("nothing to run: give a schedule, or keep the full-token setting")
    return out


def parse_shard(spec: str | None, env: dict | None = None) -> tuple[int, int]:
    """``(i, N)`` from ``"i/N"``; without a spec, from torchrun's ``RANK``/``WORLD_SIZE``; else ``(0, 1)``."""
    env = os.environ if env is None else env
    if spec is None:
        if "WORLD_SIZE" in env and "RANK" in env:
            return int(env["RANK"]), int(env["WORLD_SIZE"])
        return 0, 1
    try:
        i, n = (int(x) for x in str(spec).split("/"))
    except ValueError:
        raise InputError(f"--shard must look like i/N (e.g. 0/4), got {spec!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise InputError(f"--shard {spec}: need N >= 1 and 0 <= i < N")
    return i, n


def on_rank_zero_after_all(rank: int, work):
    """Under torchrun: wait until every rank gets here (a gloo barrier), then run ``work()`` on rank 0 only.

    Returns ``work()``'s result on rank 0 and None elsewhere. The barrier waits up to two days, since ranks
    whose shards are lighter may finish hours apart (the default gloo timeout is 30 minutes).
    """
    from datetime import timedelta

    import torch.distributed as dist

    dist.init_process_group("gloo", timeout=timedelta(days=2))
    try:
        dist.barrier()
        result = work() if rank == 0 else None
        dist.barrier()  # no rank exits while rank 0 still reads their files
    finally:
        dist.destroy_process_group()
    return result


def predictions_path(out: Path, shard: tuple[int, int]) -> Path:
    i, n = shard
    return out / ("predictions.jsonl" if n == 1 else f"predictions.shard-{i}-of-{n}.jsonl")


def read_predictions(path: Path) -> list[dict]:
    """The lines of a predictions file; a last line cut off by a kill is dropped."""
    if not path.is_file():
        return []
    rows = []
    lines = path.read_text().splitlines()
    for k, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if k == len(lines) - 1:
                break  # a write interrupted mid-line; the item is answered again
            raise InputError(f"{path}:{k + 1}: not valid JSON; delete the line or the file to redo it") from None
    return rows


def _clean_tail(path: Path) -> None:
    """Cut a partial last line (from a killed run) so that appends start on a fresh line."""
    if path.is_file():
        text = path.read_text()
        if text and not text.endswith("\n"):
            path.write_text(text[: text.rfind("\n") + 1])


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
) -> Path:
    """Answer ``items`` (manifest :class:`~hybridreduce.manifest.Item` s) under every setting.

    Args:
        vlm: a :class:`hybridreduce.vlm.VLM`.
        items: the whole manifest (the shard is taken here, so indices stay those of the manifest).
        out_dir: where the predictions file goes (created).
        settings: from :func:`settings_for`.
        frames, fps, max_frames: frame sampling (:func:`hybridreduce.video.read_video`).
        max_new_tokens: greedy answer length.
        shard: ``(i, N)``.
        progress: a tqdm bar with ETA.
    Returns:
        The predictions file of this shard.
    """
    from tqdm.auto import tqdm

    from .manifest import parse_choice, prompt_text
    from .video import read_video

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = predictions_path(out, shard)
    _clean_tail(path)
    done = {(r["id"], r["setting"]) for r in read_predictions(path)}
    i, n = shard
    mine = [(k, item) for k, item in enumerate(items) if k % n == i]
    todo = [(k, item) for k, item in mine if any((item.id, s.name) not in done for s in settings)]
    bar = tqdm(total=len(mine), initial=len(mine) - len(todo), desc=f"run {i}/{n}" if n > 1 else "run",
               disable=not progress, dynamic_ncols=True)  # fmt: skip
    with path.open("a") as f:
        for k, item in todo:
            base = {"index": k, "id": item.id, "qtype": item.qtype, "answer": item.answer}
            try:
                video = read_video(item.video, num_frames=frames, fps=fps, max_frames=max_frames)
                prompt = vlm.prompt(video, prompt_text(item))
            except HybridReduceError as exc:
                video, prompt, failure = None, None, str(exc)
            for setting in settings:
                if (item.id, setting.name) in done:
                    continue
                row = {**base, "setting": setting.name}
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
                f.write(json.dumps(row) + "\n")
                f.flush()
            bar.update(1)
    bar.close()
    return path


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
            }
        )
    by_name = {r["setting"]: r for r in results}
    for r in results:  # against the full-token setting with the same EVS
        evs_suffix = r["setting"][r["setting"].index("+") :] if "+" in r["setting"] else ""
        ref = by_name.get("full" + evs_suffix)
        ok = ref is not None and ref["prefill_s"] and r["prefill_s"]
        r["prefill_speedup"] = ref["prefill_s"] / r["prefill_s"] if ok else None
    return {"results": results}


def write_summary(out_dir: str | Path, rows: list[dict]) -> dict:
    """``summary.json`` and ``results.csv`` of ``rows`` into ``out_dir``; returns the summary."""
    out = Path(out_dir)
    summary = summarize(rows)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    keys = ["setting", "items", "answered", "errors", "accuracy", "prefill_s", "ttft_s", "decode_s", "n_visual",
            "evs_visual", "average_keep", "prefill_speedup"]  # fmt: skip
    with (out / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(summary["results"])
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
    return "\n".join(lines)


def merge(out_dir: str | Path) -> dict:
    """Combine every ``predictions*.jsonl`` of ``out_dir`` into ``predictions.jsonl`` (manifest order) and summarise.

    A line of the same item and setting in several files is kept once (the last read). Returns the summary.
    """
    out = Path(out_dir)
    shards = sorted(out.glob("predictions.shard-*.jsonl"))
    single = out / "predictions.jsonl"
    sources = ([single] if single.is_file() else []) + shards
    if not sources:
        raise InputError(f"{out}: no predictions*.jsonl to merge; run `hybridreduce run ... --out {out}` first")
    rows: dict[tuple, dict] = {}
    for path in sources:
        for r in read_predictions(path):
            rows[(r["id"], r["setting"])] = r
    ordered = sorted(rows.values(), key=lambda r: (r["index"], r["setting"]))
    tmp = single.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in ordered))
    tmp.replace(single)
    return write_summary(out, ordered)
