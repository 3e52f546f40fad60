"""The run directory of an analysis: the files written into it, its shards, and reading it back.

Shapes use the dimension letters of :mod:`hybridreduce.glossary`: ``N`` counts the samples of the whole run
(concatenated over batches), ``L`` its scored blocks (attention and Mamba blocks; MLP/MoE blocks do not score).

:func:`write_run` writes a run (:class:`Collected`, what the forwards produced, and :class:`ModelFacts`, what
the run records of its model) into a directory::

    scores_<scorer>.safetensors   ScoreCache.save of the (N, V) scores and per-mixer parts of every scored block
    ground_truth.safetensors      relevant_visual (N, V) bool, sample_index (N,), frame/row/col_index (V,)  [toy]
    metrics.json                  every section below
    sparsity.csv                  one row per (scorer, block): k@p, entropy, Gini, top-k mass (mean/std/min/max)
    relevance.csv                 one row per (block, series): recall@k and relevant mass, random baselines  [toy]
    stability_<metric>.csv        long format (scorer, block_i, kind_i, block_j, kind_j, value) for spearman,
                                  kendall, iou_<frac>, survival_<frac>

metrics.json sections: ``schema``, ``name``, ``partial`` (true: Ctrl-C stopped the run, and every section
covers only the samples scored), ``samples_planned`` (the config's samples), ``model`` (source, checkpoint or
arch, model_type, num_blocks, n_visual, samples scored; for the toy model its ``data`` config, ``split`` and
``variant``), ``config``
(:meth:`AnalysisConfig.to_dict`), ``block_kinds``, ``scored_blocks``, ``scorers`` (per scorer: status,
file, seconds, settings, error), ``sparsity`` and ``stability`` (scorer → report dict), ``relevance``
(when ground truth exists), ``schedule`` (per-block keep fraction and visual tokens kept), ``overlay``
and ``examples`` (toy only: a few samples' per-block scores with their frame/row/col indices), ``diagnostics``
(with the config's ``diagnostics`` setting: share bias, query specificity and Mamba step correlation,
:mod:`analysis.diagnostics`), ``errors``
(``{"stage", "scorer", "type", "message"}`` of everything that failed; the rest is still written) and
``files``.

Shards: ``collect(..., shard=(index, count))`` writes ``shard-<index>-of-<count>/`` (:func:`write_shard`): the
raw scores, ``meta.safetensors`` (the batches' ground truth) and ``shard.json`` (the config, the scorers' status
and errors, and the model's metadata: metrics.json's ``model`` section and the block kinds). :func:`merge_shards`
writes the run directory from all ``count`` without loading the model: it reads the shards' files, and for a toy
run the benchmark of the examples from the checkpoint's ``train_config.yaml``.

Reading a run back: :func:`read_metrics`, :func:`load_scores`, :func:`load_run` (all checked);
:func:`check_out_dir` checks a directory before a run is written into it.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hybridreduce.cache import ScoreCache
from hybridreduce.errors import HybridReduceError, InputError, ScoreError
from hybridreduce.rundir import (  # noqa: F401  (display_path, holds_files: used by analysis.run)
    RunFolder,
    display_path,
    find_shards,
    holds_files,
    missing_shards,
    refuse_mixed_split,
    shard_name,
    shards_being_written,
)

from .config import AnalysisConfig, toy_benchmark
from .relevance import NO_SCORES_KINDS, check_relevant
from .sections import (
    Analysis,
    analyze_caches,
    check_overlay_blocks,
    concat_caches,
    default_overlay_blocks,
    error_record,
    examples_section,
    schedule_section,
)
from .stability import StabilityReport

SCHEMA = 1
#: Per-batch ground truth kept next to the scores (toy model only).
META_KEYS = ("relevant_visual", "index", "frame_index", "row_index", "col_index")

__all__ = [
    "META_KEYS",
    "SCHEMA",
    "Collected",
    "ModelFacts",
    "check_out_dir",
    "is_sharded_run",
    "load_run",
    "load_scores",
    "merge_shards",
    "read_metrics",
    "shard_dir",
    "write_run",
    "write_shard",
]


# What a run directory is written from ------------------------------------------------------------
@dataclass
class Collected:
    """What the forwards produced: scorer → concatenated cache, per-scorer status, batch ground truth, errors."""

    caches: dict[str, ScoreCache]
    scorers: dict[str, dict[str, Any]]
    meta: list[dict[str, torch.Tensor]]
    errors: list[dict[str, Any]]
    scored: int = 0  # samples in the caches
    interrupted: bool = False  # Ctrl-C stopped the forwards; the caches hold the batches every scorer finished
    diagnostics: dict[str, Any] | None = None  # the optional section (analysis.sections.diagnostics_section)


@dataclass
class ModelFacts:
    """What a run records of its model, and all that writing it needs of the model.

    :func:`analysis.run.load_model` takes them from the loaded model; :func:`merge_shards` from the shards'
    ``shard.json`` (and :func:`analysis.config.toy_benchmark`), so that a merge loads no model.

    Attributes:
        info: metrics.json's ``model`` section before the samples are counted (source, checkpoint or arch,
            model_type, wrapper, num_blocks, parameters; toy: data, split, variant; tiny: prompt).
        block_kinds: kind of every block (``attn``, ``ssm``, ``mlp``, ...).
        data, vocab: toy only: the benchmark config (``hybridreduce.toy.ToyConfig``) and the vocabulary of the
            samples (the examples section draws them again); None for a tiny model.
    """

    info: dict[str, Any]
    block_kinds: list[str]
    data: Any | None = None
    vocab: Any | None = None


# Writing a run -------------------------------------------------------------------------------------
def every_scorer_failed(run: Collected, out: Path) -> None:
    """Raise ScoreError when no scorer produced a cache (the run directory, with the errors, is written first)."""
    if not run.caches:
        detail = "; ".join(f"{e['scorer']}: {e['type']}: {e['message']}" for e in run.errors)
        raise ScoreError(f"every scorer failed ({detail}); the errors are in {out / 'metrics.json'}")


def write_run(config: AnalysisConfig, facts: ModelFacts, run: Collected, out: Path) -> dict[str, Any]:
    """Measure the collected caches and write the run directory (see the module docstring) into ``out``; returns
    metrics.json's content.

    An interrupted run (``run.interrupted``) is measured on the samples it scored and marked ``"partial": true``.
    """
    kinds = list(facts.block_kinds)
    overlay = check_overlay_blocks(config.overlay_blocks or default_overlay_blocks(kinds), kinds)
    samples = run.scored if run.interrupted else config.samples
    metrics: dict[str, Any] = {
        "schema": SCHEMA,
        "name": config.name,
        "partial": run.interrupted,
        "samples_planned": config.samples,
        "model": facts.info | {"samples": samples},
        "config": config.to_dict(),
        "block_kinds": kinds,
        "scored_blocks": [i for i, k in enumerate(kinds) if k not in NO_SCORES_KINDS],
        "scorers": run.scorers,
        "errors": list(run.errors),
    }
    files = []
    for name, cache in run.caches.items():
        files.append(cache.save(out / f"scores_{name}.safetensors"))
        run.scorers[name]["file"] = files[-1].name
    gt = write_ground_truth(run.meta, out)
    files += [gt] if gt is not None else []
    relevant = None
    if gt is not None:
        relevant = torch.cat([m["relevant_visual"] for m in run.meta])
    n_visual = next(iter(run.caches.values())).n_visual if run.caches else None
    metrics["model"]["n_visual"] = n_visual
    plan = None
    if config.schedule is not None and run.caches:
        try:
            metrics["schedule"], plan = schedule_section(config, len(kinds), n_visual)
        except HybridReduceError as exc:
            metrics["errors"].append(error_record("schedule", exc))
    analysis = analyze_caches(run.caches, config, relevant, None if plan is None else plan.keep_fraction)
    metrics["errors"] += analysis.errors
    metrics["sparsity"] = {n: r.to_dict() for n, r in analysis.sparsity.items()}
    metrics["stability"] = {n: r.to_dict() for n, r in analysis.stability.items()}
    if analysis.relevance is not None:
        metrics["relevance"] = analysis.relevance.to_dict()
    if facts.data is not None and run.caches and config.examples:
        metrics["overlay"] = {"blocks": overlay, "keep": config.overlay_keep}
        try:
            metrics["examples"] = examples_section(run.caches, facts.data, facts.vocab, config, samples)
        except Exception as exc:
            metrics["errors"].append(error_record("examples", exc))
    if run.diagnostics is not None:
        metrics["diagnostics"] = run.diagnostics
    files += write_tables(analysis, out)
    metrics["files"] = sorted(p.name for p in files) + ["metrics.json"]
    (out / "metrics.json").write_text(json.dumps(_json_clean(metrics), indent=1, allow_nan=False) + "\n")
    return metrics


# Tables and ground truth ----------------------------------------------------------------------------
def _json_clean(obj: Any) -> Any:
    """NaN/inf → None, tuples → lists, tensors → lists: strict JSON."""
    if isinstance(obj, dict):
        return {str(k): _json_clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_clean(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return _json_clean(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _stability_rows(reports: dict[str, StabilityReport]) -> dict[str, list[dict[str, Any]]]:
    """File stem (``spearman``, ``kendall``, ``iou_0.1``, ``survival_0.1``) → long-format rows."""
    tables: dict[str, list[dict[str, Any]]] = {}
    for scorer, rep in reports.items():
        mats = {"spearman": rep.spearman}
        if rep.kendall is not None:
            mats["kendall"] = rep.kendall
        mats |= {f"iou_{f:g}": m for f, m in rep.iou.items()} | {f"survival_{f:g}": m for f, m in rep.survival.items()}
        for stem, mat in mats.items():
            rows = tables.setdefault(stem, [])
            for i, (bi, ki) in enumerate(zip(rep.blocks, rep.kinds, strict=True)):
                for j, (bj, kj) in enumerate(zip(rep.blocks, rep.kinds, strict=True)):
                    value = mat[i, j].item()
                    value = None if math.isnan(value) else value
                    rows.append(
                        {"scorer": scorer, "block_i": bi, "kind_i": ki, "block_j": bj, "kind_j": kj, "value": value}
                    )
    return tables


def write_tables(analysis: Analysis, out: Path) -> list[Path]:
    """``sparsity.csv``, ``relevance.csv`` and ``stability_<metric>.csv`` of what was computed."""
    paths = []
    rows = [{"scorer": name, **row} for name, rep in analysis.sparsity.items() for row in rep.to_rows()]
    if rows:
        paths.append(_write_csv(out / "sparsity.csv", rows))
    if analysis.relevance is not None:
        paths.append(_write_csv(out / "relevance.csv", analysis.relevance.to_rows()))
    for stem, rows in _stability_rows(analysis.stability).items():
        paths.append(_write_csv(out / f"stability_{stem}.csv", rows))
    return paths


def write_ground_truth(batches_meta: list[dict[str, torch.Tensor]], out: Path) -> Path | None:
    """``ground_truth.safetensors`` of the toy batches (None when the model has no ground truth)."""
    from safetensors.torch import save_file

    if not batches_meta or "relevant_visual" not in batches_meta[0]:
        return None
    tensors = {
        "relevant_visual": torch.cat([m["relevant_visual"] for m in batches_meta]).contiguous(),
        "sample_index": torch.cat([m["index"] for m in batches_meta]).contiguous(),
    }
    for key in ("frame_index", "row_index", "col_index"):
        tensors[key] = batches_meta[0][key][0].contiguous()
    path = out / "ground_truth.safetensors"
    save_file(tensors, str(path))
    return path


# Shards -------------------------------------------------------------------------------------------
#: The folder of one shard (:func:`hybridreduce.rundir.find_shards`).
SHARD_DIRS = "{shard}"


def shard_dir(out: Path, shard: tuple[int, int]) -> Path:
    return Path(out) / SHARD_DIRS.format(shard=shard_name(shard))


def write_shard(
    config: AnalysisConfig, facts: ModelFacts, run: Collected, folder: Path, shard: tuple[int, int], samples: range
) -> dict:
    """The raw output of one shard into ``folder`` (:func:`analysis.run.collect` moves it to ``shard_dir(out,
    shard)``): ``scores_<scorer>.safetensors``, ``meta.safetensors`` and ``shard.json`` (with the model's metadata
    that :func:`merge_shards` writes instead of loading the model: ``model`` and ``block_kinds``)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    for name, cache in run.caches.items():
        cache.save(folder / f"scores_{name}.safetensors")
    if run.meta:
        keys = [k for k in META_KEYS if k in run.meta[0]]
        save_file({k: torch.cat([m[k] for m in run.meta]).contiguous() for k in keys}, str(folder / "meta.safetensors"))
    info = {
        "shard": list(shard),
        "samples": [samples.start, samples.stop],
        "config": config.to_dict(),
        "model": facts.info,
        "block_kinds": facts.block_kinds,
        "scorers": run.scorers,
        "errors": run.errors,
    }
    (folder / "shard.json").write_text(json.dumps(_json_clean(info), indent=1) + "\n")
    return info


