"""Training the embedded toy video VLM (``hybridreduce train-toy``).

One YAML file (``configs/toy.yaml``) holds everything a run depends on, in three sections:

    data:   ToyConfig fields (the benchmark)
    model:  vision_hidden, and ``text`` — NemotronHConfig fields of the language model
    train:  TrainConfig fields (steps, batch size, learning rate, ...)

The objective is cross-entropy on answer words: every training video is followed by ``1 + follow_ups``
questions, each answer after its ``<answer>`` marker (:func:`training_batch`), plus, with
``content_weight``, an auxiliary cross-entropy that reads each visual token's content (its shape's colour,
or background) from the logits at that token. A curriculum can start on shorter videos. Validation and the
final test are :func:`~hybridreduce.toy.evaluate.evaluate_variants` (multiple-choice accuracy,
:class:`~hybridreduce.toy.evaluate.AnswerSheet`).

Optional EVS uptraining (``train.evs_prob``): that share of the batches is trained with Efficient
Video Sampling applied before the language model at a pruning rate drawn uniformly from
``[0, evs_max_rate]``, as EVS-uptrained models are; it teaches the model to answer from a subset of
the visual tokens.

A warm restart (``train.init_from`` or ``--init-from DIR``) starts from a previous run's weights and
position heads with a fresh optimiser and learning-rate schedule, on training items from
``train.data_offset`` on (videos the first run did not see); ``configs/toy_continue.yaml`` is the second
stage of the shipped checkpoint.

A run writes, into its output directory: ``model.safetensors`` + ``config.json`` (``from_pretrained``
loads them), ``train_config.yaml`` (the resolved settings), ``train_log.jsonl`` (one JSON object per
logged step and per evaluation), ``trainer_state.pt`` (optimiser and random state, for ``--resume``) and
``eval.json`` (held-out accuracy at full tokens on the test split).
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from transformers import NemotronHConfig

from .. import rundir, validate
from ..engine import reduce
from ..errors import InputError
from ..rundir import write_text
from ..schedule import Schedule
from ..yamlio import read_yaml
from .config import VARIANTS, ToyConfig, align_lengths
from .dataset import ToyDataset
from .encoding import Vocab, encode_sample, shared_vocab
from .evaluate import accuracy_line, evaluate_variants, evs_inputs
from .model import ToyVLM, ToyVLMConfig
from .questions import QUESTIONS, follow_up_questions, order_starts

#: Where the order hint reads (``TrainConfig.order_hint_at``).
HINT_PLACES = ("answer", "words")

#: The target of a question without an order hint (cross-entropy's default ``ignore_index``).
IGNORE = -100

#: NemotronHConfig fields of the default language model (a 12-block Nemotron-H pattern, width 128).
DEFAULT_TEXT = {
    "hidden_size": 128,
    "layers_block_type": [
        "mamba",
        "mlp",
        "attention",
        "mamba",
        "mlp",
        "mamba",
        "mlp",
        "attention",
        "mamba",
        "mlp",
        "mamba",
        "mlp",
    ],  # fmt: skip
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "intermediate_size": 256,
    "mamba_num_heads": 4,
    "mamba_head_dim": 32,
    "ssm_state_size": 16,
    "n_groups": 1,
    "chunk_size": 64,
}


@dataclass
class TrainConfig:
    """Optimisation settings of :func:`train`.

    Attributes:
        steps: optimiser steps.
        batch_size: samples per step.
        lr: peak AdamW learning rate, reached after ``warmup`` linear steps, then cosine decay to
            ``lr · min_lr_ratio`` at ``steps``.
        weight_decay: AdamW decoupled weight decay (not on norms, biases or embeddings).
        grad_clip: global gradient-norm clip (0: none).
        follow_ups: extra questions about each training video, appended after its answer (``video q1
            <answer> a1 q2 <answer> a2 ...``, see :func:`training_batch`); every ``<answer>`` is supervised,
            so a video forward teaches ``1 + follow_ups`` answers. Evaluation always asks one question.
        curriculum: optional list of stages ``{"steps": n, "data": {ToyConfig overrides}}`` run first, in
            order (e.g. ``{"steps": 200, "data": {"frames": 4, "qtypes": ["colour", "where"]}}``): the benchmark
            with those fields changed in every variant, encoded with the full config's vocabulary; the remaining
            steps use the full config. A stage's ``variants`` (a list of the run's variants) trains on those
            alone (e.g. ``{"variants": ["clutter"], "qtypes": ["when", "order"]}``). Short videos make the first
            retrieval gradients strong (a needle among 64 tokens rather than 512); a model that has learnt to
            look up a (frame, cell) keeps doing so as the videos grow.
        content_weight: weight of an auxiliary loss that reads every visual token's content (its shape's
            colour word, or ``<video>`` for background) from the language model's logits at that token. It
            is dense supervision (512 labels per video against 8 answers): without it a small model sits at
            the answer prior for hundreds of steps, because no gradient yet says which tokens matter.
        position_weight: weight of auxiliary heads (:class:`PositionHeads`, used in training only and not part
            of the saved model) that read each visual token's frame and cell from its final hidden state.
            Without them the visual stream loses where and when a token was within a few blocks (on a run
            without them, a linear probe finds a token's quadrant at 98% in the embeddings and at chance from
            block 3 on) and no answer that needs a place or a time can be learnt.
        evs_prob: share of batches trained under EVS (0: never).
        evs_max_rate: the EVS pruning rate of such a batch is uniform in ``[0, evs_max_rate]``.
        reduce_prob: share of batches trained under in-LM reduction (:func:`hybridreduce.reduce` inside the
            language model; DESIGN decision 11), drawn after and exclusive of EVS batches (``evs_prob +
            reduce_prob <= 1``). Each such batch draws a schedule (:func:`random_training_schedule`): an average
            keep uniform in ``reduce_keep``, a random layout, and keep sets chosen by the model's own unified
            scores from the question words (answers excluded), or at random with probability ``reduce_random``.
        reduce_keep: inclusive ``[min, max]`` average keep of an in-LM reduced batch, in ``(0, 1]``.
        reduce_random: share of in-LM reduced batches whose keep sets are random drops instead of top scores.
        order_hint_weight: weight of training-only heads (:class:`OrderHintHeads`) that read, from the final
            hidden state at the ``<answer>`` of every ``order`` question (``did A appear before B``), the first
            frame of shape A and of shape B. The answer needs both times at that position, and a linear probe
            finds neither there on a model trained without the hint (``scripts/order_probe.py``: held-out R²
            about 0 for both at every block, against 0.88 for the one shape of a ``when`` question), so the
            one-bit answer alone gives no gradient towards fetching them; the hint supervises the retrieval and
            leaves the comparison to the answer. 0: off.
        order_hint_at: where the hint reads: ``"answer"`` (both frames from the state at ``<answer>``) or
            ``"words"`` (each frame from the state at the colour word that names its shape: a one-hop lookup
            like the one a ``when`` question makes, leaving ``<answer>`` to fetch and compare the two).
        log_every: steps between training-loss log lines.
        eval_every: steps between validation evaluations (the checkpoint is saved at each).
        eval_size: validation questions per evaluation (split ``val``).
        test_size: held-out questions of the final evaluation (split ``test``).
        seed: seeds the weights, the order of the training samples and the EVS draws.
        threads: torch CPU threads (None: torch's default).
        init_from: a previous ``train-toy`` output directory to start from (a warm restart): its weights,
            and its position heads when its ``trainer_state.pt`` has them, replace the fresh ones; the
            optimiser and the learning-rate schedule start anew. Its model config must equal this spec's.
        data_offset: index of the first training item of the full config in the ``train`` split. A warm
            restart sets it past the items its first run used (``steps − curriculum steps`` ×
            ``batch_size``), so it trains on videos it has not seen.
        init_layers: depth up-scaling from ``init_from``: for every block of this model, the index of the
            ``init_from`` block whose weights it starts from, or ``None`` for a new block that starts as the
            identity (its mixer's output projection is zero, so the residual stream passes unchanged). Blocks
            must be of the same type as their source. Everything outside the blocks (vision encoder,
            projector, embeddings, final norm, output head, position heads) is copied; vocabulary rows the
            source lacks (words of a larger vocabulary, appended at the end) keep their fresh initialisation.
    """

    steps: int = 2000
    batch_size: int = 32
    lr: float = 3e-3
    warmup: int = 100
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    follow_ups: int = 0
    curriculum: list | None = None
    content_weight: float = 0.0
    position_weight: float = 0.0
    evs_prob: float = 0.0
    evs_max_rate: float = 0.9
    reduce_prob: float = 0.0
    reduce_keep: list = field(default_factory=lambda: [0.1, 1.0])
    reduce_random: float = 0.25
    order_hint_weight: float = 0.0
    order_hint_at: str = "answer"
    log_every: int = 10
    eval_every: int = 200
    eval_size: int = 256
    test_size: int = 1024
    seed: int = 0
    threads: int | None = None
    init_from: str | None = None
    data_offset: int = 0
    init_layers: list | None = None

    def __post_init__(self):
        for name in ("steps", "batch_size", "log_every", "eval_every", "eval_size", "test_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"train.{name} must be a positive integer, got {value!r}")
        for name in ("follow_ups", "data_offset"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InputError(f"train.{name} must be an integer >= 0, got {value!r}")
        if self.init_from is not None and not isinstance(self.init_from, str):
            raise InputError(f"train.init_from must be a train-toy output directory, got {self.init_from!r}")
        if self.init_layers is not None:
            if not isinstance(self.init_layers, list) or any(
                v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0) for v in self.init_layers
            ):
                raise InputError(
                    "train.init_layers must be a list with one entry per block: a source block index (int >= 0) "
                    f"or null for a new identity block, got {self.init_layers!r}"
                )
            if self.init_from is None:
                raise InputError("train.init_layers grows the model of train.init_from: set init_from too")
        stages = self.curriculum or []
        if not isinstance(stages, list) or any(
            not isinstance(st, dict)
            or set(st) - {"steps", "data"}
            or not isinstance(st.get("steps"), int)
            or st["steps"] < 1
            or not isinstance(st.get("data", {}), dict)
            for st in stages
        ):
            raise InputError(
                f"train.curriculum must be a list of {{steps: n, data: {{ToyConfig overrides}}}} stages, "
                f"got {self.curriculum!r}"
            )
        if sum(st["steps"] for st in stages) >= self.steps:
            raise InputError(
                f"train.curriculum stages take all of train.steps = {self.steps}; leave steps for the full config"
            )
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise InputError(f"train.lr must be a positive number, got {self.lr!r}")
        if not 0.0 <= self.evs_prob <= 1.0 or not 0.0 <= self.evs_max_rate < 1.0:
            raise InputError(
                f"train.evs_prob must be in [0, 1] and train.evs_max_rate in [0, 1), got {self.evs_prob!r} "
                f"and {self.evs_max_rate!r}"
            )
        for name in ("reduce_prob", "reduce_random"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise InputError(f"train.{name} must be a probability in [0, 1], got {value!r}")
        if self.order_hint_at not in HINT_PLACES:
            raise InputError(f"train.order_hint_at must be one of {list(HINT_PLACES)}, got {self.order_hint_at!r}")
        for name in ("content_weight", "position_weight", "order_hint_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0.0:
                raise InputError(f"train.{name} must be a number >= 0 (0: off), got {value!r}")
        if self.evs_prob + self.reduce_prob > 1.0:
            raise InputError(
                f"train.evs_prob + train.reduce_prob = {self.evs_prob + self.reduce_prob} > 1: a batch is trained "
                "under EVS, under in-LM reduction or at full tokens; lower one of them"
            )
        keep = self.reduce_keep
        if (
            not isinstance(keep, (list, tuple))
            or len(keep) != 2
            or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in keep)
            or not 0.0 < keep[0] <= keep[1] <= 1.0
        ):
            raise InputError(f"train.reduce_keep must be [min, max] with 0 < min <= max <= 1, got {keep!r}")


@dataclass
class ToySpec:
    """A whole training run: the benchmark, the model and the optimisation.

    Attributes:
        data: the benchmark config (with ``variants``: the settings every variant shares).
        variants: benchmark variants (:data:`~hybridreduce.toy.config.VARIANTS`) trained on together, in equal
            shares, each ``ToyConfig.preset(variant, **data fields, **its overrides)``; empty: ``data`` alone.
            In YAML a list of names, or a mapping name → ToyConfig overrides of that variant alone.
        variant_overrides: variant → the ToyConfig fields set for it alone.
    """

    data: ToyConfig
    text: dict
    vision_hidden: int
    train: TrainConfig
    variants: tuple[str, ...] = ()
    variant_overrides: dict = field(default_factory=dict)
    _given_data: dict = field(default_factory=dict, repr=False)  # the data section as written (presets apply to it)

    def __post_init__(self):
        if isinstance(self.variants, str) or not all(v in VARIANTS for v in self.variants):
            raise InputError(f"data.variants must be a list drawn from {VARIANTS}, got {self.variants!r}")
        if len(set(self.variants)) != len(self.variants):
            raise InputError(f"data.variants lists a variant twice: {list(self.variants)}")
        self.variants = tuple(self.variants)

    @property
    def configs(self) -> list[ToyConfig]:
        """The benchmark config of every variant trained on (``[data]`` without variants), of one length."""
        if not self.variants:
            return [self.data]
        return align_lengths(
            [ToyConfig.preset(v, **{**self._given_data, **self.variant_overrides.get(v, {})}) for v in self.variants]
        )

    @property
    def vocab(self) -> Vocab:
        """The vocabulary covering every variant (the model's embedding table)."""
        return shared_vocab(self.configs)

    def to_dict(self) -> dict:
        if self.variants:
            data = {k: list(v) if isinstance(v, tuple) else v for k, v in self._given_data.items()}
            data["variants"] = {v: dict(self.variant_overrides.get(v, {})) for v in self.variants}
        else:
            data = {f.name: getattr(self.data, f.name) for f in fields(ToyConfig) if f.init}
            data = {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}
        return {
            "data": data,
            "model": {"vision_hidden": self.vision_hidden, "text": dict(self.text)},
            "train": asdict(self.train),
        }


def _section(raw: dict, name: str, path) -> dict:
    value = raw.get(name) or {}
    if not isinstance(value, dict):
        raise InputError(f"{path}: section {name!r} must be a mapping of settings, got {type(value).__name__}")
    return value


def _build(cls, kwargs: dict, where: str):
    known = {f.name for f in fields(cls) if f.init}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise InputError(f"{where} has unknown settings {unknown}; known: {sorted(known)}")
    return cls(**kwargs)


def spec_from_dict(raw: dict, path: str = "<dict>") -> ToySpec:
    """A :class:`ToySpec` from the three-section mapping of ``configs/toy.yaml``; every error names ``path``."""
    try:
        return _spec_from_dict(raw, path)
    except InputError as exc:
        if str(exc).startswith(str(path)):
            raise
        raise type(exc)(f"{path}: {exc}") from None
    except (TypeError, ValueError, OverflowError) as exc:  # a setting of the wrong type reached a constructor
        raise InputError(f"{path}: {type(exc).__name__}: {exc}; check the types of the settings") from None


def _spec_from_dict(raw: dict, path: str) -> ToySpec:
    if not isinstance(raw, dict):
        raise InputError(f"{path} must hold a mapping with sections data, model and train")
    unknown = sorted(set(raw) - {"data", "model", "train"})
    if unknown:
        raise InputError(f"{path} has unknown sections {unknown}; use data, model and train")
    model = dict(_section(raw, "model", path))
    text = {**DEFAULT_TEXT, **_section(model, "text", path)}
    vision_hidden = model.pop("vision_hidden", 64)
    model.pop("text", None)
    if model:
        raise InputError(f"{path}: model has unknown settings {sorted(model)}; known: vision_hidden, text")
    data = dict(_section(raw, "data", path))
    variants = data.pop("variants", None) or {}
    if isinstance(variants, (list, tuple)):
        variants = {v: {} for v in variants}
    if not isinstance(variants, dict) or any(not isinstance(o, dict) for o in variants.values() if o is not None):
        raise InputError(
            f"{path}: data.variants must be a list drawn from {VARIANTS} or a mapping variant -> its own ToyConfig "
            f"overrides, got {variants!r}"
        )
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise InputError(f"{path}: data.variants has unknown variants {bad}; choose from {VARIANTS}")
    overrides = {v: dict(o or {}) for v, o in variants.items()}
    base = _build(ToyConfig, data, f"{path}: data")
    for v, o in overrides.items():  # validates every variant's settings now, with the field names in the message
        _build(ToyConfig, {**data, **o}, f"{path}: data.variants.{v}")
        base = base if v != next(iter(overrides)) else ToyConfig.preset(v, **{**data, **o})
    return ToySpec(
        data=base,
        text=text,
        vision_hidden=validate.integer(vision_hidden, "model.vision_hidden", 1, fix="the vision encoder's width"),
        train=_build(TrainConfig, _section(raw, "train", path), f"{path}: train"),
        variants=tuple(overrides),
        variant_overrides=overrides,
        _given_data=data,
    )


def load_spec(path: str | Path) -> ToySpec:
    """Read a training config (see the module docstring)."""
    raw = read_yaml(path, "training config", hint="the default is configs/toy.yaml")
    return spec_from_dict(raw, str(path))


def build_model(spec: ToySpec, seed: int | None = None) -> ToyVLM:
    """A freshly initialised :class:`ToyVLM` for the spec's benchmark (vocabulary and video geometry)."""
    vocab = spec.vocab
    text = NemotronHConfig(
        vocab_size=vocab.size,
        pad_token_id=vocab.pad_id,
        bos_token_id=vocab.bos_id,
        eos_token_id=vocab.answer_marker_id,
        **spec.text,
    )
    config = ToyVLMConfig(
        text_config=text,
        frames=spec.data.frames,
        rows=spec.data.rows,
        cols=spec.data.cols,
        patch=spec.data.patch,
        vision_hidden=spec.vision_hidden,
        video_token_id=vocab.video_id,
    )
    torch.manual_seed(spec.train.seed if seed is None else seed)
    return ToyVLM(config)


# --- model forwards -----------------------------------------------------------------------------------------


def _lm_forward(
    model: ToyVLM,
    batch: dict,
    evs_rate: float,
    logits_to_keep: int = 0,
    hidden_states: bool = False,
    schedule: Schedule | None = None,
):
    """``(output, input ids of the rows the model returned, positions of those rows in the prompt or None)``.

    After EVS when ``evs_rate > 0``; under in-LM reduction with ``schedule`` (scores from ``batch["query_mask"]``),
    whose output covers only the tokens the last block carried.
    """
    kw = {"logits_to_keep": logits_to_keep, "use_cache": False, "output_hidden_states": hidden_states}
    if evs_rate > 0:
        r = evs_inputs(model, batch, evs_rate)
        out = model(inputs_embeds=r.inputs, attention_mask=r.attention_mask, **kw)
        return out, batch["input_ids"].gather(1, r.kept_index), r.kept_index
    inputs = {"pixel_values": batch["pixels"], "attention_mask": batch["attention_mask"], **kw}
    if schedule is not None:
        with reduce(model, schedule, query_mask=batch["query_mask"]) as red:
            out = model(batch["input_ids"], **inputs)
        rows = red.output_positions
        return out, batch["input_ids"].gather(1, rows), rows
    return model(batch["input_ids"], **inputs), batch["input_ids"], None


def random_training_schedule(rng: np.random.Generator, cfg: TrainConfig, num_blocks: int) -> Schedule:
    """The in-LM reduction of one training batch (see ``TrainConfig.reduce_prob``).

    An average keep ``k`` uniform in ``reduce_keep``; 1 to 3 geometric stages whose first cut lies uniformly
    in the blocks that an average of ``k`` can afford (a first cut after ``f`` of the depth keeps every token
    there, so ``f < k``); top-k of the unified scores, or a seeded random keep set with probability
    ``reduce_random``. The first block always carries every token, so ``k`` is raised to just above
    ``1 / num_blocks`` on a model too shallow for it.
    """
    keep = max(float(rng.uniform(*cfg.reduce_keep)), 1.1 / num_blocks)
    stages = int(rng.integers(1, 4))
    latest = max(1, min(num_blocks - stages, int(0.9 * keep * num_blocks)))
    first = int(rng.integers(1, latest + 1))
    method = "random" if rng.random() < cfg.reduce_random else "progressive"
    seed = int(rng.integers(2**31))
    for first_prune in (first, 1):  # the solver may find no ratios for a late first cut; cut after block 0 then
        sched = Schedule(method=method, keep=keep, first_prune=first_prune, stages=stages, seed=seed)
        try:
            sched.resolve(num_blocks)
            return sched
        except InputError:
            continue
    return Schedule(method=method, keep=keep, first_prune=1, stages=1, seed=seed)  # feasible for any keep > 1/depth


def training_batch(dataset: ToyDataset | VariantMix, indices, follow_ups: int, rng: np.random.Generator) -> dict:
    """A training batch whose every video is followed by ``1 + follow_ups`` questions and answers.

    Each sample is ``<bos> video q1 <answer> a1 q2 <answer> a2 … qK <answer>`` (q1 the dataset's own
    balanced question, the others from :func:`~hybridreduce.toy.questions.follow_up_questions`), left-padded to
    the longest sample of the batch. The answer after each ``<answer>`` is its target.

    Returns:
        ``input_ids``, ``attention_mask`` ``(b, T)``, ``pixels`` ``(b, F, 3, H·P, W·P)``, ``visual_mask``
        ``(b, T)``, ``targets`` ``(b, 1 + follow_ups)`` — the answer ids in marker order — and ``hints``
        ``(b, 1 + follow_ups, 2)``: for an ``order`` question the first frames of the two shapes it names
        (:func:`~hybridreduce.toy.questions.order_starts`), :data:`IGNORE` for every other question.
    """
    vocab = dataset.vocab
    rows, targets, pixels, contents, hints = [], [], [], [], []
    for i in indices:
        source, j = _entry(dataset, int(i))
        cfg = source.cfg
        tpf = cfg.tokens_per_frame
        sample = source[j]
        enc = encode_sample(sample, vocab, cfg)
        content = torch.full((cfg.n_visual,), vocab.video_id, dtype=torch.long)  # background: "<video>"
        for event in sample.events:
            for t, r, c in event.tokens:
                content[t * tpf + r * cfg.cols + c] = vocab.token_id(event.colour)
        contents.append(content)
        ids = enc["input_ids"][enc["attention_mask"].bool()].tolist()  # without the left padding
        answers = [enc["answer_id"]]
        questions = [(sample.question, sample.qtype)]
        for words, qtype, answer in follow_up_questions(sample, cfg, rng, follow_ups):
            ids += [answers[-1], *vocab.encode(words), vocab.answer_marker_id]
            answers.append(vocab.token_id(answer))
            questions.append((words, qtype))
        rows.append(ids)
        targets.append(answers)
        hints.append([order_starts(w, sample.events) if q == "order" else (IGNORE, IGNORE) for w, q in questions])
        pixels.append(enc["pixels"])
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), vocab.pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for k, r in enumerate(rows):
        input_ids[k, width - len(r) :] = torch.tensor(r)
        attention_mask[k, width - len(r) :] = 1
    visual_mask = input_ids == vocab.video_id
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "pixels": torch.stack(pixels),
        "visual_mask": visual_mask,
        "query_mask": _question_mask(input_ids, attention_mask, visual_mask, vocab.answer_marker_id),
        "targets": torch.tensor(targets, dtype=torch.long),
        "contents": torch.stack(contents),
        "hints": torch.tensor(hints, dtype=torch.long),
    }


def _question_mask(ids: torch.Tensor, attention_mask: torch.Tensor, visual_mask: torch.Tensor, marker: int):
    """``(b, T)`` bool: the question words and markers after the video, not the answers that follow markers.

    The query rows of in-LM reduction while training: scoring from the answer words would choose keep sets
    with knowledge no question at test time has.
    """
    pos = torch.arange(ids.shape[1]).expand_as(ids)
    after_video = pos > torch.where(visual_mask, pos, -1).amax(dim=1, keepdim=True)
    follows_marker = torch.zeros_like(visual_mask)
    follows_marker[:, 1:] = ids[:, :-1] == marker
    return after_video & attention_mask.bool() & ~follows_marker


class VariantMix:
    """Training items of several benchmark variants of one video geometry, interleaved in equal shares.

    Item ``i`` is item ``i // n`` of ``datasets[i % n]`` (``n`` datasets), so any run of ``n`` consecutive
    items holds one of each variant. All datasets share one vocabulary
    (:func:`~hybridreduce.toy.encoding.shared_vocab`).
    """

    def __init__(self, datasets: list[ToyDataset]):
        if not datasets or len({d.vocab.size for d in datasets}) != 1:
            raise InputError("VariantMix needs datasets that share one vocabulary (ToyDataset(..., vocab=shared))")
        self.datasets, self.vocab = datasets, datasets[0].vocab

    def __len__(self) -> int:
        return min(len(d) for d in self.datasets) * len(self.datasets)

    def entry(self, i: int) -> tuple[ToyDataset, int]:
        """``(dataset, index in it)`` of item ``i``."""
        n = len(self.datasets)
        return self.datasets[i % n], i // n


def _entry(dataset: ToyDataset | VariantMix, i: int) -> tuple[ToyDataset, int]:
    return dataset.entry(i) if isinstance(dataset, VariantMix) else (dataset, i)


class PositionHeads(nn.Module):
    """Training-only linear read-outs of a visual token's frame and cell from its final hidden state."""

    def __init__(self, config: ToyVLMConfig) -> None:
        super().__init__()
        d = config.text_config.hidden_size
        self.frame = nn.Linear(d, config.frames)
        self.cell = nn.Linear(d, config.rows * config.cols)

    def loss(self, hidden: torch.Tensor, visual_index: torch.Tensor, tokens_per_frame: int) -> torch.Tensor:
        """Mean cross-entropy of frame and cell. hidden: ``(n_rows, d)``; visual_index: ``(n_rows,)`` index in
        ``0..V-1``."""
        frame, cell = visual_index // tokens_per_frame, visual_index % tokens_per_frame
        return F.cross_entropy(self.frame(hidden).float(), frame) + F.cross_entropy(self.cell(hidden).float(), cell)


class OrderHintHeads(nn.Module):
    """Training-only linear read-outs of the first frames of the two shapes an ``order`` question names: the one
    named first (``first``) and second (``second``), from the final hidden state at its ``<answer>`` or at each
    shape's colour word (``at``; see ``TrainConfig.order_hint_weight``).
    """

    def __init__(self, config: ToyVLMConfig, at: str = "answer") -> None:
        super().__init__()
        d = config.text_config.hidden_size
        self.first = nn.Linear(d, config.frames)
        self.second = nn.Linear(d, config.frames)
        template = QUESTIONS["order"].template
        slots = [i - len(template) for i, w in enumerate(template) if w in ("{colour}", "{later}")]
        #: offsets from the ``<answer>`` marker of the rows each head reads
        self.offsets = (0, 0) if at == "answer" else tuple(slots)

    def loss(self, hidden: torch.Tensor, markers: tuple[torch.Tensor, torch.Tensor], hints: torch.Tensor):
        """Cross-entropy of both frames, averaged over the order questions (0 when there are none).

        hidden: ``(b, T', d)`` final states; markers: ``(rows, positions)`` of the ``n`` ``<answer>`` markers, in
        question order; hints: ``(n, 2)`` their targets, :data:`IGNORE` for questions of other types."""
        asked = hints[:, 0] != IGNORE
        if not asked.any():
            return hidden.sum() * 0.0  # keeps the graph (and every parameter's grad) defined
        rows, positions = markers[0][asked], markers[1][asked]
        t = hints[asked]
        total = hidden.new_zeros((), dtype=torch.promote_types(hidden.dtype, torch.float32))
        for head, offset, target in ((self.first, self.offsets[0], t[:, 0]), (self.second, self.offsets[1], t[:, 1])):
            logits = head(hidden[rows, positions + offset])
            total = total + F.cross_entropy(logits.to(total.dtype), target)  # bfloat16 logits in float32
        return total


class TrainingLosses(NamedTuple):
    """The terms of one training batch's loss (see :func:`training_losses`)."""

    answer: torch.Tensor
    content: torch.Tensor
    position: torch.Tensor
    order_hint: torch.Tensor


def training_losses(
    model: ToyVLM,
    batch: dict,
    evs_rate: float = 0.0,
    with_content: bool = True,
    heads: PositionHeads | None = None,
    schedule: Schedule | None = None,
    hint_heads: OrderHintHeads | None = None,
) -> TrainingLosses:
    """The mean cross-entropies of a :func:`training_batch` (after EVS if ``evs_rate``, under in-LM reduction with
    ``schedule``; the content and position losses then cover the visual tokens the last block carried).

    ``answer``: every answer after its ``<answer>`` marker. ``content``: every visual token's content (its
    shape's colour word or ``<video>``) read from the logits at that token (0 unless ``with_content``).
    ``position``: every visual token's frame and cell read by ``heads`` from its final hidden state (0
    without heads). ``order_hint``: the two named shapes' first frames read by ``hint_heads`` from the final
    hidden state at every ``order`` question's marker (0 without hint heads).
    """
    marker = model.config.text_config.eos_token_id  # <answer>, see build_model
    states = heads is not None or hint_heads is not None
    out, ids, rows = _lm_forward(model, batch, evs_rate, hidden_states=states, schedule=schedule)
    V = batch["contents"].shape[1]
    visual_index = torch.arange(V).expand(len(ids), V)  # (b, V): index of each visual row among the V tokens
    if rows is not None:
        kept_visual = rows[batch["visual_mask"].gather(1, rows)].view(len(ids), -1)  # (b, k) prompt positions
        visual_index = _visual_rank(batch["visual_mask"], kept_visual)
    logits = out.logits[ids == marker]  # (b · n_questions, vocab), sample-major, in sequence order
    answer = F.cross_entropy(logits.float(), batch["targets"].reshape(-1))
    zero = torch.zeros(())
    is_visual = ids == model.config.video_token_id
    content = zero
    if with_content:
        contents = batch["contents"].gather(1, visual_index)
        content = F.cross_entropy(out.logits[is_visual].float(), contents.reshape(-1))
    position = zero
    if heads is not None:
        tpf = model.config.rows * model.config.cols
        position = heads.loss(out.hidden_states[-1][is_visual], visual_index.reshape(-1), tpf)
    order_hint = zero
    if hint_heads is not None:
        markers = (ids == marker).nonzero(as_tuple=True)  # row-major: the order of batch["targets"]
        order_hint = hint_heads.loss(out.hidden_states[-1], markers, batch["hints"].reshape(-1, 2))
    return TrainingLosses(answer, content, position, order_hint)


def _visual_rank(visual_mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``(b, k)`` index among the visual tokens of each of ``positions`` ``(b, k)`` (prompt positions)."""
    rank = visual_mask.long().cumsum(dim=1) - 1  # (b, T): visual index at visual positions
    return rank.gather(1, positions)


# --- training -------------------------------------------------------------------------------------------------


def _treatment(rng: np.random.Generator, cfg: TrainConfig, model: ToyVLM) -> tuple[float, Schedule | None]:
    """``(EVS rate, in-LM schedule)`` of one batch: EVS with ``evs_prob``, in-LM reduction with ``reduce_prob``.

    Without in-LM reduction the draws are exactly those of earlier versions (runs stay reproducible)."""
    u = rng.random()
    if u < cfg.evs_prob:
        return float(rng.uniform(0, cfg.evs_max_rate)), None
    if cfg.reduce_prob and u < cfg.evs_prob + cfg.reduce_prob:
        return 0.0, random_training_schedule(rng, cfg, model.config.text_config.num_hidden_layers)
    return 0.0, None


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimiser step ``step`` (0-based): linear warm-up, then cosine decay."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    done = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, done)))


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.dim() < 2 or "embed" in name or "norm" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train(
    spec: ToySpec,
    out_dir: str | Path,
    progress: bool = True,
    command: str | None = None,
    resume: bool = False,
    max_minutes: float | None = None,
    branch_from: str | Path | None = None,
) -> dict | None:
    """Train a :class:`ToyVLM` on the spec's benchmark and write the run into ``out_dir``.

    Training items are ``ToyDataset(spec.data, "train", steps · batch_size)`` in a seeded random order
    (every question is new; curriculum stages have their own datasets); validation uses the ``val``
    split, the final held-out evaluation the ``test`` split (different seeds, so different videos).

    At every evaluation the model, the optimiser state and the random state are saved
    (``trainer_state.pt``), so a run stopped by ``max_minutes`` (or killed) continues with
    ``resume=True`` exactly where it was saved: resumed and uninterrupted runs give the same weights.

    Args:
        spec: the run (see :func:`load_spec`).
        out_dir: where the checkpoint, config, log and final evaluation go (created if needed).
        progress: show a tqdm bar.
        command: the command line to record in the log (what made the checkpoint).
        resume: continue the run saved in ``out_dir`` (its ``train_config.yaml`` must equal ``spec``).
        max_minutes: stop at the first evaluation after this much wall time (state saved; resume later).
        branch_from: start from the state another run saved at its last evaluation (weights, optimiser, step and
            random state, and its log up to that step, are copied into ``out_dir``), continuing under ``spec``,
            which may change only the settings in :data:`BRANCH_SETTINGS` (:func:`branch_run`). Up to the saved
            step the branch is that run; the two differ only after it, e.g. in in-LM reduction (the ablation).
    Returns:
        The final evaluation (:func:`~hybridreduce.toy.evaluate.evaluate` on the test split) with ``steps``,
        ``seconds`` and ``parameters`` added, also written to ``eval.json``; ``None`` when stopped by ``max_minutes``.
    """
    import yaml
    from tqdm.auto import tqdm

    cfg = spec.train
    if cfg.order_hint_weight > 0 and not any("order" in c.qtypes for c in spec.configs):
        raise InputError(
            "train.order_hint_weight > 0 supervises order questions, and no variant asks them; add clutter to "
            "data.variants or set it to 0"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    state_path = out / "trainer_state.pt"
    if branch_from is not None:
        if resume:
            raise InputError("branch_from starts a new run from another run's state; it cannot also resume one")
        branched = branch_run(spec, branch_from, out)
        resume = True
    if resume:
        if not state_path.is_file():
            raise InputError(f"nothing to resume in {out}: no trainer_state.pt (start the run without --resume)")
        saved = read_yaml(out / "train_config.yaml", "the run's training config")
        if saved != _as_saved_by(saved, yaml.safe_load(yaml.safe_dump(spec.to_dict(), sort_keys=False))):
            raise InputError(f"{out}/train_config.yaml differs from the given config; resume with the run's own config")

    model = build_model(spec)
    n_params = sum(p.numel() for p in model.parameters())
    stages = _stages(spec)
    val_sets = [ToyDataset(c, "val", cfg.eval_size, vocab=spec.vocab) for c in spec.configs]
    rng = np.random.default_rng((cfg.seed, 7))
    orders = [rng.permutation(len(ds)) for _, ds in stages[:-1]]
    orders.append(cfg.data_offset + rng.permutation(len(stages[-1][1]) - cfg.data_offset))
    heads = PositionHeads(model.config) if cfg.position_weight > 0 else None  # seeded after build_model's weights
    hint_heads = OrderHintHeads(model.config, cfg.order_hint_at) if cfg.order_hint_weight > 0 else None  # then these
    groups = _param_groups(model, cfg.weight_decay)
    for extra in (heads, hint_heads):
        if extra is not None:
            groups.append({"params": list(extra.parameters()), "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))
    done = 0
    if cfg.init_from is not None and not resume:
        _warm_start(model, heads, cfg.init_from, cfg.init_layers, hint_heads)
    if resume:
        state = torch.load(state_path, weights_only=False)
        model.load_state_dict(ToyVLM.from_pretrained(out).state_dict())
        opt.load_state_dict(state["optimizer"])
        if heads is not None:
            heads.load_state_dict(state["position_heads"])
        if hint_heads is not None:
            hint_heads.load_state_dict(state["order_hint_heads"])
        rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        done = state["step"]
    model.train()
    if not resume:  # only now, once init_from has loaded: a run that failed to start leaves no run behind
        write_text(out / "train_config.yaml", yaml.safe_dump(spec.to_dict(), sort_keys=False))
    elif done >= cfg.steps:
        print(f"{out}: the run has finished all {cfg.steps} steps; nothing to train, evaluating it again",
              file=sys.stderr)  # fmt: skip

    log = (out / "train_log.jsonl").open("a" if resume else "w")

    def write(record: dict) -> None:
        log.write(json.dumps(record) + "\n")
        log.flush()

    event = "branch" if branch_from is not None else "resume" if resume else "start"
    extra = {"from": str(branch_from), "changed": branched} if branch_from is not None else {}
    write({"event": event, "step": done, "command": command, "parameters": n_params, **extra,
           "config": spec.to_dict()})  # fmt: skip
    start = time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=done, desc="train-toy", disable=not progress, dynamic_ncols=True)
    running: list[tuple[float, float]] = []
    for step in range(done, cfg.steps):
        lr = lr_at(step, cfg)
        for group in opt.param_groups:
            group["lr"] = lr
        k = max(i for i, (begin, _) in enumerate(stages) if step >= begin)
        (first_step, train_set), order = stages[k], orders[k]
        idx = order[(step - first_step) * cfg.batch_size : (step - first_step + 1) * cfg.batch_size]
        batch = training_batch(train_set, idx, cfg.follow_ups, rng)
        rate, schedule = _treatment(rng, cfg, model)
        answer, content, position, order_hint = training_losses(
            model,
            batch,
            evs_rate=rate,
            with_content=cfg.content_weight > 0,
            heads=heads,
            schedule=schedule,
            hint_heads=hint_heads,
        )
        loss = answer + cfg.content_weight * content + cfg.position_weight * position
        loss = loss + cfg.order_hint_weight * order_hint
        if not torch.isfinite(loss):
            raise RuntimeError(f"training loss became {loss.item()} at step {step}; lower train.lr (now {cfg.lr})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        params = [*model.parameters(), *(p for m in (heads, hint_heads) if m is not None for p in m.parameters())]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip or float("inf"))
        opt.step()
        running.append((answer.item(), content.item(), position.item(), order_hint.item()))
        bar.update(1)
        recent = np.mean(running[-cfg.log_every :], axis=0)
        bar.set_postfix(answer_loss=f"{recent[0]:.3f}")
        if (step + 1) % cfg.log_every == 0:
            write(
                {
                    "event": "train",
                    "step": step + 1,
                    "answer_loss": float(recent[0]),
                    "content_loss": float(recent[1]),
                    "position_loss": float(recent[2]),
                    **({"order_hint_loss": float(recent[3])} if hint_heads is not None else {}),
                    "lr": lr,
                    "grad_norm": float(grad_norm),
                    "frames": int(_entry(train_set, 0)[0].cfg.frames),
                    "seconds": round(time.perf_counter() - start, 1),
                }
            )
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            result = evaluate_variants(model, val_sets)
            write({"event": "eval", "split": "val", "step": step + 1, **result})
            bar.write(accuracy_line(f"step {step + 1} val", result))
            state = {"step": step + 1, "optimizer": opt.state_dict(), "rng": rng.bit_generator.state}
            if heads is not None:
                state["position_heads"] = heads.state_dict()
            if hint_heads is not None:
                state["order_hint_heads"] = hint_heads.state_dict()
            state["torch_rng"] = torch.get_rng_state()
            _save_checkpoint(model, out, state)
            if max_minutes is not None and step + 1 < cfg.steps and time.perf_counter() - start > 60 * max_minutes:
                write({"event": "stop", "step": step + 1, "reason": f"max_minutes={max_minutes}"})
                bar.close()
                log.close()
                return None
    bar.close()

    test_sets = [ToyDataset(c, "test", cfg.test_size, vocab=spec.vocab) for c in spec.configs]
    final = evaluate_variants(model, test_sets)
    final.update(
        {"split": "test", "steps": cfg.steps, "seconds": round(time.perf_counter() - start, 1), "parameters": n_params}
    )
    write({"event": "eval", **final})
    log.close()
    write_text(out / "eval.json", json.dumps(final, indent=2) + "\n")
    _save_checkpoint(model, out)
    return final


def _save_checkpoint(model: ToyVLM, out: Path, state: dict | None = None) -> None:
    """``save_pretrained`` and (given) ``trainer_state.pt`` into a staging folder, then each moved into ``out`` by
    an atomic rename: a kill or a full disk leaves the previous checkpoint, never a truncated one."""

    def write(staging: Path) -> list[Path]:
        model.save_pretrained(staging)
        if state is not None:
            torch.save(state, staging / "trainer_state.pt")
        return sorted(staging.iterdir())

    rundir.stage(out, write)


#: The train settings a branch (:func:`branch_run`) may change: what a batch is treated with, and what is evaluated
#: and logged. Everything else (model, data, optimiser, schedule, curriculum, seed) fixes which items each step draws
#: and how the weights move, so changing it would not continue the same run.
BRANCH_SETTINGS = (
    "evs_prob", "evs_max_rate", "reduce_prob", "reduce_keep", "reduce_random", "content_weight",
    "log_every", "eval_every", "eval_size", "test_size", "threads",
)  # fmt: skip

#: Files of a run that a branch copies (the log is copied up to the saved step).
_RUN_FILES = ("model.safetensors", "config.json", "generation_config.json", "trainer_state.pt")


def branch_run(spec: ToySpec, source: str | Path, out: Path) -> dict:
    """Copy the state that the run in ``source`` saved at its last evaluation into ``out``, to continue under ``spec``.

    ``spec`` may differ from the source's ``train_config.yaml`` only in :data:`BRANCH_SETTINGS`; ``out`` must not
    hold a run. The source's log is copied up to the saved step (records of steps it trained past the checkpoint are
    dropped: the branch never took them), and ``out/train_config.yaml`` is ``spec``. Returns the changed settings,
    ``{name: [source's, spec's]}``.
    """
    import shutil

    import yaml

    src = Path(source)
    if not (src / "trainer_state.pt").is_file() or not (src / "train_config.yaml").is_file():
        raise InputError(
            f"branch from {src}: not a train-toy run with saved state (no trainer_state.pt and train_config.yaml; "
            "a run saves them at every evaluation)"
        )
    if src.resolve() == out.resolve():
        raise InputError(f"branch from {src} into itself; choose another --out (or continue the run with --resume)")
    held = [n for n in (*_RUN_FILES, "train_config.yaml", "train_log.jsonl") if (out / n).exists()]
    if held:
        raise InputError(f"{out} already holds a train-toy run ({', '.join(held)}); branch into an empty --out")
    saved = read_yaml(src / "train_config.yaml", "the source run's training config")
    mine = yaml.safe_load(yaml.safe_dump(spec.to_dict(), sort_keys=False))
    mine = _as_saved_by(saved, mine)
    fixed = {k: v for k, v in mine.items() if k != "train"}
    if fixed != {k: v for k, v in saved.items() if k != "train"}:
        differ = sorted(k for k in {*fixed, *saved} - {"train"} if fixed.get(k) != saved.get(k))
        raise InputError(f"branch from {src}: the config changes {', '.join(differ)}; a branch may change only "
                         f"train settings among {', '.join(BRANCH_SETTINGS)}")  # fmt: skip
    theirs, ours = saved.get("train", {}), mine.get("train", {})
    changed = {k: [theirs.get(k), ours.get(k)] for k in sorted({*theirs, *ours}) if theirs.get(k) != ours.get(k)}
    refused = [k for k in changed if k not in BRANCH_SETTINGS]
    if refused:
        raise InputError(
            f"branch from {src}: the config changes train.{', train.'.join(refused)}, which decide the items each step "
            f"draws or how the weights move; a branch may change only {', '.join(BRANCH_SETTINGS)}"
        )
    step = torch.load(src / "trainer_state.pt", weights_only=False)["step"]
    if step >= spec.train.steps:  # the branch would train no step: its "arm" would be the source's weights
        raise InputError(
            f"branch from {src}: it saved its state at step {step}, and this config trains to step "
            f"{spec.train.steps}, so the branch would train 0 steps; set train.steps (or --steps) above {step}"
        )
    history = []
    for line in (src / "train_log.jsonl").read_text().splitlines() if (src / "train_log.jsonl").is_file() else []:
        if json.loads(line).get("step", 0) <= step:
            history.append(line)

    def copy(staging: Path) -> list[Path]:
        copied = [Path(shutil.copy2(src / name, staging / name)) for name in _RUN_FILES if (src / name).is_file()]
        (staging / "train_log.jsonl").write_text("".join(f"{line}\n" for line in history))
        (staging / "train_config.yaml").write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))
        return [*copied, staging / "train_log.jsonl", staging / "train_config.yaml"]

    rundir.stage(out, copy)
    return changed


def _as_saved_by(saved: dict, current: dict) -> dict:
    """``current`` without the train settings a run saved by an earlier version did not know, when they are at their
    defaults: such a run trained exactly as with them, so it resumes (a new setting that is on does not)."""
    defaults = asdict(TrainConfig())
    train = {k: v for k, v in current.get("train", {}).items() if k in saved.get("train", {}) or v != defaults.get(k)}
    return {**current, "train": train}


def _architecture(config: dict) -> dict:
    """A config dict without the entries that say how it was saved rather than what the model is."""
    drop = ("transformers_version", "architectures", "dtype", "torch_dtype", "_name_or_path")
    return {k: _architecture(v) if isinstance(v, dict) else v for k, v in config.items() if k not in drop}


#: The parameter that ends each Nemotron-H mixer's residual branch: zero it and the block is the identity.
_OUTPUT_PROJECTIONS = ("mixer.out_proj.weight", "mixer.o_proj.weight", "mixer.down_proj.weight")


def _warm_start(
    model: ToyVLM,
    heads: PositionHeads | None,
    source: str,
    layers: list | None = None,
    hint_heads: OrderHintHeads | None = None,
) -> None:
    """Load the weights (and position and order-hint heads, when saved) of the train-toy run in ``source``.

    Args:
        layers: depth up-scaling (``train.init_layers``): block ``i`` of ``model`` starts from block ``layers[i]`` of
            the source, or as the identity when ``None``. Without it the two models must be the same, except that
            the vocabulary may grow (words appended, as :class:`~hybridreduce.toy.encoding.Vocab` does): the
            source's rows are copied and the new rows keep their fresh initialisation.
    """
    src = Path(source)
    if not (src / "config.json").is_file() or not (src / "model.safetensors").is_file():
        raise InputError(f"train.init_from: {src} is not a train-toy output directory (no model.safetensors)")
    previous = ToyVLM.from_pretrained(src)
    if layers is None:
        mine, theirs = _architecture(model.config.to_dict()), _architecture(previous.config.to_dict())
        words, their_words = mine["text_config"].pop("vocab_size"), theirs["text_config"].pop("vocab_size")
        if mine != theirs or words < their_words:
            differ = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            differ += [f"vocabulary ({their_words} words there, {words} here)"] if words < their_words else []
            raise InputError(
                f"train.init_from: the model in {src} differs from this config's in {differ}; a warm restart needs "
                "the same data geometry and model sections (or train.init_layers to grow it); only the vocabulary "
                "may grow (appended words)"
            )
        if words == their_words:
            model.load_state_dict(previous.state_dict())
        else:  # new question words (e.g. a new question type): every block from itself, new rows stay fresh
            _grow(model, previous, list(range(len(model.config.text_config.layers_block_type))), src)
    else:
        _grow(model, previous, layers, src)
    state_path = src / "trainer_state.pt"
    if (heads is not None or hint_heads is not None) and state_path.is_file():
        state = torch.load(state_path, weights_only=False)
        for module, key in ((heads, "position_heads"), (hint_heads, "order_hint_heads")):
            if module is not None and state.get(key) is not None:
                module.load_state_dict(state[key])


def _grow(model: ToyVLM, previous: ToyVLM, layers: list, src: Path) -> None:
    """Depth up-scaling: copy ``previous`` into the deeper ``model`` block by block (see :func:`_warm_start`)."""
    ours = model.config.text_config.layers_block_type
    theirs = previous.config.text_config.layers_block_type
    if len(layers) != len(ours):
        raise InputError(
            f"train.init_layers has {len(layers)} entries for a model of {len(ours)} blocks; give one each"
        )
    for i, j in enumerate(layers):
        if j is not None and (j >= len(theirs) or theirs[j] != ours[i]):
            what = f"is a {theirs[j]} block" if j < len(theirs) else f"is out of range ({len(theirs)} source blocks)"
            raise InputError(f"train.init_layers[{i}] = {j}: block {i} is a {ours[i]} block, source block {j} {what}")
    prefix = "language_model.model.layers."
    source = previous.state_dict()
    target = model.state_dict()
    with torch.no_grad():
        for name, value in target.items():
            if name.startswith(prefix):
                index, rest = name[len(prefix) :].split(".", 1)
                j = layers[int(index)]
                if j is None:
                    if rest in _OUTPUT_PROJECTIONS:
                        value.zero_()  # a new block adds nothing to the residual stream until it learns to
                    continue
                name_src = f"{prefix}{j}.{rest}"
            else:
                name_src = name
            old = source.get(name_src)
            if old is None or old.shape[1:] != value.shape[1:] or old.shape[0] > value.shape[0]:
                raise InputError(
                    f"train.init_from: {src} has {name_src} of shape "
                    f"{None if old is None else tuple(old.shape)}, this model needs {tuple(value.shape)}; only the "
                    "depth (train.init_layers) and the vocabulary (appended words) may grow"
                )
            value[: old.shape[0]] = old  # vocabulary rows beyond the source's keep their fresh values


def _stages(spec: ToySpec) -> list[tuple[int, ToyDataset]]:
    """``(first step, training set)`` of every curriculum stage and of the full config, in order.

    The full config's set holds items ``data_offset ..`` of the train split (see :class:`TrainConfig`).
    """
    cfg = spec.train
    vocab = spec.vocab
    stages, first = [], 0
    for k, stage in enumerate(cfg.curriculum or []):
        overrides = dict(stage.get("data", {}))
        if overrides.get("frames", 0) > spec.data.frames:
            raise InputError(f"train.curriculum[{k}] asks for more frames than the benchmark has ({spec.data.frames})")
        chosen = overrides.pop("variants", None)
        configs = spec.configs
        if chosen is not None:
            known = [c.variant for c in configs] if spec.variants else []
            if not isinstance(chosen, list) or not chosen or any(v not in known for v in chosen):
                raise InputError(
                    f"train.curriculum[{k}].data.variants must be a non-empty list of the run's variants {known}, "
                    f"got {chosen!r}"
                )
            configs = [c for c in configs if c.variant in chosen]
        try:
            short = [replace(c, **overrides) for c in configs]
        except TypeError as exc:
            raise InputError(f"train.curriculum[{k}].data: {exc}; use ToyConfig fields") from None
        n = stage["steps"] * cfg.batch_size
        sets = [ToyDataset(c, "train", -(-n // len(short)), vocab=vocab) for c in short]
        stages.append((first, sets[0] if len(sets) == 1 else VariantMix(sets)))
        first += stage["steps"]
    size = cfg.data_offset + (cfg.steps - first) * cfg.batch_size
    sets = [ToyDataset(c, "train", -(-size // len(spec.configs)), vocab=vocab) for c in spec.configs]
    stages.append((first, sets[0] if len(sets) == 1 else VariantMix(sets)))
    return stages
