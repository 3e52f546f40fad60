"""Stateful retention: after visual tokens are dropped at block ℓ, what of them survives in the kept stream?

Shapes use the dimension letters of :mod:`hybridreduce.glossary` (``N``: the samples of a probe split, train or
test; ``n_targets``: the outputs of a probe, 1 or one per colour). ℓ is the cut block (tokens are dropped right
before block ℓ runs), ``K`` the set of the ``k`` visual tokens it keeps and ``D = V \\ K`` the dropped set.

What is run. For each *configuration* ``(ℓ, keep, selector)`` a single cut before block ℓ keeps
``k = max(1, round(keep·V))`` visual tokens of every sample, chosen by the selector (``progressive``: the
top-k of the unified attention/Mamba score of the most recent scoring block before ℓ; ``random``: a seeded
uniform draw; ``uniform``: an even stride). Text tokens are never dropped. Every sample is then run three
ways, and the *same* positions are read out of each:

    condition     what the model sees                                             reads out
    full          every token in every block (no cut)                              upper bound
    cut           every token in blocks < ℓ, only K (and the text) from ℓ on       the quantity of interest
    input_drop    only K (and the text) from block 0 on: D never entered the model  the control

``input_drop`` is the cut at block 0 with the cut's own keep set: the kept rows of the input embeddings (the
toy vision encoder embeds every patch with its own frame/row/column embedding before anything is dropped, so
the kept tokens look exactly as in the full run) at their original position ids. So ``cut − input_drop`` is
what blocks ``< ℓ`` wrote about the dropped tokens into the kept stream — the residual rows of the kept
tokens and of the text, i.e. what the Mamba recurrent states and the attention blocks moved there before
the cut; ``full − cut`` is what the cut lost.

Features (the final-layer hidden states, after the last norm, i.e. what the LM head reads; float64):
    ``answer``        ``(d,)`` the last position, the ``<answer>`` marker (text: present in every condition)
    ``visual_mean``   ``(d,)`` the mean over the kept visual tokens K (present in every condition)

Targets (properties of the dropped tokens that the kept tokens do not show; from :attr:`Sample.events`):
    ``dropped_event_tokens``   number of event (non-background) tokens in D: ridge regression, metric
                               held-out **R²** (``1 − SSE/SST`` with the test set's own mean); the baseline is
                               the R² of predicting the training mean (≈ 0, usually slightly negative).
    ``dropped_only_colours``   per colour ``c``: 1 when ``c`` is drawn on some token of D and on no token of
                               K (multi-label, one output per colour of the config): a ridge classifier on
                               0/1 targets; metric the **AUC** averaged over the colours with both labels in
                               the training and the test split (chance 0.5), plus the accuracy (threshold 0.5)
                               over all (sample, colour) pairs against the majority label of each colour in
                               the training split (``majority``).

Probes (:func:`fit_ridge`): closed-form ridge regression on features standardised with the training split's
mean and deviation, in float64, the penalty of each output chosen from :data:`ALPHAS` by its exact
leave-one-out error on the training split; no iterative optimiser, so a run is deterministic. Every held-out
score comes with a standard error (:func:`bootstrap_stderr`: the test split resampled with replacement, the
probe kept fixed; seeded, so deterministic too).

How to read a probe row: ``score`` above ``baseline`` in ``input_drop`` is what the kept tokens and the
question reveal anyway (for instance the question names the colour a ``when``/``where``/``count`` question
asks about, and that colour is in the video: if its shape was wholly dropped, the text still says it
exists); ``cut`` above ``input_drop`` is the information about the dropped tokens that the stateful stream
carried past the cut; ``full`` is what the same read-out gets when nothing is dropped. :meth:`RetentionReport.summary`
lists ``retained = cut − input_drop`` (with ``retained_stderr``) and ``lost = full − cut``. Probes are fitted on
the first ``n_train`` samples of the dataset and scored on the next ``n_test``; each configuration has its own
keep sets, hence its own targets, so scores compare across conditions of one configuration, not across
configurations.

Task accuracy (:class:`TaskGroup`): the multiple-choice accuracy (:class:`hybridreduce.toy.evaluate.AnswerSheet`)
of the same forwards over all ``n_train + n_test`` samples, split by how many of the sample's ground-truth
relevant tokens (``relevant_visual``) the cut kept: ``all`` (none dropped), ``some``, ``none`` (every relevant
token dropped), and ``total``. Each group reports ``n`` and the accuracy under the cut, under input_drop and
at full tokens on the *same* samples: in the ``none`` group, ``accuracy`` above ``input_drop_accuracy``
means the model answered from what the stream retained of tokens it no longer carries. With ``keep = 1``
nothing is dropped: every sample is in ``all``, the other groups have ``n = 0`` and accuracy None, the
targets are constant and their scores None (with a note).

Public API: :func:`retention_probe` → :class:`~analysis.retention_report.RetentionReport` (``to_dict``,
``to_rows``, ``summary``; :mod:`analysis.retention_report`); :func:`dropped_targets` computes the targets. The probe
fitting itself is :mod:`analysis.probes`.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from hybridreduce import Schedule, get_adapter, reduce
from hybridreduce.engine import scoring_blocks
from hybridreduce.errors import InputError

from .probes import multilabel_probe, regression_probe
from .retention_report import CONDITIONS, FEATURES, TARGETS, ProbeResult, RetentionReport, TaskGroup

__all__ = [
    "MIN_TEST",
    "MIN_TRAIN",
    "SELECTOR_PRESETS",
    "dropped_targets",
    "retention_probe",
    "token_colours",
]

#: The schedule presets (:meth:`hybridreduce.Schedule.preset`) whose selector chooses a configuration's keep set.
SELECTOR_PRESETS = ("progressive", "random", "uniform")
MIN_TRAIN = 8  # a probe needs a few samples per fitted direction to choose its ridge penalty by leave-one-out
MIN_TEST = 4


# Targets ------------------------------------------------------------------------------------------
def token_colours(sample, cfg) -> torch.Tensor:
    """``(V,)`` long: the index in ``cfg.colours`` of the shape drawn on each visual token, −1 on background."""
    out = torch.full((cfg.n_visual,), -1, dtype=torch.long)
    tpf = cfg.tokens_per_frame
    for event in sample.events:
        j = cfg.colours.index(event.colour)
        for t, r, c in event.tokens:
            out[t * tpf + r * cfg.cols + c] = j
    return out


def dropped_targets(colours: torch.Tensor, kept: torch.Tensor, n_colours: int) -> dict[str, torch.Tensor]:
    """The probe targets of one configuration.

    Args:
        colours: ``(b, V)`` long, colour index per visual token, −1 on background (:func:`token_colours`).
        kept: ``(b, V)`` bool, True at the visual tokens the cut kept.
        n_colours: number of colours (the outputs of ``dropped_only_colours``).

    Returns:
        ``dropped_event_tokens``: ``(b,)`` float64, event tokens among the dropped ones;
        ``dropped_only_colours``: ``(b, n_colours)`` float64 0/1, colour drawn on a dropped token and on no kept one.
    """
    if colours.shape != kept.shape:
        raise InputError(f"colours {tuple(colours.shape)} and kept {tuple(kept.shape)} must have the same shape")
    dropped = ~kept.bool()
    count = ((colours >= 0) & dropped).sum(dim=1).to(torch.float64)
    onehot = colours[..., None] == torch.arange(n_colours)[None, None, :]  # (b, V, n_colours)
    in_dropped = (onehot & dropped[..., None]).any(dim=1)
    in_kept = (onehot & kept.bool()[..., None]).any(dim=1)
    return {"dropped_event_tokens": count, "dropped_only_colours": (in_dropped & ~in_kept).to(torch.float64)}


# Input checks -------------------------------------------------------------------------------------
def _check_model(model: nn.Module, dataset) -> None:
    from hybridreduce.toy import ToyDataset, ToyVLM

    if not isinstance(model, ToyVLM):
        raise InputError(
            f"retention_probe needs the embedded toy VLM (hybridreduce.toy.ToyVLM), got {type(model).__name__}: "
            "its targets and task groups come from the toy benchmark's ground truth (events, relevant tokens); "
            "load one with hybridreduce.toy.demo.load_toy"
        )
    if not isinstance(dataset, ToyDataset):
        raise InputError(f"retention_probe needs a hybridreduce.toy.ToyDataset, got {type(dataset).__name__}")
    cfg, mc = dataset.cfg, model.config
    if (mc.frames, mc.rows, mc.cols, mc.patch) != (cfg.frames, cfg.rows, cfg.cols, cfg.patch):
        raise InputError(
            f"the model was built for {mc.frames} frames of {mc.rows}x{mc.cols} patches of {mc.patch}px but the "
            f"dataset has {cfg.frames} frames of {cfg.rows}x{cfg.cols} patches of {cfg.patch}px; use the data "
            "config the checkpoint was trained on (load_toy returns it)"
        )
    vocab = model.config.text_config.vocab_size
    if mc.video_token_id != dataset.vocab.video_id or vocab < dataset.vocab.size:
        raise InputError(
            f"the dataset's vocabulary ({dataset.vocab.size} words) does not match the model's ({vocab} ids)"
        )


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_blocks(blocks: Sequence[int] | None, kinds: list[str]) -> list[int]:
    n_blocks = len(kinds)
    if blocks is None:
        return [i for i in range(1, n_blocks) if kinds[i] not in ("mlp", "moe")]
    if isinstance(blocks, (str, bytes)) or not isinstance(blocks, Sequence) or not blocks:
        raise InputError(f"blocks must be a non-empty list of cut blocks in [1, {n_blocks - 1}], got {blocks!r}")
    out = []
    for b in blocks:
        if isinstance(b, bool) or not isinstance(b, numbers.Integral) or not 1 <= b < n_blocks:
            extra = (
                " (block 0 is the input: dropping there is the input_drop control, reported for every cut)"
                if b == 0 and not isinstance(b, bool)
                else ""
            )
            raise InputError(
                f"cut block {b!r} is out of range: a cut before block ℓ needs ℓ in [1, {n_blocks - 1}] for this "
                f"{n_blocks}-block model{extra}"
            )
        out.append(int(b))
    if len(set(out)) != len(out):
        raise InputError(f"blocks lists a block twice: {list(blocks)}")
    return out


def _check_keeps(keeps: Sequence[float]) -> list[float]:
    if isinstance(keeps, numbers.Real) and not isinstance(keeps, bool):
        keeps = [keeps]
    if isinstance(keeps, (str, bytes)) or not isinstance(keeps, Sequence) or not keeps:
        raise InputError(f"keeps must be a non-empty list of shares in (0, 1], got {keeps!r}")
    out = []
    for k in keeps:
        if isinstance(k, bool) or not isinstance(k, numbers.Real) or not 0 < float(k) <= 1:
            raise InputError(f"keep {k!r} is outside (0, 1]: it is the share of visual tokens the cut keeps")
        out.append(float(k))
    if len(set(out)) != len(out):
        raise InputError(f"keeps lists a share twice: {list(keeps)}")
    return out


def _check_selectors(selectors: Sequence[str]) -> list[str]:
    if isinstance(selectors, str):
        selectors = [selectors]
    if not isinstance(selectors, Sequence) or not selectors:
        raise InputError(f"selectors must be a non-empty list drawn from {SELECTOR_PRESETS}, got {selectors!r}")
    bad = [s for s in selectors if s not in SELECTOR_PRESETS]
    if bad:
        raise InputError(f"unknown selector(s) {bad}; choose from {SELECTOR_PRESETS}")
    if len(set(selectors)) != len(selectors):
        raise InputError(f"selectors lists a selector twice: {list(selectors)}")
    return list(selectors)


def _schedule(selector: str, block: int, keep: float, seed: int) -> Schedule:
    """One cut before ``block`` keeping the share ``keep`` of the visual tokens, chosen by ``selector``."""
    return Schedule.preset(selector, keep=keep, budget="final", stages=(block,), seed=seed)


# The run ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Cut:
    """One configuration: a single cut before ``block`` that keeps the share ``keep`` of the visual tokens, chosen
    by ``selector``."""

    block: int
    keep: float
    selector: str

    def schedule(self, seed: int) -> Schedule:
        return _schedule(self.selector, self.block, self.keep, seed)


@dataclass
class _Plan:
    """The checked arguments of :func:`retention_probe`: what runs, on which samples."""

    kinds: list[str]  # (L,) kind of every block
    cuts: list[_Cut]  # every (block, keep, selector), blocks outermost
    blocks: list[int]
    keeps: list[float]
    selectors: list[str]
    n_train: int
    n_test: int
    batch_size: int
    seed: int

    @property
    def n(self) -> int:
        """Samples run: the training split, then the test split."""
        return self.n_train + self.n_test


@dataclass
class _CutRecord:
    """What one configuration's forwards gave, batch by batch (each list grows by one ``(b, ...)`` entry a batch).

    Attributes:
        features: ``(condition, feature)`` → ``(b, d)`` float64 read-outs (:func:`_read_features`).
        correct: condition → ``(b,)`` bool, the multiple-choice answer was right.
        kept: ``(b, V)`` bool, the visual tokens the cut kept.
        n_kept: ``k``, the visual tokens the cut keeps of every sample.
    """

    features: dict[tuple[str, str], list[torch.Tensor]] = field(default_factory=dict)
    correct: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    kept: list[torch.Tensor] = field(default_factory=list)
    n_kept: int = 0

    def add(self, condition: str, features: dict[str, torch.Tensor], correct: torch.Tensor) -> None:
        """One batch's read-outs and answers under ``condition``."""
        for f in FEATURES:
            self.features.setdefault((condition, f), []).append(features[f])
        self.correct.setdefault(condition, []).append(correct)

    def coordinates(self, cut: _Cut, kinds: list[str]) -> dict[str, Any]:
        """The fields every :class:`ProbeResult` and :class:`TaskGroup` of this configuration starts with."""
        return {
            "block": cut.block,
            "kind": kinds[cut.block],
            "keep": cut.keep,
            "n_kept": self.n_kept,
            "selector": cut.selector,
        }