def _shards(out_dir: str | Path) -> dict[tuple[int, int], Path]:
    """The shard folders of ``out_dir`` that hold a ``shard.json``, by ``(index, count)``."""
    return {key: path for key, path in find_shards(out_dir, SHARD_DIRS).items() if (path / "shard.json").is_file()}


def is_sharded_run(out_dir: str | Path) -> bool:
    """Whether ``out_dir`` holds shards written by ``collect(..., shard=(index, count))``."""
    return bool(_shards(out_dir))


def merge_shards(out_dir: str | Path) -> dict[str, Any]:
    """Write the run directory from the shards in ``out_dir`` (all ``count`` must be there, of one config).

    The caches and ground truth are concatenated in sample order, so the result is the one
    :func:`analysis.run.collect` writes in one process (the scorers' ``seconds`` are summed over the shards).
    No model is loaded: what the run records of it comes from the shards' ``shard.json`` (:class:`ModelFacts`),
    and for a toy run the benchmark of the examples from the checkpoint's ``train_config.yaml``.

    Raises:
        InputError: no shards, missing ones, shards of different configs or models, or shards written before
            shard.json recorded the model (score them again).
    """
    from safetensors.torch import load_file

    out = Path(out_dir)
    shards = _shards(out)
    if not shards:
        raise InputError(f"{out}: no shard-i-of-N/shard.json; run `hybridreduce analyze ... --shard i/N` first")
    busy = shards_being_written(out)
    if busy:
        raise InputError(f"{out}: {'; '.join(busy)} is still being written; merge when every shard has finished")
    splits, missing = missing_shards(shards)
    if len(splits) > 1:
        raise InputError(
            f"{out}: shards of {len(splits)} different splits ({', '.join(f'of {n}' for n in splits)}); keep the "
            "shard folders of one split (move the others away) and merge again"
        )
    n = splits[0]
    if missing:
        raise InputError(f"{out}: shards {missing} of {n} are missing; run them (hybridreduce analyze ... --shard "
                         f"I/{n} --out {out}) and merge again")  # fmt: skip
    infos = [_read_shard_info(shards[(i, n)]) for i in range(n)]
    if any(info["config"] != infos[0]["config"] for info in infos):
        raise InputError(f"{out}: the shards were run with different configs; rerun them with one config")
    stale = [info["shard"][0] for info in infos if not {"model", "block_kinds"} <= set(info)]
    if stale:
        raise InputError(
            f"{out}: shards {stale} of {n} were written by an older hybridreduce: their shard.json lacks the model's "
            "metadata (model, block_kinds) that merge reads instead of loading the model; score them again with "
            f"`hybridreduce analyze --config FILE --out {out} --shard i/{n} --overwrite`"
        )
    if any((info["model"], info["block_kinds"]) != (infos[0]["model"], infos[0]["block_kinds"]) for info in infos):
        raise InputError(f"{out}: the shards were scored with different models; rerun them with one model")
    config = AnalysisConfig.from_dict(infos[0]["config"])
    scorers = {s: {"status": "ok", "seconds": 0.0} for s in config.scorers}
    errors: list[dict[str, Any]] = []
    for info in infos:
        errors += info["errors"]
        for s, status in info["scorers"].items():
            if status["status"] != "ok":
                scorers[s] = status
            elif scorers[s]["status"] == "ok":
                scorers[s]["seconds"] += status["seconds"]
    folders = [shard_dir(out, (i, n)) for i in range(n)]
    caches = {
        s: concat_caches([ScoreCache.load(f / f"scores_{s}.safetensors") for f in folders])
        for s in config.scorers
        if scorers[s]["status"] == "ok"
    }
    for s, cache in caches.items():
        scorers[s]["scorer"] = cache.scorer
    meta = [load_file(str(f / "meta.safetensors")) for f in folders if (f / "meta.safetensors").is_file()]
    run = Collected(caches, scorers, meta, errors)
    facts = ModelFacts(infos[0]["model"], infos[0]["block_kinds"])
    if config.source != "tiny":
        facts.data, facts.vocab, _ = toy_benchmark(config)
    with RunFolder(out) as folder:
        metrics: dict[str, Any] = {}

        def write(staging: Path) -> list[Path]:
            metrics.update(write_run(config, facts, run, staging))
            return [staging / name for name in metrics["files"]]

        previous = _previous_merge(out)
        folder.stage(write)  # every file complete before it replaces the previous merge's
        for name in sorted(set(previous) - set(metrics["files"])):
            (out / name).unlink()  # a file of the previous merge this one did not write (a failed scorer's)
    every_scorer_failed(run, out)
    return metrics


