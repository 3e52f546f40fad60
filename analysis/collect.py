"""The analysis runner: score a model over a dataset once per Mamba scorer, then measure and write.

Glossary of dimension letters:
    b   samples of the whole run (concatenated over batches)
    V   visual tokens per sample
    L   scored blocks (attention and Mamba blocks; MLP/MoE blocks do not score)
    T, R, C   frames, grid rows and grid columns of the toy videos (``V = T·R·C``)

:class:`AnalysisConfig` (``configs/analysis/<name>.yaml``) names the model, the samples and the
metrics. :func:`collect` runs the forwards under :func:`hybridreduce.capture` with a progress bar (each
batch once per scorer), concatenates the caches and writes into the output directory::

    scores_<scorer>.safetensors   ScoreCache.save of the (b, V) scores and per-mixer parts of every scored block
    ground_truth.safetensors      relevant_visual (b, V) bool, sample_index (b,), frame/row/col_index (V,)  [toy]
    metrics.json                  every section below
    sparsity.csv                  one row per (scorer, block): k@p, entropy, Gini, top-k mass (mean/std/min/max)
    relevance.csv                 one row per (block, series): recall@k and relevant mass, random baselines  [toy]
    stability_<metric>.csv        long format (scorer, block_i, kind_i, block_j, kind_j, value) for spearman,
                                  kendall, iou_<frac>, survival_<frac>

The run is written into a hidden directory beside the output directory and moved into place when complete
(:func:`collect`); Ctrl-C saves the batches already scored as a partial run.

metrics.json sections: ``schema``, ``name``, ``partial`` (true: Ctrl-C stopped the run, and every section
covers only the samples scored), ``samples_planned`` (the config's samples), ``model`` (source, checkpoint or
arch, model_type, num_blocks, n_visual, samples scored; for the toy model its ``data`` config, ``split`` and
``variant``), ``config``
(:meth:`AnalysisConfig.to_dict`), ``block_kinds``, ``scored_blocks``, ``scorers`` (per scorer: status,
file, seconds, settings, error), ``sparsity`` and ``stability`` (scorer → report dict), ``relevance``
(when ground truth exists), ``schedule`` (per-block keep fraction and visual tokens kept), ``overlay``
and ``examples`` (toy only: a few samples' per-block scores with their frame/row/col indices), and
``errors`` (``{"stage", "scorer", "type", "message"}`` of everything that failed; the rest is still
written).
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hybridreduce import Plan, Schedule, capture, get_adapter
from hybridreduce.cache import ScoreCache
from hybridreduce.errors import HybridReduceError, InputError, ScoreError
from hybridreduce.scoring.config import MAMBA_MODES
from hybridreduce.yamlio import located, read_yaml_section

from .relevance import RelevanceReport, check_relevant, relevance_report
from .sparsity import SparsityReport, check_fraction, layer_sparsity
from .stability import KeepRatios, StabilityReport, layer_stability

SCHEMA = 1
NO_SCORES_KINDS = ("mlp", "moe")
#: Per-batch ground truth kept next to the scores (toy model only).
META_KEYS = ("relevant_visual", "index", "frame_index", "row_index", "col_index")
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "analysis"

__all__ = [
    "AnalysisConfig",
    "Analysis",
    "Interrupted",
    "analyze_caches",
    "collect",
    "concat_caches",
    "load_run",
    "load_scores",
    "read_metrics",
]


# Configuration --------------------------------------------------------------------------------------
def _fractions(value: Any, name: str) -> tuple[float, ...]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
        raise InputError(f"analysis {name} must be a non-empty list of fractions in (0, 1], got {value!r}")
    for f in value:
        check_fraction(f, f"each entry of {name}")
    return tuple(float(f) for f in value)


def _int_at_least(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"analysis {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _text(name: str, allowed: tuple[str, ...] | None = None):
    """The check of a setting that is a non-empty string (one of ``allowed`` when given)."""

    def check(value: Any) -> str:
        if not isinstance(value, str) or not value or (allowed is not None and value not in allowed):
            want = f"one of {', '.join(allowed)}" if allowed else "a non-empty string"
            raise InputError(f"analysis {name} must be {want}, got {value!r}")
        return value

    return check


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise InputError(f"analysis kendall must be true or false, got {value!r}")
    return value


def _fraction(name: str, optional: bool = False):
    def check(value: Any) -> float | None:
        if value is None and optional:
            return None
        check_fraction(value, f"analysis {name}")
        return float(value)

    return check


def _scorers(value: Any) -> tuple[str, ...]:
    scorers = [value] if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else None
    if not scorers or any(s not in MAMBA_MODES for s in scorers) or len(set(scorers)) != len(scorers):
        raise InputError(f"analysis scorers must list distinct modes from {MAMBA_MODES}, got {value!r}")
    return tuple(scorers)


def _schedule(value: Any) -> str | dict | None:
    """A schedule the run can load (checked now, so that a bad one fails before the model loads); kept as given."""
    if value is not None:
        Schedule.load(value)
    return value


def _overlay_blocks(value: Any) -> tuple[int, ...] | None:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)):
        raise InputError(f"analysis overlay_blocks must be a list of block indices (or null), got {value!r}")
    return tuple(_int_at_least(b, "overlay_blocks entries", 0) for b in value)


def _prompt(prompt: Any) -> dict[str, int]:
    known = {"prefix": 4, "visual": 64, "question": 8}
    if not isinstance(prompt, dict) or set(prompt) - set(known):
        raise InputError(f"analysis prompt must be a mapping with keys {sorted(known)}, got {prompt!r}")
    out = known | prompt
    minimum = {"prefix": 0, "visual": 1, "question": 1}
    return {k: _int_at_least(v, f"prompt.{k}", minimum[k]) for k, v in out.items()}


#: Setting -> its check (the value in its plain type, or an InputError); ``model`` and ``variant`` are checked apart.
_SETTING_CHECKS = {
    "name": _text("name"),
    "samples": lambda v: _int_at_least(v, "samples"),
    "batch_size": lambda v: _int_at_least(v, "batch_size"),
    "split": _text("split", ("train", "val", "test")),
    "scorers": _scorers,
    "topk": lambda v: _fractions(v, "topk"),
    "mass_p": lambda v: _fractions(v, "mass_p"),
    "kendall": _flag,
    "schedule": _schedule,
    "keep": _fraction("keep", optional=True),
    "query": _text("query", ("after_visual", "last", "all_text")),
    "examples": lambda v: _int_at_least(v, "examples", 0),
    "overlay_blocks": _overlay_blocks,
    "overlay_keep": _fraction("overlay_keep"),
    "prompt": _prompt,
    "seed": lambda v: _int_at_least(v, "seed", 0),
    "device": _text("device"),
}


@contextmanager
def _setting(name: str) -> Iterator[None]:
    """Inside: an InputError is about the setting ``name`` (its ``field``: from_yaml adds the file and line)."""
    try:
        yield
    except InputError as exc:
        exc.field = name
        raise


def _parse_model(value: Any) -> tuple[str, str]:
    """``(source, target)``: ``("toy", "")``, ``("checkpoint", DIR)`` or ``("tiny", ARCH)``."""
    from hybridreduce.tiny import TINY_CONFIGS

    usage = "model must be `toy`, `{checkpoint: DIR}` (a train-toy output directory) or `{tiny: ARCH}`"
    if value == "toy":
        return "toy", ""
    if not isinstance(value, dict) or len(value) != 1:
        raise InputError(f"{usage}; got {value!r}")
    ((key, target),) = value.items()
    if key == "checkpoint" and isinstance(target, str) and target:
        return "checkpoint", target
    if key == "tiny":
        if not isinstance(target, str) or target not in TINY_CONFIGS:
            raise InputError(f"no tiny architecture {target!r}; choose from {', '.join(TINY_CONFIGS)}")
        return "tiny", str(target)
    raise InputError(f"{usage}; got {value!r}")


@dataclass
class AnalysisConfig:
    """One analysis run (fields as in ``configs/analysis/*.yaml``).

    Attributes:
        name: run name (default: the YAML file's stem).
        model: ``"toy"`` (the shipped checkpoint), ``{"checkpoint": DIR}`` (a train-toy output directory,
            relative to the working directory) or ``{"tiny": ARCH}`` (a tiny random model of
            :mod:`hybridreduce.tiny`, scored on random prompts; no ground truth).
        samples: number of samples (toy: the first ``samples`` items of ``split``; tiny: random prompts).
        batch_size: samples per forward.
        split: toy dataset split (``train``, ``val`` or ``test``).
        variant: toy only: the benchmark variant (``static``, ``clutter``) of a checkpoint trained on several;
            None: the checkpoint's first variant.
        scorers: Mamba scorer modes to collect with, each once (``decay_free``, ``exact``).
        topk: token shares for relevance recall@k, top-k mass, and stability IoU / survival recall.
        mass_p: mass shares ``p`` of the sparsity metric ``k@p``.
        kendall: compute Kendall τ-b (``O(L² b V²)``; switch off for long videos).
        schedule: schedule method name (its preset), YAML path or mapping whose per-block keep
            ratios drive survival recall and the schedule plot; None for neither.
        keep: override of the schedule's keep target (None: the schedule's own).
        query: query rows of the scorers (``after_visual``, ``last``, ``all_text``).
        examples: toy samples whose per-block scores go into metrics.json for the overlay plots.
        overlay_blocks: blocks drawn in the overlays (default: the last attention and the last Mamba block).
        overlay_keep: share of tokens highlighted as kept in the overlays.
        prompt: tiny models only: ``{"prefix", "visual", "question"}`` token counts of the random prompts.
        seed: tiny models' weights and prompts (the toy samples are fixed by the checkpoint's data config).
        device: torch device of the forwards.
    Derived: ``source`` and ``target`` (see :func:`_parse_model`).
    """

    name: str = "analysis"
    model: str | dict = "toy"
    samples: int = 256
    batch_size: int = 32
    split: str = "test"
    variant: str | None = None
    scorers: tuple[str, ...] = ("decay_free", "exact")
    topk: tuple[float, ...] = (0.05, 0.1, 0.25)
    mass_p: tuple[float, ...] = (0.5, 0.8, 0.9)
    kendall: bool = True
    schedule: str | dict | None = "progressive"
    keep: float | None = 0.25
    query: str = "after_visual"
    examples: int = 4
    overlay_blocks: tuple[int, ...] | None = None
    overlay_keep: float = 0.1
    prompt: dict = field(default_factory=lambda: {"prefix": 4, "visual": 64, "question": 8})
    seed: int = 0
    device: str = "cpu"
    source: str = field(init=False)
    target: str = field(init=False)

    def __post_init__(self) -> None:
        # Each setting on its own; an error names it (its field), so that from_yaml can add the file and line.
        with _setting("model"):
            self.source, self.target = _parse_model(self.model)
        for name, check in _SETTING_CHECKS.items():
            with _setting(name):
                setattr(self, name, check(getattr(self, name)))
        with _setting("variant"):
            self._check_variant()

    def _check_variant(self) -> None:
        from hybridreduce.toy.data import VARIANTS

        if self.variant is None:
            return
        if self.source == "tiny":
            raise InputError(f"analysis variant {self.variant!r} is a toy benchmark setting; a tiny model has none")
        if self.variant not in VARIANTS:
            raise InputError(f"analysis variant must be one of {VARIANTS} (or null), got {self.variant!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any], name: str | None = None) -> AnalysisConfig:
        if not isinstance(data, dict):
            raise InputError(f"analysis settings must be a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls) if f.init}
        unknown = sorted(set(data) - known, key=str)
        if unknown:
            exc = InputError(f"unknown analysis settings {unknown}; known: {sorted(known)}")
            exc.field = unknown[0]
            raise exc
        data = dict(data)
        if name is not None:
            data.setdefault("name", name)
        return cls(**data)

    @classmethod
    def from_yaml(cls, path: str | Path) -> AnalysisConfig:
        """Read ``path`` (or ``configs/analysis/<path>.yaml`` for a bare name); errors name the file and line.

        An empty file (or ``analysis:`` section) is refused: it would run every default, the toy model included.
        """
        path = Path(path)
        if not path.suffix and not path.exists() and (CONFIG_DIR / f"{path}.yaml").is_file():
            path = CONFIG_DIR / f"{path}.yaml"
        data = read_yaml_section(
            path, "analysis", "analysis config",
            empty="write at least its model and samples (e.g. `model: toy`, `samples: 64`); configs/analysis/ has "
            "examples",
        )  # fmt: skip
        with located(path, data):
            return cls.from_dict(data, name=path.stem)

    def to_dict(self) -> dict[str, Any]:
        """The settings (init fields only, so that :meth:`from_dict` reads them back), tuples as lists."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.init}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


# Model and batches -------------------------------------------------------------------------------
@dataclass
class LoadedModel:
    """The model of a run, what metrics.json says about it, and the toy benchmark config and vocabulary
    (toy only; the vocabulary covers every variant the checkpoint was trained on)."""

    model: nn.Module
    info: dict[str, Any]
    data: Any | None = None  # hybridreduce.toy.ToyConfig
    vocab: Any | None = None  # hybridreduce.toy.data.Vocab


def load_model(config: AnalysisConfig) -> LoadedModel:
    """Load (or build) the configured model on ``config.device``, in eval mode."""
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"analysis device {config.device!r} is not available here (no CUDA); use device: cpu")
    if config.source == "tiny":
        from hybridreduce.tiny import build_tiny_model

        model = build_tiny_model(config.target, seed=config.seed)
        info: dict[str, Any] = {"source": "tiny", "arch": config.target, "prompt": dict(config.prompt)}
        data = vocab = None
    else:
        from hybridreduce.toy.demo import CHECKPOINT, load_toy_spec

        path = Path(config.target) if config.source == "checkpoint" else CHECKPOINT
        model, spec = load_toy_spec(path)
        variants = {c.variant: c for c in spec.configs}
        variant = config.variant or spec.configs[0].variant
        if variant not in variants:
            raise InputError(
                f"{path} was not trained on the benchmark variant {variant!r}; it knows {sorted(variants)}"
            )
        data, vocab = variants[variant], spec.vocab
        fields_ = {f.name: getattr(data, f.name) for f in fields(data) if f.init}
        data_dict = {k: list(v) if isinstance(v, tuple) else v for k, v in fields_.items()}
        info = {"source": config.source, "checkpoint": str(path), "data": data_dict, "split": config.split}
        info["variant"] = variant
    model = model.to(config.device).eval()
    adapted = get_adapter(model)
    info.update(model_type=adapted.model_type, wrapper=adapted.wrapper, num_blocks=adapted.num_blocks)
    info["parameters"] = sum(p.numel() for p in model.parameters())
    return LoadedModel(model, info, data, vocab)


def iter_batches(config: AnalysisConfig, loaded: LoadedModel, samples: range | None = None) -> Iterator[dict[str, Any]]:
    """Batches of ``input_ids, attention_mask, visual_mask (b, T)``, ``index (b,)``, and for the toy model
    ``pixels (b, T_f, 3, H, W)``, ``relevant_visual (b, V)``, ``frame_index/row_index/col_index (b, V)``.

    ``samples``: the sample indices to batch (a shard's range); all ``config.samples`` by default.
    """
    n, bs = config.samples, config.batch_size
    samples = range(n) if samples is None else samples
    starts = range(samples.start, samples.stop, bs)
    if loaded.data is not None:
        from hybridreduce.toy import ToyDataset

        dataset = ToyDataset(loaded.data, config.split, n, vocab=loaded.vocab)
        for start in starts:
            batch = dataset.batch(range(start, min(start + bs, samples.stop)))
            batch["index"] = torch.arange(start, min(start + bs, samples.stop))
            yield batch
        return
    from hybridreduce.tiny import make_prompt

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


def concat_caches(caches: Sequence[ScoreCache]) -> ScoreCache:
    """Concatenate score caches of consecutive batches along the sample axis.

    Args:
        caches: caches of one model and scorer, each ``scores[block]: (b_i, V)``.

    Returns:
        One :class:`ScoreCache` with ``scores[block]: (Σ b_i, V)`` (parts and visual positions alike).
    """
    if not caches:
        raise InputError("nothing to concatenate: no batch was scored")
    first = caches[0]
    for c in caches[1:]:
        if c.layers != first.layers or c.n_visual != first.n_visual or c.block_kinds != first.block_kinds:
            raise InputError(
                f"batches scored different blocks or token counts ({first.layers}, V={first.n_visual} vs "
                f"{c.layers}, V={c.n_visual}); every batch of a run needs the same model and visual-token count"
            )
    out = ScoreCache(first.block_kinds, torch.cat([c.visual_positions for c in caches]), first.scorer)
    out.scores = {k: torch.cat([c.scores[k] for c in caches]) for k in first.layers}
    out.parts = {k: {m: torch.cat([c.parts[k][m] for c in caches]) for m in first.parts[k]} for k in first.parts}
    return out


# Analysis of collected caches ----------------------------------------------------------------------
@dataclass
class Analysis:
    """Reports computed from the collected caches, and what failed."""

    sparsity: dict[str, SparsityReport] = field(default_factory=dict)
    stability: dict[str, StabilityReport] = field(default_factory=dict)
    relevance: RelevanceReport | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)


def _error(stage: str, exc: BaseException, scorer: str | None = None) -> dict[str, Any]:
    return {"stage": stage, "scorer": scorer, "type": type(exc).__name__, "message": str(exc)}


def analyze_caches(
    caches: dict[str, ScoreCache],
    config: AnalysisConfig,
    relevant: torch.Tensor | None = None,
    keep_ratios: KeepRatios | None = None,
) -> Analysis:
    """Sparsity and stability of each cache, and relevance across caches when ``relevant (b, V)`` is given.

    ``keep_ratios`` (block → ratio, e.g. ``Plan.keep_fraction``) sets the keep sets of survival recall.
    A section that fails is recorded in :attr:`Analysis.errors`; the others are still computed.
    """
    out = Analysis()
    for name, cache in caches.items():
        try:
            out.sparsity[name] = layer_sparsity(cache, ps=config.mass_p, topk=config.topk)
        except Exception as exc:  # recorded in metrics.json, the other sections still run
            out.errors.append(_error("sparsity", exc, name))
        try:
            out.stability[name] = layer_stability(
                cache, topk=config.topk, keep_ratios=keep_ratios, kendall=config.kendall
            )
        except Exception as exc:
            out.errors.append(_error("stability", exc, name))
    if relevant is not None and caches:
        try:
            out.relevance = relevance_report(caches, relevant, config.topk)
        except Exception as exc:
            out.errors.append(_error("relevance", exc))
    return out


def schedule_section(config: AnalysisConfig, num_blocks: int, n_visual: int) -> tuple[dict[str, Any], Plan]:
    """``(metrics.json schedule section, Plan)`` of the configured schedule on this model."""
    sched = Schedule.load(config.schedule)
    if config.keep is not None and sched.shape != "explicit" and sched.method != "none":
        sched = replace(sched, keep=config.keep)
    plan = sched.resolve(num_blocks)
    section = {
        "name": sched.name or (config.schedule if isinstance(config.schedule, str) else sched.method),
        "settings": sched.to_dict(),
        "prune_points": list(plan.prune_points),
        "ratios": list(plan.ratios),
        "keep_fraction": [plan.keep_fraction(b) for b in range(num_blocks)],
        "visual_tokens": plan.block_counts(n_visual),
        "n_visual": n_visual,
        "average_keep": plan.average_keep(n_visual),
    }
    return section, plan


def default_overlay_blocks(kinds: Sequence[str]) -> list[int]:
    """The last attention block and the last Mamba (or parallel) block."""
    picks = []
    for wanted in (("attn",), ("ssm", "parallel")):
        found = [i for i, k in enumerate(kinds) if k in wanted]
        if found:
            picks.append(found[-1])
    return sorted(picks)


def check_overlay_blocks(blocks: Sequence[int], kinds: Sequence[str]) -> list[int]:
    """Validate overlay blocks against the model's block kinds (MLP/MoE blocks have no scores)."""
    scored = [i for i, k in enumerate(kinds) if k not in NO_SCORES_KINDS]
    for b in blocks:
        if b >= len(kinds):
            raise InputError(
                f"overlay_blocks names block {b}, but the model has {len(kinds)} blocks; choose from {scored}"
            )
        if kinds[b] in NO_SCORES_KINDS:
            raise InputError(
                f"overlay_blocks names block {b}, an {kinds[b]!r} block: it has no token mixer and records no scores; "
                f"choose among the scored blocks {scored}"
            )
    return list(blocks)


def _round(values: torch.Tensor) -> list[float]:
    return [float(f"{v:.6g}") for v in values.tolist()]


def examples_section(
    caches: dict[str, ScoreCache], loaded: LoadedModel, config: AnalysisConfig, samples: int | None = None
) -> list[dict]:
    """The first ``config.examples`` toy samples: question, relevant tokens, indices and per-block scores.

    ``samples``: how many samples the caches hold (default ``config.samples``; fewer in a partial run).
    """
    from hybridreduce.toy import ToyDataset
    from hybridreduce.toy.data import visual_grid

    dataset = ToyDataset(loaded.data, config.split, config.samples, vocab=loaded.vocab)
    t, r, c = (x.tolist() for x in visual_grid(loaded.data))
    tpf, cols = loaded.data.tokens_per_frame, loaded.data.cols
    out = []
    for i in range(min(config.examples, config.samples if samples is None else samples)):
        sample = dataset[i]
        scores = {name: {str(b): _round(cache.scores[b][i]) for b in cache.layers} for name, cache in caches.items()}
        out.append(
            {
                "index": i,
                "id": sample.id,
                "qtype": sample.qtype,
                "question": " ".join(sample.question),
                "answer": sample.answer,
                "relevant": sorted(tt * tpf + rr * cols + cc for tt, rr, cc in sample.relevant),
                "frame_index": t,
                "row_index": r,
                "col_index": c,
                "scores": scores,
            }
        )
    return out


# Writing ------------------------------------------------------------------------------------------
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


# The runner ---------------------------------------------------------------------------------------
@dataclass
class _Collected:
    """What the forwards produced: scorer → concatenated cache, per-scorer status, batch ground truth, errors."""

    caches: dict[str, ScoreCache]
    scorers: dict[str, dict[str, Any]]
    meta: list[dict[str, torch.Tensor]]
    errors: list[dict[str, Any]]
    scored: int = 0  # samples in the caches
    interrupted: bool = False  # Ctrl-C stopped the forwards; the caches hold the batches every scorer finished


def _score_into(
    collected: _Collected,
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
        collected.errors.append(_error("collect", exc, scorer))
        return
    parts.append(cache)
    status["seconds"] += time.perf_counter() - start


def _run_forwards(
    config: AnalysisConfig, loaded: LoadedModel, progress: bool, samples: range | None = None
) -> _Collected:
    """Every batch once per scorer; a scorer that fails is dropped (its error recorded), the others go on.

    Ctrl-C stops the forwards: the run keeps the batches that every working scorer finished and says it was
    interrupted (``run.interrupted``); :func:`collect` saves it as a partial run.
    """
    from tqdm.auto import tqdm

    samples = range(config.samples) if samples is None else samples
    run = _Collected({}, {s: {"status": "ok", "seconds": 0.0} for s in config.scorers}, [], [])
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


# Output directories -------------------------------------------------------------------------------
class Interrupted(KeyboardInterrupt):
    """Ctrl-C stopped :func:`collect`; the message says, in one line, what was saved where.

    Attributes:
        saved: the directory of the partial run, or None when nothing was saved.
        metrics: the partial run's metrics.json content (None when nothing was saved).
    """

    def __init__(self, message: str, saved: Path | None = None, metrics: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.saved, self.metrics = saved, metrics


def _display(path: Path) -> str:
    """``path`` relative to the working directory when it lies under it, else absolute."""
    relative = os.path.relpath(path)
    return relative if not relative.startswith("..") else str(path)


def _holds_files(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def _is_run_dir(path: Path) -> bool:
    """Whether ``path`` holds an analysis run (metrics.json) or the shards of one."""
    return (path / "metrics.json").is_file() or is_sharded_run(path)


def _describe_run(path: Path) -> str:
    """``"an analysis run of 256 samples"``, ``"a partial analysis run (64 of 256 samples)"``, ... of ``path``."""
    try:
        metrics = json.loads((path / "metrics.json").read_text())
        samples = metrics["model"]["samples"]
    except (OSError, ValueError, KeyError, TypeError):
        return "an analysis run" if _is_run_dir(path) else "files"
    if metrics.get("partial"):
        return f"a partial analysis run ({samples} of {metrics.get('samples_planned')} samples)"
    return f"an analysis run of {samples} samples"


def check_out_dir(out_dir: str | Path, shard: tuple[int, int] = (0, 1), overwrite: bool = True) -> Path:
    """The directory :func:`collect` will write (``out_dir``, or its ``shard-i-of-N`` folder), checked up front.

    Refused: a file, a path under a file, a folder that cannot be written; a non-empty ``out_dir`` that is not
    an analysis run (a whole run replaces its directory, so a folder of other files is never replaced); and with
    ``overwrite=False``, a directory that already holds a run (for a shard: its own shard folder, or a run made
    without shards).
    """
    from hybridreduce import validate

    out = Path(os.path.abspath(validate.writable_dir(out_dir, "out (--out)")))  # absolute: "." has no name to move
    shown = repr(_display(out))
    if shard[1] > 1:
        target = shard_dir(out, shard)
        if not overwrite and (out / "metrics.json").is_file() and not is_sharded_run(out):
            raise InputError(
                f"out (--out) {shown} holds {_describe_run(out)} made without --shard; pass --overwrite to "
                "score shards into it anyway, or give a new directory"
            )
        if not overwrite and _holds_files(target):
            raise InputError(
                f"shard {shard[0]}/{shard[1]} is already in {_display(target)!r}; pass --overwrite to score it again, "
                "or give a new directory"
            )
        return target
    if _holds_files(out) and not _is_run_dir(out):
        raise InputError(
            f"out (--out) {shown} holds files that are not an analysis run (no metrics.json); a run replaces "
            "its whole directory, so give a new or empty one"
        )
    if _holds_files(out) and not overwrite:
        raise InputError(
            f"out (--out) {shown} already holds {_describe_run(out)}; pass --overwrite to replace it once the "
            "new run is complete, or give a new directory"
        )
    return out


def _staging_dir(target: Path) -> Path:
    """A new hidden directory beside ``target``, on its file system, so that moving it into place is a rename."""
    parent = target.absolute().parent
    while not parent.exists():
        parent = parent.parent
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=parent))


def _install(staging: Path, target: Path) -> Path:
    """Move the complete directory ``staging`` to ``target``; what was there is moved aside first, deleted last."""
    target.parent.mkdir(parents=True, exist_ok=True)
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    return target


# The runner, continued ----------------------------------------------------------------------------
def collect(
    config: AnalysisConfig,
    out_dir: str | Path,
    progress: bool = True,
    shard: tuple[int, int] = (0, 1),
    overwrite: bool = True,
) -> dict[str, Any]:
    """Score the configured model and write the run directory (see the module docstring).

    The run is written into a hidden directory beside ``out_dir`` and moved into place when it is complete, so
    ``out_dir`` never holds files of two runs, and an error leaves it as it was.

    Args:
        config: the run.
        out_dir: output directory (created if needed; replaced as a whole when it holds a run).
        progress: show a tqdm bar over samples × scorers.
        shard: ``(i, N)``: score only the ``i``-th of ``N`` runs of whole batches and write the raw
            scores into ``out_dir/shard-i-of-N/`` (see :func:`write_shard`); :func:`merge_shards` then
            writes the run directory from all ``N``. ``(0, 1)``: the whole run here.
        overwrite: replace a run already in ``out_dir`` (for a shard: its shard folder). False refuses a
            non-empty ``out_dir`` (the command line's default; ``--overwrite`` sets it).

    Returns:
        The metrics dict written to ``metrics.json`` (for a shard: what ``shard.json`` holds).

    Raises:
        InputError: a bad config, model, shard, overlay block or output directory (:func:`check_out_dir`), before
            any forward runs.
        ScoreError: every scorer failed (metrics.json with the errors is written first).
        Interrupted: Ctrl-C. The batches every scorer finished are written as a partial run (``"partial": true``
            in metrics.json) into ``out_dir``, or, when ``out_dir`` held a run, into ``<out_dir>.partial`` beside it
            (``out_dir`` is left as it was). A shard is kept only whole: an interrupted shard writes nothing.
    """
    if not isinstance(config, AnalysisConfig):
        raise InputError(f"collect needs an AnalysisConfig, got {type(config).__name__}")
    i, n = shard
    if not (isinstance(i, int) and isinstance(n, int) and n >= 1 and 0 <= i < n):
        raise InputError(f"shard must be (i, N) with 0 <= i < N, got {shard!r}")
    batches = math.ceil(config.samples / config.batch_size)
    if n > batches:
        raise InputError(
            f"{n} shards for {batches} batches of {config.batch_size}: every shard needs a batch; use fewer shards "
            "or a smaller batch_size"
        )
    target = check_out_dir(out_dir, shard, overwrite)
    loaded = load_model(config)
    kinds = get_adapter(loaded.model).kinds
    check_overlay_blocks(config.overlay_blocks or default_overlay_blocks(kinds), kinds)
    # Shards are runs of whole batches, so every sample is scored in the same batch as in one process and the
    # merged run is bit-identical to it.
    bs = config.batch_size
    samples = range(i * batches // n * bs, min((i + 1) * batches // n * bs, config.samples))
    run = _run_forwards(config, loaded, progress, samples)
    if run.interrupted and n > 1:
        raise Interrupted(
            f"interrupted after {run.scored} of {len(samples)} samples of shard {i}/{n}; a shard is kept only whole, "
            f"so nothing was written ({_display(target)} is as it was): run the shard again"
        )
    if run.interrupted and not run.scored:
        raise Interrupted(
            f"interrupted before the first batch was scored; nothing written ({_display(target)} is as it was)"
        )
    place = target
    if run.interrupted and _holds_files(target):  # keep the run that is there; the partial one goes beside it
        place = target.with_name(f"{target.name}.partial")
        if _holds_files(place) and not _is_run_dir(place):
            place = target.with_name(f"{target.name}.partial-{time.strftime('%Y%m%d-%H%M%S')}")
    staging = _staging_dir(target)
    try:
        result = write_shard(config, run, staging, shard, samples) if n > 1 else _finish(config, loaded, run, staging)
        _install(staging, place)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone after a successful install; else what was written
    if run.interrupted:
        kept = f"; {_display(target)} is as it was" if place != target else ""
        raise Interrupted(
            f"interrupted after {run.scored} of {config.samples} samples: the partial run is in {_display(place)} "
            f"(metrics.json says partial){kept}; run again to score every sample",
            saved=place,
            metrics=result,
        )
    if n == 1:
        _every_scorer_failed(run, place)
    return result


def _every_scorer_failed(run: _Collected, out: Path) -> None:
    """Raise ScoreError when no scorer produced a cache (the run directory, with the errors, is written first)."""
    if not run.caches:
        detail = "; ".join(f"{e['scorer']}: {e['type']}: {e['message']}" for e in run.errors)
        raise ScoreError(f"every scorer failed ({detail}); the errors are in {out / 'metrics.json'}")


def _finish(config: AnalysisConfig, loaded: LoadedModel, run: _Collected, out: Path) -> dict[str, Any]:
    """Measure the collected caches and write the run directory; returns metrics.json's content.

    An interrupted run (``run.interrupted``) is measured on the samples it scored and marked ``"partial": true``.
    """
    kinds = get_adapter(loaded.model).kinds
    overlay = check_overlay_blocks(config.overlay_blocks or default_overlay_blocks(kinds), kinds)
    samples = run.scored if run.interrupted else config.samples
    metrics: dict[str, Any] = {
        "schema": SCHEMA,
        "name": config.name,
        "partial": run.interrupted,
        "samples_planned": config.samples,
        "model": loaded.info | {"samples": samples},
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
            metrics["errors"].append(_error("schedule", exc))
    analysis = analyze_caches(run.caches, config, relevant, None if plan is None else plan.keep_fraction)
    metrics["errors"] += analysis.errors
    metrics["sparsity"] = {n: r.to_dict() for n, r in analysis.sparsity.items()}
    metrics["stability"] = {n: r.to_dict() for n, r in analysis.stability.items()}
    if analysis.relevance is not None:
        metrics["relevance"] = analysis.relevance.to_dict()
    if loaded.data is not None and run.caches and config.examples:
        metrics["overlay"] = {"blocks": overlay, "keep": config.overlay_keep}
        try:
            metrics["examples"] = examples_section(run.caches, loaded, config, samples)
        except Exception as exc:
            metrics["errors"].append(_error("examples", exc))
    files += write_tables(analysis, out)
    metrics["files"] = sorted(p.name for p in files) + ["metrics.json"]
    (out / "metrics.json").write_text(json.dumps(_json_clean(metrics), indent=1, allow_nan=False) + "\n")
    return metrics


# Shards -------------------------------------------------------------------------------------------
def shard_dir(out: Path, shard: tuple[int, int]) -> Path:
    return out / f"shard-{shard[0]}-of-{shard[1]}"


def write_shard(config: AnalysisConfig, run: _Collected, folder: Path, shard: tuple[int, int], samples: range) -> dict:
    """The raw output of one shard into ``folder`` (:func:`collect` moves it to ``shard_dir(out, shard)``):
    ``scores_<scorer>.safetensors``, ``meta.safetensors`` and ``shard.json``."""
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
        "scorers": run.scorers,
        "errors": run.errors,
    }
    (folder / "shard.json").write_text(json.dumps(_json_clean(info), indent=1) + "\n")
    return info


def is_sharded_run(out_dir: str | Path) -> bool:
    """Whether ``out_dir`` holds shards written by ``collect(..., shard=(i, N))``."""
    return any(Path(out_dir).glob("shard-*-of-*/shard.json"))


def merge_shards(out_dir: str | Path) -> dict[str, Any]:
    """Write the run directory from the shards in ``out_dir`` (all ``N`` must be there, of one config).

    The caches and ground truth are concatenated in sample order, so the result is the one
    :func:`collect` writes in one process (the scorers' ``seconds`` are summed over the shards).
    """
    from safetensors.torch import load_file

    out = Path(out_dir)
    infos = [json.loads(p.read_text()) for p in sorted(out.glob("shard-*-of-*/shard.json"))]
    if not infos:
        raise InputError(f"{out}: no shard-i-of-N/shard.json; run `hybridreduce analyze ... --shard i/N` first")
    n = infos[0]["shard"][1]
    infos.sort(key=lambda info: info["shard"][0])
    have = [info["shard"] for info in infos]
    if have != [[i, n] for i in range(n)]:
        missing = sorted(set(range(n)) - {i for i, m in have if m == n})
        raise InputError(f"{out}: shards {missing} of {n} are missing (or shards of another N are mixed in)")
    if any(info["config"] != infos[0]["config"] for info in infos):
        raise InputError(f"{out}: the shards were run with different configs; rerun them with one config")
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
    run = _Collected(caches, scorers, meta, errors)
    loaded = load_model(config)
    _remove_previous_merge(out)
    metrics = _finish(config, loaded, run, out)
    _every_scorer_failed(run, out)
    return metrics


def _remove_previous_merge(out: Path) -> None:
    """Delete the files an earlier merge wrote into ``out`` (metrics.json lists them), so none is left beside the
    new merge's; the shard folders are untouched."""
    try:
        files = json.loads((out / "metrics.json").read_text()).get("files", [])
    except (OSError, ValueError, AttributeError):
        return
    for name in files:
        if isinstance(name, str) and "/" not in name and (out / name).is_file():
            (out / name).unlink()


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
        batch, n_visual: the ``(b, V)`` every block must have (e.g. from metrics.json), or None.

    Raises:
        InputError: unreadable, empty (no scored block) or mismatched (blocks of different shapes, or not
            the expected ``(b, V)``).
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
    """``(metrics, scorer → ScoreCache, relevant (b, V) bool or None)`` of a run directory, all checked."""
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