@dataclass
class _Batch:
    """One batch of prompts on the model's device, and its full-token forward.

    Attributes:
        ids, am, vm: ``(b, T)`` input ids, attention mask, visual mask. pixels: ``(b, F, 3, H·P, W·P)``.
        answers: ``(b,)`` index of the right choice. qtypes: the question types (for the answer sheet).
        vis_index: ``(b, T)`` visual index of each visual position. embeds: ``(b, T, d)`` input embeddings.
        h_full: ``(b, T, d)`` final hidden states of the full forward. right_full: ``(b,)`` bool, its answers.
        relevant: ``(b, V)`` the ground-truth relevant visual tokens (CPU).
    """

    ids: torch.Tensor
    am: torch.Tensor
    vm: torch.Tensor
    pixels: torch.Tensor
    answers: torch.Tensor
    qtypes: Any
    vis_index: torch.Tensor
    embeds: torch.Tensor
    h_full: torch.Tensor
    right_full: torch.Tensor
    relevant: torch.Tensor


def _final_hidden(out) -> torch.Tensor:
    """``(b, T_out, d)`` hidden states after the last norm (``output_hidden_states=True``)."""
    return out.hidden_states[-1]


def _read_features(h: torch.Tensor, is_visual: torch.Tensor) -> dict[str, torch.Tensor]:
    """Features of one forward.

    Args:
        h: ``(b, T', d)`` final hidden states of the rows the forward output.
        is_visual: ``(b, T')`` bool, True at the kept visual rows (the same count ``k`` in every sample).

    Returns:
        ``answer``: ``(b, d)`` last row; ``visual_mean``: ``(b, d)`` mean over the kept visual rows; float64 CPU.
    """
    b, _, d = h.shape
    k = int(is_visual[0].sum())
    visual = h[is_visual.to(h.device)].view(b, k, d)
    return {"answer": h[:, -1].double().cpu(), "visual_mean": visual.double().mean(dim=1).cpu()}


