"""The training config of the embedded toy VLM: ``configs/toy.yaml``, a run's ``train_config.yaml``.

One YAML file holds everything a run depends on, in three sections:

    data:   ToyConfig fields (the benchmark)
    model:  vision_hidden, and ``text`` — NemotronHConfig fields of the language model
    train:  TrainConfig fields (steps, batch size, learning rate, ...)

:func:`load_spec` reads it into a :class:`ToySpec` (every error names the file and the setting);
:func:`build_model` makes the freshly initialised :class:`~hybridreduce.toy.model.ToyVLM` it describes. The loop
that trains it is :mod:`hybridreduce.toy.train`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from transformers import NemotronHConfig

from .. import validate
from ..errors import InputError
from ..yamlio import read_yaml
from .config import VARIANTS, ToyConfig, align_lengths
from .encoding import Vocab, shared_vocab
from .model import ToyVLM, ToyVLMConfig

#: Where the order hint reads (``TrainConfig.order_hint_at``).
HINT_PLACES = ("answer", "words")

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
