"""The analysis runner: score a model over a dataset once per Mamba scorer, then measure and write the run.

Shapes use the dimension letters of :mod:`hybridreduce.glossary`; a toy video's frame is ``H·P × W·P`` pixels.

:class:`~analysis.config.AnalysisConfig` names the model, the samples and the metrics. :func:`collect` loads the
model (:func:`load_model`), runs the forwards under :func:`hybridreduce.capture` with a progress bar (each batch
once per scorer: :func:`iter_batches`, :func:`score_batch`), concatenates the caches and writes the run
directory (:func:`analysis.rundir.write_run`; its files and metrics.json sections are listed there), or with
``shard=(index, count)`` one shard of it (:func:`analysis.rundir.write_shard`).

The run is written into a hidden directory beside the output directory and moved into place when complete;
Ctrl-C saves the batches already scored as a partial run (:class:`Interrupted` says where).
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hybridreduce import capture, get_adapter
from hybridreduce.cache import ScoreCache
from hybridreduce.errors import InputError, ScoreError
from hybridreduce.errors import Interrupted as CommandInterrupted
from hybridreduce.rundir import RunFolder, check_shard, display_path, holds_files, install_dir, staging_dir

from .config import AnalysisConfig, checkpoint_dir, toy_benchmark
from .relevance import NO_SCORES_KINDS
from .rundir import (
    META_KEYS,
    Collected,
    ModelFacts,
    check_out_dir,
    every_scorer_failed,
    is_run_dir,
    write_run,
    write_shard,
)
from .sections import (
    check_overlay_blocks,
    concat_caches,
    default_overlay_blocks,
    diagnostics_section,
    error_record,
)

__all__ = ["Interrupted", "LoadedModel", "collect", "iter_batches", "load_model", "score_batch"]


# Model and batches -------------------------------------------------------------------------------
@dataclass
class LoadedModel:
    """The model of a run and what the run records of it (:class:`~analysis.rundir.ModelFacts`: metrics.json's
    model section, the block kinds, and for the toy model its benchmark config and vocabulary, which covers every
    variant the checkpoint was trained on)."""

    model: nn.Module
    facts: ModelFacts


def load_model(config: AnalysisConfig) -> LoadedModel:
    """Load (or build) the configured model on ``config.device``, in eval mode."""
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"analysis device {config.device!r} is not available here (no CUDA); use device: cpu")
    if config.source == "tiny":
        from hybridreduce.tiny_models import build_tiny_model

        model = build_tiny_model(config.target, seed=config.seed)
        info: dict[str, Any] = {"source": "tiny", "arch": config.target, "prompt": dict(config.prompt)}
        data = vocab = None
    else:
        from hybridreduce.toy.demo import load_toy_spec

        path = checkpoint_dir(config)
        model, spec = load_toy_spec(path)
        data, vocab, variant = toy_benchmark(config, spec)
        fields_ = {f.name: getattr(data, f.name) for f in fields(data) if f.init}
        data_dict = {k: list(v) if isinstance(v, tuple) else v for k, v in fields_.items()}
        info = {"source": config.source, "checkpoint": str(path), "data": data_dict, "split": config.split}
        info["variant"] = variant
    model = model.to(config.device).eval()
    adapted = get_adapter(model)
    info.update(model_type=adapted.model_type, wrapper=adapted.wrapper, num_blocks=adapted.num_blocks)
    info["parameters"] = sum(p.numel() for p in model.parameters())
    return LoadedModel(model, ModelFacts(info, adapted.kinds, data, vocab))


def iter_batches(config: AnalysisConfig, loaded: LoadedModel, samples: range | None = None) -> Iterator[dict[str, Any]]:
    """Batches of ``input_ids, attention_mask, visual_mask (b, T)``, ``index (b,)``, and for the toy model
    ``pixels (b, F, 3, H·P, W·P)``, ``relevant_visual (b, V)``, ``frame_index/row_index/col_index (b, V)``.

    ``samples``: the sample indices to batch (a shard's range); all ``config.samples`` by default.
    """
    n, bs = config.samples, config.batch_size
    samples = range(n) if samples is None else samples
    starts = range(samples.start, samples.stop, bs)
    if loaded.facts.data is not None:
        from hybridreduce.toy import ToyDataset

        dataset = ToyDataset(loaded.facts.data, config.split, n, vocab=loaded.facts.vocab)
        for start in starts:
            batch = dataset.batch(range(start, min(start + bs, samples.stop)))
            batch["index"] = torch.arange(start, min(start + bs, samples.stop))
            yield batch
        return
    from hybridreduce.tiny_models import make_prompt

    vocab = int(loaded.model.config.vocab_size)
    p = config.prompt
    for start in starts:
        idx = range(start, min(start + bs, samples.stop))
        prompts = [
            make_prompt(vocab, p["prefix"], p["visual"], p["question"], seed=config.seed * 1_000_003 + i) for i in idx
        ]
        ids = torch.cat([q.input_ids for q in prompts])
        vm = torch.cat([q.visual_mask for q in prompts])
        yield {"input_ids": ids, "attention_mask": torch.ones_like(ids), "visual_mask": vm, "index": torch.tensor(idx)}


def score_batch(model: nn.Module, batch: dict, scorer: str, config: AnalysisConfig) -> ScoreCache:
    """One scoring forward of ``batch`` (logits of the last position only); the cache on the CPU."""
    device = config.device
    ids, am, vm = (batch[k].to(device) for k in ("input_ids", "attention_mask", "visual_mask"))
    kwargs: dict[str, Any] = {"attention_mask": am, "logits_to_keep": 1, "use_cache": False}
    if "pixels" in batch:
        kwargs["pixel_values"] = batch["pixels"].to(device)
    with torch.no_grad(), capture(model, vm, scorer=scorer, query=config.query, attention_mask=am) as cache:
        model(ids, **kwargs)
    return cache.cpu()


def _check_batch_cache(cache: ScoreCache, scorer: str) -> None:
    """Every block with a token mixer must have scored (MLP/MoE blocks never do)."""
    expected = [i for i, k in enumerate(cache.block_kinds) if k not in NO_SCORES_KINDS]
    missing = [i for i in expected if i not in cache.scores]
    if missing:
        kinds = [cache.block_kinds[i] for i in missing]
        raise ScoreError(
            f"blocks {missing} (kinds {kinds}) recorded no scores with scorer {scorer!r}; only MLP/MoE blocks may "
            "lack scores. Check that the adapter finds their mixers (hybridreduce verify --model ...)"
        )


# The forwards -------------------------------------------------------------------------------------
def _score_into(
    collected: Collected,
    parts: list[ScoreCache],
    loaded: LoadedModel,
    batch: dict,
    scorer: str,
    config: AnalysisConfig,
) -> None:
    """Score one batch with one scorer; on failure mark the scorer failed and record why."""
    status = collected.scorers[scorer]
    start = time.perf_counter()
    try:
        cache = score_batch(loaded.model, batch, scorer, config)
        _check_batch_cache(cache, scorer)
    except Exception as exc:  # partial results: the other scorers still run
        collected.scorers[scorer] = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
        collected.errors.append(error_record("collect", exc, scorer))
        return
    parts.append(cache)
    status["seconds"] += time.perf_counter() - start


def _run_forwards(
    config: AnalysisConfig, loaded: LoadedModel, progress: bool, samples: range | None = None
) -> Collected:
    """Every batch once per scorer; a scorer that fails is dropped (its error recorded), the others go on.

    Ctrl-C stops the forwards: the run keeps the batches that every working scorer finished and says it was
    interrupted (``run.interrupted``); :func:`collect` saves it as a partial run.
    """
    from tqdm.auto import tqdm

    samples = range(config.samples) if samples is None else samples
    run = Collected({}, {s: {"status": "ok", "seconds": 0.0} for s in config.scorers}, [], [])
    parts: dict[str, list[ScoreCache]] = {s: [] for s in config.scorers}
    bar = tqdm(total=len(samples) * len(config.scorers), desc="analyze", unit="sample", disable=not progress)
    done = 0  # batches every scorer has finished
    try:
        for batch in iter_batches(config, loaded, samples):
            run.meta.append({k: batch[k] for k in META_KEYS if k in batch})
            for scorer in config.scorers:
                bar.set_postfix_str(scorer)
                if run.scorers[scorer]["status"] == "ok":
                    _score_into(run, parts[scorer], loaded, batch, scorer, config)
                bar.update(int(batch["input_ids"].shape[0]))
            done += 1
            run.scored += int(batch["input_ids"].shape[0])
    except KeyboardInterrupt:
        run.interrupted = True
    finally:
        bar.close()
    run.meta = run.meta[:done]
    ok = [s for s in config.scorers if run.scorers[s]["status"] == "ok"]
    run.caches = {s: concat_caches(parts[s][:done]) for s in ok} if done else {}
    for s, cache in run.caches.items():
        run.scorers[s]["scorer"] = cache.scorer
    return run


# Collecting a run -------------------------------------------------------------------------------
class Interrupted(CommandInterrupted):
    """Ctrl-C stopped :func:`collect`; the message says, in one line, what was saved where.

    Attributes:
        saved: the directory of the partial run, or None when nothing was saved.
        metrics: the partial run's metrics.json content (None when nothing was saved).
    """

    def __init__(self, message: str, saved: Path | None = None, metrics: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.saved, self.metrics = saved, metrics


def collect(
    config: AnalysisConfig,
    out_dir: str | Path,
    progress: bool = True,
    shard: tuple[int, int] = (0, 1),
    overwrite: bool = True,
) -> dict[str, Any]:
    """Score the configured model and write the run directory (:mod:`analysis.rundir` lists its files).

    The run is written into a hidden directory beside ``out_dir`` and moved into place when it is complete, so
    ``out_dir`` never holds files of two runs, and an error leaves it as it was.

    Args:
        config: the run.
        out_dir: output directory (created if needed; replaced as a whole when it holds a run).
        progress: show a tqdm bar over samples × scorers.
        shard: ``(index, count)``: score only run ``index`` (from 0) of ``count`` runs of whole batches and write
            the raw scores into ``out_dir/shard-<index>-of-<count>/`` (see :func:`~analysis.rundir.write_shard`);
            :func:`~analysis.rundir.merge_shards` then writes the run directory from all ``count``. ``(0, 1)``: the
            whole run here.
        overwrite: replace a run already in ``out_dir`` (for a shard: its shard folder). False refuses a
            non-empty ``out_dir`` (the command line's default; ``--overwrite`` sets it).

    Returns:
        The metrics dict written to ``metrics.json`` (for a shard: what ``shard.json`` holds).

    Raises:
        InputError: a bad config, model, shard, overlay block or output directory
            (:func:`~analysis.rundir.check_out_dir`), before any forward runs.
        ScoreError: every scorer failed (metrics.json with the errors is written first).
        Interrupted: Ctrl-C. The batches every scorer finished are written as a partial run (``"partial": true``
            in metrics.json) into ``out_dir``, or, when ``out_dir`` held a run, into ``<out_dir>.partial`` beside it
            (``out_dir`` is left as it was). A shard is kept only whole: an interrupted shard writes nothing.
    """
    if not isinstance(config, AnalysisConfig):
        raise InputError(f"collect needs an AnalysisConfig, got {type(config).__name__}")
    i, n = check_shard(tuple(shard) if isinstance(shard, list) else shard)
    batches = math.ceil(config.samples / config.batch_size)
    if n > batches:
        raise InputError(
            f"{n} shards for {batches} batches of {config.batch_size}: every shard needs a batch; use fewer shards "
            "or a smaller batch_size"
        )
    target = check_out_dir(out_dir, shard, overwrite)
    # The lock first (a second writer into the same run, or the same shard, is refused before any work); a shard's
    # lock is its own, in the run directory, so the shards of one split write side by side.
    with RunFolder(target if n == 1 else target.parent, shard) as folder:
        loaded = load_model(config)
        kinds = loaded.facts.block_kinds
        check_overlay_blocks(config.overlay_blocks or default_overlay_blocks(kinds), kinds)
        # Shards are runs of whole batches, so every sample is scored in the same batch as in one process and the
        # merged run is bit-identical to it.
        bs = config.batch_size
        samples = range(i * batches // n * bs, min((i + 1) * batches // n * bs, config.samples))
        run = _run_forwards(config, loaded, progress, samples)
        if run.interrupted and n > 1:
            raise Interrupted(
                f"interrupted after {run.scored} of {len(samples)} samples of shard {i}/{n}; a shard is kept only "
                f"whole, so nothing was written ({display_path(target)} is as it was): run the shard again"
            )
        if run.interrupted and not run.scored:
            raise Interrupted(
                f"interrupted before the first batch was scored; nothing written ({display_path(target)} is as it was)"
            )
        if config.diagnostics is not None and n == 1 and not run.interrupted:
            # Forwards of its own (one video under several questions); a shard's merge loads no model, so sharded
            # runs leave it out.
            try:
                run.diagnostics = diagnostics_section(loaded.model, config, loaded.facts.data, loaded.facts.vocab)
            except Exception as exc:
                run.errors.append(error_record("diagnostics", exc))
        place = target
        if run.interrupted and holds_files(target):  # keep the run that is there; the partial one goes beside it
            place = target.with_name(f"{target.name}.partial")
            if holds_files(place) and not is_run_dir(place):
                place = target.with_name(f"{target.name}.partial-{time.strftime('%Y%m%d-%H%M%S')}")
        staging = staging_dir(target)
        try:
            if n > 1:
                result = write_shard(config, loaded.facts, run, staging, shard, samples)
            else:
                result = write_run(config, loaded.facts, run, staging)
            install_dir(staging, place, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # gone after a successful install; else what was written
        if run.interrupted:
            kept = f"; {display_path(target)} is as it was" if place != target else ""
            raise Interrupted(
                f"interrupted after {run.scored} of {config.samples} samples: the partial run is in "
                f"{display_path(place)} (metrics.json says partial){kept}; run again to score every sample",
                saved=place,
                metrics=result,
            )
        if n == 1:
            every_scorer_failed(run, place)
        return result