def _mean_or_none(values: torch.Tensor) -> float | None:
    """Mean of ``(N,)`` bool outcomes as a float; None for no sample."""
    return values.double().mean().item() if values.numel() else None


def _forward(model: nn.Module, **kwargs):
    return model(**kwargs, output_hidden_states=True, use_cache=False, logits_to_keep=1)


def _plan(model: nn.Module, dataset, blocks, keeps, selectors, n_train, n_test, batch_size, seed) -> _Plan:
    """Check every argument of :func:`retention_probe`, and every cut's schedule, before any forward."""
    _check_model(model, dataset)
    adapted = get_adapter(model)
    kinds = list(adapted.kinds)
    blocks = _check_blocks(blocks, kinds)
    keeps = _check_keeps(keeps)
    selectors = _check_selectors(selectors)
    n_train = _check_int(n_train, "n_train", 1)
    n_test = _check_int(n_test, "n_test", 1)
    batch_size = _check_int(batch_size, "batch_size", 1)
    seed = _check_int(seed, "seed", 0)
    if n_train < MIN_TRAIN or n_test < MIN_TEST:
        raise InputError(
            f"too few samples to fit a probe: n_train={n_train}, n_test={n_test}; use at least {MIN_TRAIN} "
            f"training and {MIN_TEST} test samples (far more for a reliable score: the features have "
            f"{model.config.text_config.hidden_size} dimensions)"
        )
    n = n_train + n_test
    if n > len(dataset):
        raise InputError(f"n_train + n_test = {n} samples, but the dataset has only {len(dataset)}")
    cuts = [_Cut(b, k, s) for b in blocks for k in keeps for s in selectors]
    for cut in cuts:  # fail before any forward (e.g. a progressive cut with nothing to score it)
        sched = cut.schedule(seed)
        scoring_blocks(adapted, sched, sched.resolve(adapted.num_blocks))
    return _Plan(kinds, cuts, blocks, keeps, selectors, n_train, n_test, batch_size, seed)