def _read_shard_info(folder: Path) -> dict[str, Any]:
    """A shard's ``shard.json``, checked to be a JSON object with its ``shard``, ``config``, ``scorers`` and
    ``errors``."""
    path = folder / "shard.json"
    try:
        info = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path} is not valid JSON ({exc}); score that shard again with --overwrite") from None
    if not isinstance(info, dict) or not {"shard", "config", "scorers", "errors"} <= set(info):
        raise InputError(f"{path} is not a shard record (shard, config, scorers, errors); score that shard again")
    return info


def _previous_merge(out: Path) -> list[str]:
    """The files an earlier merge wrote into ``out`` (its metrics.json lists them); the shard folders are not."""
    try:
        files = json.loads((out / "metrics.json").read_text()).get("files", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [n for n in files if isinstance(n, str) and "/" not in n and (out / n).is_file()]


# Output directories -------------------------------------------------------------------------------
def is_run_dir(path: Path) -> bool:
    """Whether ``path`` holds an analysis run (metrics.json) or the shards of one."""
    return (path / "metrics.json").is_file() or is_sharded_run(path)


def _describe_run(path: Path) -> str:
    """``"an analysis run of 256 samples"``, ``"a partial analysis run (64 of 256 samples)"``, ... of ``path``."""
    try:
        metrics = json.loads((path / "metrics.json").read_text())
        samples = metrics["model"]["samples"]
    except (OSError, ValueError, KeyError, TypeError):
        return "an analysis run" if is_run_dir(path) else "files"
    if metrics.get("partial"):
        return f"a partial analysis run ({samples} of {metrics.get('samples_planned')} samples)"
    return f"an analysis run of {samples} samples"


def check_out_dir(out_dir: str | Path, shard: tuple[int, int] = (0, 1), overwrite: bool = True) -> Path:
    """The directory :func:`analysis.run.collect` will write (``out_dir``, or its ``shard-<index>-of-<count>``
    folder), checked up front.

    Refused: a file, a path under a file, a folder that cannot be written; a non-empty ``out_dir`` that is not
    an analysis run (a whole run replaces its directory, so a folder of other files is never replaced); and with
    ``overwrite=False``, a directory that already holds a run (for a shard: its own shard folder, or a run made
    without shards); for a shard, shards of another split (:func:`hybridreduce.rundir.refuse_mixed_split`, the rule
    ``run`` shares).
    """
    from hybridreduce import validate

    out = Path(os.path.abspath(validate.writable_dir(out_dir, "out (--out)")))  # absolute: "." has no name to move
    shown = repr(display_path(out))
    if shard[1] > 1:
        target = shard_dir(out, shard)
        whole = "metrics.json" if (out / "metrics.json").is_file() and not is_sharded_run(out) else None
        refuse_mixed_split(out, shard, _shards(out), whole, "score", overwrite)
        if not overwrite and holds_files(target):
            raise InputError(
                f"shard {shard[0]}/{shard[1]} is already in {display_path(target)!r}; pass --overwrite to score it "
                "again, or give a new directory"
            )
        return target
    if holds_files(out) and not is_run_dir(out):
        raise InputError(
            f"out (--out) {shown} holds files that are not an analysis run (no metrics.json); a run replaces "
            "its whole directory, so give a new or empty one"
        )
    if holds_files(out) and not overwrite:
        raise InputError(
            f"out (--out) {shown} already holds {_describe_run(out)}; pass --overwrite to replace it once the "
            "new run is complete, or give a new directory"
        )
    return out


# Reading a run back --------------------------------------------------------------------------------
def read_metrics(run_dir: str | Path) -> dict[str, Any]:
    """The metrics.json of an analysis run directory."""
    run = Path(run_dir)
    path = run / "metrics.json"
    if not path.is_file():
        what = "does not exist" if not run.exists() else "has no metrics.json"
        raise InputError(
            f"{run} {what}: it is not an analysis run directory; make one with "
            "`hybridreduce analyze --config configs/analysis/toy.yaml --out DIR`"
        )
    try:
        metrics = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{path} is not valid JSON ({exc}); re-run `hybridreduce analyze`") from None
    if not isinstance(metrics, dict) or "block_kinds" not in metrics:
        raise InputError(f"{path} is not an analysis metrics file (no block_kinds); re-run `hybridreduce analyze`")
    return metrics


def load_scores(path: str | Path, batch: int | None = None, n_visual: int | None = None) -> ScoreCache:
    """Read a ``scores_<scorer>.safetensors`` file and check it.

    Args:
        path: the file.
        batch, n_visual: the ``(N, V)`` every block must have (e.g. from metrics.json), or None.

    Raises:
        InputError: unreadable, empty (no scored block) or mismatched (blocks of different shapes, or not
            the expected ``(N, V)``).
    """
    cache = ScoreCache.load(path)
    if not cache.layers:
        raise InputError(
            f"score file {path} holds no scored blocks (block kinds {cache.block_kinds}); it is empty or was written "
            "from a model without attention/Mamba blocks — re-run `hybridreduce analyze`"
        )
    shapes = {i: tuple(cache.scores[i].shape) for i in cache.layers}
    if len(set(shapes.values())) != 1 or any(len(s) != 2 for s in shapes.values()):
        raise InputError(f"score file {path} has blocks of mismatched shapes {shapes}; every block must be (batch, V)")
    b, V = next(iter(shapes.values()))
    if cache.visual_positions is not None and tuple(cache.visual_positions.shape) != (b, V):
        raise InputError(
            f"score file {path} has scores of shape {(b, V)} but visual positions of shape "
            f"{tuple(cache.visual_positions.shape)}; the file is corrupt — re-run `hybridreduce analyze`"
        )
    if (batch is not None and b != batch) or (n_visual is not None and V != n_visual):
        raise InputError(
            f"score file {path} has {b} samples x {V} visual tokens but the run expects {batch} x {n_visual}; "
            "the file belongs to another run — re-run `hybridreduce analyze` into a fresh directory"
        )
    return cache


def load_run(run_dir: str | Path) -> tuple[dict[str, Any], dict[str, ScoreCache], torch.Tensor | None]:
    """``(metrics, scorer → ScoreCache, relevant (N, V) bool or None)`` of a run directory, all checked."""
    from safetensors.torch import load_file

    run = Path(run_dir)
    metrics = read_metrics(run)
    b, V = metrics["model"].get("samples"), metrics["model"].get("n_visual")
    caches = {
        name: load_scores(run / info["file"], b, V)
        for name, info in metrics.get("scorers", {}).items()
        if info.get("status") == "ok"
    }
    relevant = None
    if (run / "ground_truth.safetensors").is_file():
        relevant = check_relevant(load_file(str(run / "ground_truth.safetensors"))["relevant_visual"], (b, V))
    return metrics, caches, relevant