def _full_batch(model: nn.Module, samples: list, dataset, sheet, device: torch.device) -> _Batch:
    """Encode ``samples`` and run them at full tokens."""
    from hybridreduce.toy import collate, encode_sample

    batch = collate([encode_sample(s, dataset.vocab, dataset.cfg) for s in samples])
    ids = batch["input_ids"].to(device)  # (b, T)
    am = batch["attention_mask"].to(device)  # (b, T)
    vm = batch["visual_mask"].to(device)  # (b, T)
    pixels = batch["pixels"].to(device)  # (b, F, 3, H·P, W·P)
    if not bool((batch["input_ids"][:, -1] == dataset.vocab.answer_marker_id).all()):
        raise InputError("every prompt must end on <answer> (encode_sample's layout)")
    answers, qtypes = batch["answer_index"], batch["qtype"]
    vis_index = vm.long().cumsum(dim=1) - 1  # (b, T): visual index of each visual position
    full = _forward(model, input_ids=ids, pixel_values=pixels, attention_mask=am)
    right_full = (sheet.choose(full.logits[:, -1].float(), qtypes) == answers).cpu()
    embeds = model.embed(ids, pixels)  # (b, T, d), every token embedded as in the full run
    h_full = _final_hidden(full)  # (b, T, d)
    return _Batch(ids, am, vm, pixels, answers, qtypes, vis_index, embeds, h_full, right_full, batch["relevant_visual"])


def _run_cut(
    model: nn.Module, batch: _Batch, cut: _Cut, seed: int, scorer, sheet, n_visual: int, record: _CutRecord
) -> None:
    """The cut and its input_drop control on one batch, read out at the same positions as the full run, into
    ``record``."""
    device, b, d = batch.ids.device, batch.ids.shape[0], batch.embeds.shape[-1]
    am, vm = batch.am, batch.vm
    with reduce(model, cut.schedule(seed), visual_mask=vm, scorer=scorer, attention_mask=am) as red:
        out = _forward(model, input_ids=batch.ids, pixel_values=batch.pixels, attention_mask=am)
    idx = red.output_positions.to(device)  # (b, T'): text + kept visual, original positions
    kept_pos = red.kept_positions[cut.block].to(device)  # (b, k)
    record.n_kept = kept_pos.shape[1]
    kept = torch.zeros(b, n_visual, dtype=torch.bool, device=device)
    kept.scatter_(1, batch.vis_index.gather(1, kept_pos), True)
    record.kept.append(kept.cpu())
    is_visual = vm.gather(1, idx)  # (b, T')

    # The control: the same kept rows of the input embeddings, at their original positions.
    drop = _forward(
        model,
        inputs_embeds=batch.embeds.gather(1, idx[..., None].expand(-1, -1, d)),
        attention_mask=am.gather(1, idx),
        position_ids=idx,
    )
    full_rows = batch.h_full.gather(1, idx[..., None].expand(-1, -1, d))
    record.add("full", _read_features(full_rows, is_visual), batch.right_full)
    right_cut = (sheet.choose(out.logits[:, -1].float(), batch.qtypes) == batch.answers).cpu()
    record.add("cut", _read_features(_final_hidden(out), is_visual), right_cut)
    right_drop = (sheet.choose(drop.logits[:, -1].float(), batch.qtypes) == batch.answers).cpu()
    record.add("input_drop", _read_features(_final_hidden(drop), is_visual), right_drop)


def _collect(
    model: nn.Module, dataset, plan: _Plan, scorer, progress: bool
) -> tuple[dict[_Cut, _CutRecord], torch.Tensor, torch.Tensor]:
    """Every sample at full tokens once, then under every cut and its control.

    Returns:
        ``(records, colours, relevant)``: cut → :class:`_CutRecord`; ``(N, V)`` long colour index per visual token
        (:func:`token_colours`); ``(N, V)`` bool ground-truth relevant tokens.
    """
    from tqdm.auto import tqdm

    from hybridreduce.toy.evaluate import AnswerSheet

    sheet = AnswerSheet(dataset.vocab)
    device = next(model.parameters()).device
    records = {cut: _CutRecord() for cut in plan.cuts}
    colours_all, relevant_all = [], []
    n, V = plan.n, dataset.cfg.n_visual
    was_training = model.training
    model.eval()
    bar = tqdm(total=n * (1 + len(plan.cuts)), desc="retention", unit="sample", disable=not progress)
    try:
        for batch_no, start in enumerate(range(0, n, plan.batch_size)):
            samples = [dataset[i] for i in range(start, min(start + plan.batch_size, n))]
            batch = _full_batch(model, samples, dataset, sheet, device)
            colours_all.append(torch.stack([token_colours(s, dataset.cfg) for s in samples]))  # (b, V)
            relevant_all.append(batch.relevant)  # (b, V)
            bar.update(len(samples))
            for cut in plan.cuts:
                _run_cut(model, batch, cut, plan.seed + batch_no, scorer, sheet, V, records[cut])
                bar.update(len(samples))
    finally:
        bar.close()
        model.train(was_training)
    return records, torch.cat(colours_all), torch.cat(relevant_all).bool()


def _fit_probes(cut: _Cut, record: _CutRecord, colours: torch.Tensor, plan: _Plan, n_colours: int) -> list[ProbeResult]:
    """Every (condition, feature, target) probe of one configuration: fitted on the training split, scored on the
    test split (:func:`regression_probe`, :func:`multilabel_probe`)."""
    tr, te = slice(0, plan.n_train), slice(plan.n_train, plan.n)
    targets = dropped_targets(colours, torch.cat(record.kept), n_colours)  # (N,) and (N, n_colours)
    out = []
    for cond in CONDITIONS:
        for f in FEATURES:
            x = torch.cat(record.features[cond, f])  # (N, d)
            for target in TARGETS:
                y = targets[target]
                fit = regression_probe if target == "dropped_event_tokens" else multilabel_probe
                res = fit(x[tr], y[tr], x[te], y[te])
                if cut.keep == 1.0:
                    res["note"] = "keep = 1: no token dropped, the target is constant"
                out.append(
                    ProbeResult(
                        **record.coordinates(cut, plan.kinds),
                        condition=cond,
                        feature=f,
                        target=target,
                        target_mean=y.mean().item(),
                        **res,
                    )
                )
    return out


def _task_groups(cut: _Cut, record: _CutRecord, relevant: torch.Tensor, plan: _Plan) -> list[TaskGroup]:
    """The multiple-choice accuracy of one configuration in each of
    :data:`analysis.retention_report.GROUPS` (``relevant``: ``(N, V)``)."""
    kept = torch.cat(record.kept)  # (N, V)
    n_rel = relevant.sum(dim=1)
    n_rel_kept = (relevant & kept).sum(dim=1)
    groups = {
        "all": n_rel_kept == n_rel,
        "some": (n_rel_kept > 0) & (n_rel_kept < n_rel),
        "none": (n_rel > 0) & (n_rel_kept == 0),
        "total": torch.ones(plan.n, dtype=torch.bool),
    }
    right = {cond: torch.cat(record.correct[cond]) for cond in CONDITIONS}  # (N,) bool
    out = []
    for g, members in groups.items():
        acc = {cond: _mean_or_none(right[cond][members]) for cond in CONDITIONS}
        out.append(
            TaskGroup(
                **record.coordinates(cut, plan.kinds),
                group=g,
                n=int(members.sum()),
                accuracy=acc["cut"],
                input_drop_accuracy=acc["input_drop"],
                full_accuracy=acc["full"],
            )
        )
    return out


@torch.no_grad()
def retention_probe(
    model: nn.Module,
    dataset,
    blocks: Sequence[int] | None = None,
    keeps: Sequence[float] = (0.25,),
    selectors: Sequence[str] = ("random",),
    n_train: int = 128,
    n_test: int = 64,
    batch_size: int = 16,
    progress: bool = True,
    seed: int = 0,
    scorer: str | dict | None = None,
) -> RetentionReport:
    """Probe how much of the visual tokens dropped at a single cut survives in the kept stream.

    See the module docstring for what is measured. Samples ``0 .. n_train − 1`` of ``dataset`` train the
    probes, ``n_train .. n_train + n_test − 1`` test them; the task accuracy covers all of them. The steps: check
    every argument (:func:`_plan`), run the forwards and collect each condition's features (:func:`_collect`),
    fit each configuration's probes (:func:`_fit_probes`) and count its task groups (:func:`_task_groups`).

    Args:
        model: a :class:`hybridreduce.toy.ToyVLM` (any device; run in eval mode, restored after).
        dataset: the :class:`hybridreduce.toy.ToyDataset` of its benchmark, with at least ``n_train + n_test``
            items.
        blocks: cut blocks ℓ, each in ``[1, L − 1]``; default every attention/Mamba block from block 1.
        keeps: shares of the visual tokens each cut keeps, in ``(0, 1]``.
        selectors: ``progressive`` (unified score), ``random`` (seeded per batch), ``uniform``.
        n_train, n_test: probe split sizes (at least :data:`MIN_TRAIN` and :data:`MIN_TEST`).
        batch_size: samples per forward.
        progress: show a tqdm bar over samples × (1 + configurations).
        seed: seed of the ``random`` selector (batch ``i`` uses ``seed + i``).
        scorer: the Mamba scorer of ``progressive`` (``decay_free`` by default, or ``exact``).

    Returns:
        :class:`RetentionReport`.

    Raises:
        InputError: a model that is not the toy VLM or does not match the dataset, blocks out of range, a keep
            outside ``(0, 1]``, an unknown selector, a ``progressive`` cut with no scoring block before it, or too
            few samples to fit a probe.
    """
    plan = _plan(model, dataset, blocks, keeps, selectors, n_train, n_test, batch_size, seed)
    records, colours, relevant = _collect(model, dataset, plan, scorer, progress)
    cfg = dataset.cfg
    report = RetentionReport(
        blocks=plan.blocks,
        keeps=plan.keeps,
        selectors=plan.selectors,
        block_kinds=plan.kinds,
        n_visual=cfg.n_visual,
        n_train=plan.n_train,
        n_test=plan.n_test,
        colours=list(cfg.colours),
        settings={"seed": plan.seed, "scorer": scorer, "batch_size": plan.batch_size, "split": dataset.split},
    )
    for cut in plan.cuts:
        report.probes += _fit_probes(cut, records[cut], colours, plan, len(cfg.colours))
        report.task += _task_groups(cut, records[cut], relevant, plan)
    return report
