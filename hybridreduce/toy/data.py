"""A seeded synthetic long-video QA benchmark whose every question needs only a few visual tokens.

A video is ``T`` frames of ``H × W`` RGB pixels cut into an ``R × C`` grid of ``p × p`` patches; a
patch-embedding vision encoder turns each ``(frame, cell)`` into one visual token, so a sample has
``V = T·R·C`` visual tokens (defaults: 32 frames of 32×32 pixels, ``p = 8``, 4×4 cells, ``V = 512``).

Every video holds a few sparse **events**: a saturated coloured square or disc that fills most of one cell
for 2–4 consecutive frames and may step to a 4-neighbouring cell between frames. Two events never share a
``(t, cell)``, and two events of the same colour never touch in time (at least one frame lies between
them), so "how many" is unambiguous. Events are drawn in screen cells, so a token is relevant or not
whatever the camera does.

Two **variants** (:data:`VARIANTS`, :meth:`ToyConfig.preset`; DESIGN decision 12)::

    variant  camera (camera_step)        background (texture)        noise    events                      qtypes
    static   still                       low-contrast grey, ±15      none     n_events (3–6); distinct    colour when
                                                                              colours, but count's        where count
                                                                              distractors may repeat
    clutter  random walk, steps of 1–8   high-contrast grey, ±90     ±6 per   the same, plus 20–26        + order
             pixels per axis per frame   (cut at 180), a 2H × 2W     frame    distractor events
             (sub-patch and whole-patch  canvas that wraps around:            (colours repeat; 70% step
             steps)                      every patch changes                  every frame, 30% stand still)

``static`` makes temporal change an oracle for events: EVS keeps the first frame of every shape even at keep
0.125 and loses only their still frames. In ``clutter`` temporal change marks far more tokens than any question
needs, and EVS at keep 0.25 keeps under half of the relevant tokens (:mod:`hybridreduce.toy.stats` measures
both; val, pixel EVS at 0.25: 62% of the relevant tokens on ``static``, 39% on ``clutter``). A distractor
never has a colour the question names (the asked colour of ``when`` / ``where``, both of ``order``, the
counted one of ``count``); ``colour`` questions name no colour, so their distractors may take any colour,
the answer's included (no "the colour seen once" shortcut). In ``static`` only ``count`` questions repeat a
colour within a video; ``static`` items are bit-identical to those of the benchmark before the variants.

Question types, their answers and their relevant tokens (the chance level is one over the number of
candidates; answers are drawn uniformly, and :class:`ToyDataset` balances them exactly)::

    type    question (words)                               answer                   candidates    chance
    colour  what colour was at frame 17 cell r1c2          colour word              len(colours)  1/8
    when    when did the red shape appear                  time bin of first frame  time_bins     1/4
    where   where did the red shape appear                 cell of first frame      R·C (or 4)    1/16 (1/4)
    count   how many red shapes appeared                   number                   count_range   1/4
    order   did red appear before blue                     yes / no                 2             1/2

    relevant tokens: colour → the one asked (t, r, c); when / where → every token of that shape (its
    first token alone suffices); count → every token of every shape of that colour; order → every token of
    both shapes (the first token of each suffices).

``order`` is opt-in (not in the default ``qtypes``, so ``static`` items do not change): the two named
colours appear once each, in two events at least one frame apart, so "before" compares two distinct times.

Chance is for a model that knows only the question (defaults in brackets: ``where_answer="quadrant"``).
A model that sees which colours are present but not where does better on ``colour`` (about one over
the number of events, ~1/4.5 at defaults): the asked cell always holds one of the present colours.

Questions end on their key words (no question mark), so the words that name what to look for — the
colour(s), the frame and cell — sit within the last four tokens before ``<answer>``, inside the reach of a
Mamba block's short convolution at that position.

Sequence layout (:func:`encode_sample`), every sample of one config has the same length ``L``::

    <pad>*k  <bos>  (<frame> <video>*R·C) * T  question words  <answer>

The whole sequence is LEFT-padded (``k = max_question_len − len(question)``), so ``<answer>`` is always
the last position (``L − 1``): the model's logits there are scored against ``answer_id``.
``attention_mask`` is 0 on the padding. Visual tokens are in frame-major, then row, then column order,
the order of :func:`patchify`. ``max_question_len`` is the longest question of ``qtypes`` unless
``question_len`` asks for more: :func:`align_lengths` gives configs of one video geometry (say ``static``
and ``clutter``) one common ``L``, so their samples stack into one batch.

Mixing variants in one model: the vocabulary of a config with ``order`` is the one without it plus the
words ``before yes no`` at the end (:class:`Vocab`), so every id of a ``static`` model keeps its meaning;
:func:`shared_vocab` returns the vocabulary that covers a list of configs.

Dimension letters: ``T`` frames, ``H``, ``W`` pixels, ``p`` patch side, ``R``, ``C`` grid rows and
columns, ``V = T·R·C`` visual tokens, ``L`` sequence length, ``b`` batch.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields, replace

import numpy as np
import torch

from ..errors import InputError

#: The named colours (RGB). Every one has a channel ≥ 220; the background never exceeds 130 at the default
#: texture (15) and :data:`BACKGROUND_MAX` (180) at any, before ``frame_noise``.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (40, 220, 40),
    "blue": (40, 80, 240),
    "yellow": (240, 220, 30),
    "magenta": (220, 40, 220),
    "cyan": (30, 210, 220),
    "white": (245, 245, 245),
    "orange": (250, 140, 20),
}
SHAPES = ("square", "disc")
#: The default question types (those of ``static``).
QTYPES = ("colour", "when", "where", "count")
#: Every question type; ``order`` is opt-in (``ToyConfig.qtypes``), as in the ``clutter`` preset.
ALL_QTYPES = (*QTYPES, "order")
WHERE_ANSWERS = ("cell", "quadrant")
QUADRANTS = ("top-left", "top-right", "bottom-left", "bottom-right")
SPLITS = {"train": 0, "val": 1, "test": 2}

SPECIAL_TOKENS = ("<pad>", "<bos>", "<video>", "<frame>", "<answer>")
QUESTION_WORDS = (
    "what",
    "colour",
    "was",
    "at",
    "frame",
    "cell",
    "when",
    "did",
    "the",
    "shape",
    "appear",
    "where",
    "how",
    "many",
    "shapes",
    "appeared",
    "?",
)
#: Words only ``order`` questions use; :class:`Vocab` appends them (in this order) when ``qtypes`` has ``order``.
ORDER_WORDS = ("before", "yes", "no")
#: Longest question of each type, in words.
QUESTION_LEN = {"colour": 8, "when": 6, "where": 6, "count": 5, "order": 5}

#: The named benchmark variants (:meth:`ToyConfig.preset`).
VARIANTS = ("static", "clutter")
#: The :class:`ToyConfig` fields each variant sets (anything else keeps its default). ``static`` is the
#: benchmark the shipped checkpoint was trained on; see the module docstring for ``clutter``.
PRESETS: dict[str, dict] = {
    "static": {},
    "clutter": {
        "camera_step": 8,
        "texture": 90,
        "frame_noise": 6,
        "distractors": (20, 26),
        "distractor_motion": 0.7,
        "qtypes": ALL_QTYPES,
    },
}
#: The brightest background grey (before noise): 40 below the palette's weakest bright channel (220), so a
#: high-contrast texture never looks like a shape.
BACKGROUND_MAX = 180
#: A moving camera looks at a background canvas this many times the frame size along each axis (wrapping around).
CANVAS_SCALE = 2

#: A distractor event that finds no free place after this many draws is dropped (never at the defaults).
MAX_PLACEMENT_TRIES = 200


# --- configuration --------------------------------------------------------------------------------------------


def _int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < minimum:
        raise InputError(f"ToyConfig.{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _int_range(value, name: str, minimum: int) -> tuple[int, int]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        raise InputError(f"ToyConfig.{name} must be an inclusive (min, max) pair of integers, got {value!r}")
    lo, hi = _int(value[0], f"{name}[0]", minimum), _int(value[1], f"{name}[1]", minimum)
    if lo > hi:
        raise InputError(f"ToyConfig.{name} = {value!r} has min > max; write it as ({hi}, {lo})")
    return lo, hi


def _names(value, name: str, allowed: Sequence[str]) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence) or len(value) == 0:
        raise InputError(f"ToyConfig.{name} must be a non-empty list drawn from {tuple(allowed)}, got {value!r}")
    bad = [v for v in value if v not in allowed]
    if bad:
        raise InputError(f"ToyConfig.{name} has unknown entries {bad}; choose from {tuple(allowed)}")
    if len(set(value)) != len(value):
        raise InputError(f"ToyConfig.{name} = {tuple(value)} lists an entry twice; list each once")
    return tuple(value)


def _probability(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= float(value) <= 1.0:
        raise InputError(f"ToyConfig.{name} must be a probability in [0, 1], got {value!r}")  # NaN fails too
    return float(value)


@dataclass
class ToyConfig:
    """Everything that defines the benchmark; two equal configs give identical datasets.

    Attributes:
        frames: ``T``, frames per video.
        height, width: ``H``, ``W``, frame size in pixels, multiples of ``patch``.
        patch: ``p``, side of a square patch (one visual token) in pixels, ``≥ 2``.
        n_events: inclusive ``(min, max)`` number of events (shapes) per video. ``count`` questions use
            ``max(min, count_range[1]) .. max`` so the total number of shapes says nothing about the answer.
        event_len: inclusive ``(min, max)`` frames an event lasts.
        move_prob: probability that an event steps to a random 4-neighbouring cell between two frames.
        qtypes: the question types to ask, a subset of :data:`ALL_QTYPES` (default :data:`QTYPES`: ``order`` is
            opt-in, so the default benchmark stays as it was).
        colours: the colour names used, a subset of :data:`PALETTE` (at least 4, and at least
            ``n_events[1]`` since colours are distinct within a video).
        shapes: the shapes drawn, a subset of :data:`SHAPES` (a nuisance variable, never asked).
        time_bins: number of equal time bins a ``when`` answer is quantised into (``≥ 4``); frame ``t``
            is in bin ``t * time_bins // frames``.
        where_answer: ``"cell"`` (answer one of ``R·C`` cell words) or ``"quadrant"`` (one of 4).
        count_range: inclusive ``(min, max)`` answers of ``count`` questions (``min ≥ 1``, at least 4 values).
        frame_noise: per-frame uniform pixel noise in ``[-frame_noise, frame_noise]`` (0: exactly static
            background, every frame draws fresh noise otherwise).
        seed: base seed; item ``i`` of a split uses the seed ``(seed, split, i)``.
        camera_step: largest camera step between two frames, in pixels per axis (0: a still camera). With
            ``s > 0`` the camera looks at a ``CANVAS_SCALE·H × CANVAS_SCALE·W`` texture that wraps around, and
            every step ``(dy, dx)`` is uniform over ``[-s, s]²`` except ``(0, 0)``: never zero, so every
            background patch changes in every frame; ``s ≥ p`` gives whole-patch steps besides sub-patch ones.
        texture: amplitude of the background's blocky grey texture (``± texture`` grey levels in ``p/2``-pixel
            blocks, on a per-video grey of 50–100 and a ``±6`` per-pixel grain), cut to ``[0, BACKGROUND_MAX]``;
            15 is the low-contrast ``static`` background, 90 the high-contrast ``clutter`` one.
        distractors: inclusive ``(min, max)`` extra events per video on top of ``n_events``, whose colours may
            repeat but are never one the question names (see the module docstring); ``(0, 0)``: none.
        distractor_motion: share of distractors that step to a random 4-neighbouring cell in every frame (the
            others stand still; the question's own events follow ``move_prob``).
        question_len: pad every question to at least this many words (0: to the longest question of
            ``qtypes``); :func:`align_lengths` sets it so that configs share one ``seq_len``.
    Derived (not arguments): ``rows`` = ``R``, ``cols`` = ``C``, ``tokens_per_frame`` = ``R·C``,
    ``n_visual`` = ``V``, ``max_question_len``, ``seq_len`` = ``L``, ``variant``: ``"static"`` for a still
    camera without distractors, else ``"clutter"`` (what the video looks like; ``qtypes`` are separate).

    :meth:`preset` builds a named variant; the plain constructor's defaults are ``static``.
    """

    frames: int = 32
    height: int = 32
    width: int = 32
    patch: int = 8
    n_events: tuple[int, int] = (3, 6)
    event_len: tuple[int, int] = (2, 4)
    move_prob: float = 0.3
    qtypes: tuple[str, ...] = QTYPES
    colours: tuple[str, ...] = tuple(PALETTE)
    shapes: tuple[str, ...] = SHAPES
    time_bins: int = 4
    where_answer: str = "cell"
    count_range: tuple[int, int] = (1, 4)
    frame_noise: int = 0
    seed: int = 0
    camera_step: int = 0
    texture: int = 15
    distractors: tuple[int, int] = (0, 0)
    distractor_motion: float = 0.5
    question_len: int = 0
    rows: int = field(init=False)
    cols: int = field(init=False)
    tokens_per_frame: int = field(init=False)
    n_visual: int = field(init=False)
    max_question_len: int = field(init=False)
    seq_len: int = field(init=False)
    variant: str = field(init=False)

    @classmethod
    def preset(cls, name: str, **overrides) -> ToyConfig:
        """The config of a named variant (:data:`PRESETS`), with any field overridden.

        Example: ``ToyConfig.preset("clutter", where_answer="quadrant", seed=3)``.

        Raises:
            InputError: an unknown variant or field, or an invalid value.
        """
        if not isinstance(name, str) or name not in PRESETS:
            raise InputError(f"unknown benchmark variant {name!r}; choose from {VARIANTS}")
        known = sorted(f.name for f in fields(cls) if f.init)
        unknown = sorted(set(overrides) - set(known))
        if unknown:
            raise InputError(f"ToyConfig.preset({name!r}) got unknown fields {unknown}; known: {known}")
        return cls(**{**PRESETS[name], **overrides})

    def __post_init__(self):
        self.frames = _int(self.frames, "frames", 1)
        self.height = _int(self.height, "height", 1)
        self.width = _int(self.width, "width", 1)
        self.patch = _int(self.patch, "patch", 2)
        self.seed = _int(self.seed, "seed", 0)
        self.time_bins = _int(self.time_bins, "time_bins", 4)
        self.frame_noise = _int(self.frame_noise, "frame_noise", 0)
        self.n_events = _int_range(self.n_events, "n_events", 1)
        self.event_len = _int_range(self.event_len, "event_len", 1)
        self.count_range = _int_range(self.count_range, "count_range", 1)
        self.qtypes = _names(self.qtypes, "qtypes", ALL_QTYPES)
        self.camera_step = _int(self.camera_step, "camera_step", 0)
        self.texture = _int(self.texture, "texture", 0)
        self.distractors = _int_range(self.distractors, "distractors", 0)
        self.question_len = _int(self.question_len, "question_len", 0)
        self.colours = _names(self.colours, "colours", tuple(PALETTE))
        self.shapes = _names(self.shapes, "shapes", SHAPES)
        self.move_prob = _probability(self.move_prob, "move_prob")
        self.distractor_motion = _probability(self.distractor_motion, "distractor_motion")
        if self.where_answer not in WHERE_ANSWERS:
            raise InputError(f"ToyConfig.where_answer must be one of {WHERE_ANSWERS}, got {self.where_answer!r}")
        if self.frame_noise > 100:
            raise InputError(
                f"ToyConfig.frame_noise = {self.frame_noise} would make the background as bright as the shapes; "
                "keep it <= 100 (a few units is realistic sensor noise)"
            )

        p = self.patch
        if self.height % p or self.width % p:
            raise InputError(
                f"ToyConfig: frame size {self.height}x{self.width} is not divisible by patch {p}; use a height and "
                f"width that are multiples of the patch (e.g. {max(p, self.height // p * p)}x"
                f"{max(p, self.width // p * p)}) or another patch size"
            )
        self.rows, self.cols = self.height // p, self.width // p
        self.tokens_per_frame = self.rows * self.cols
        self.n_visual = self.frames * self.tokens_per_frame

        lo_len, hi_len = self.event_len
        if hi_len > self.frames:
            raise InputError(
                f"ToyConfig.event_len max {hi_len} is longer than the video ({self.frames} frames); lower event_len "
                "or add frames"
            )
        if self.n_events[1] > len(self.colours):
            raise InputError(
                f"ToyConfig.n_events max {self.n_events[1]} exceeds the {len(self.colours)} colours: events of "
                "one video have distinct colours, so lower n_events or add colours"
            )
        if len(self.colours) < 4:
            raise InputError(
                f"ToyConfig.colours has {len(self.colours)} colours; use at least 4 so that colour questions have "
                "a chance level of at most 25%"
            )
        most = self.n_events[1] + self.distractors[1]
        if most * hi_len * 4 > self.frames * self.tokens_per_frame:
            what = f"{self.n_events[1]} events" if not self.distractors[1] else f"{most} events (with distractors)"
            raise InputError(
                f"ToyConfig: up to {what} of {hi_len} frames would fill more than a quarter of "
                f"the {self.frames}x{self.tokens_per_frame} (frame, cell) tokens; events must stay sparse: lower "
                "n_events, distractors or event_len, or add frames or cells"
            )
        if self.camera_step > min(self.height, self.width):
            raise InputError(
                f"ToyConfig.camera_step = {self.camera_step} pixels exceeds the frame ({self.height}x{self.width}); "
                f"use at most {min(self.height, self.width)} (a step of one patch, {p}, already jumps a whole cell)"
            )
        if "when" in self.qtypes and self.frames // self.time_bins < lo_len:
            raise InputError(
                f"ToyConfig: {self.time_bins} time bins of {self.frames} frames are shorter than the shortest event "
                f"({lo_len} frames), so late bins cannot start an event; use frames >= time_bins * event_len[0] "
                f"= {self.time_bins * lo_len} or fewer time_bins"
            )
        if "where" in self.qtypes:
            n_where = 4 if self.where_answer == "quadrant" else self.tokens_per_frame
            if self.where_answer == "quadrant" and (self.rows % 2 or self.cols % 2):
                raise InputError(
                    f"ToyConfig.where_answer='quadrant' needs an even grid, got {self.rows}x{self.cols} cells; "
                    "change height/width/patch or use where_answer='cell'"
                )
            if n_where < 4:
                raise InputError(
                    f"ToyConfig: the grid has only {n_where} cells, so 'where' questions would have fewer than 4 "
                    "answers; use a grid of at least 4 cells (smaller patch or larger frames)"
                )
        if "count" in self.qtypes:
            c_lo, c_hi = self.count_range
            if c_hi - c_lo + 1 < 4:
                raise InputError(
                    f"ToyConfig.count_range {self.count_range} has {c_hi - c_lo + 1} answers; use at least 4 (e.g. "
                    "(1, 4)) so that count questions have a chance level of at most 25%"
                )
            if self.n_events[1] < c_hi:
                raise InputError(
                    f"ToyConfig.n_events max {self.n_events[1]} is below count_range max {c_hi}; a video must be "
                    f"able to hold {c_hi} shapes of one colour: raise n_events[1] to at least {c_hi}"
                )
            if c_hi * (hi_len + 1) - 1 > self.frames:
                raise InputError(
                    f"ToyConfig: {c_hi} same-colour events of up to {hi_len} frames, one empty frame apart, do not "
                    f"fit in {self.frames} frames; lower count_range or event_len, or add frames"
                )
        if "order" in self.qtypes:
            if self.n_events[1] < 2:
                raise InputError(
                    f"ToyConfig.n_events max {self.n_events[1]} is below 2, but 'order' questions compare two "
                    "shapes: raise n_events[1] to at least 2 or drop 'order' from qtypes"
                )
            if 2 * hi_len + 1 > self.frames:
                raise InputError(
                    f"ToyConfig: two events of up to {hi_len} frames, one empty frame apart, do not fit in "
                    f"{self.frames} frames ('order' questions); lower event_len or add frames"
                )
        self.max_question_len = max(self.question_len, *(QUESTION_LEN[q] for q in self.qtypes))
        self.seq_len = 1 + self.frames * (1 + self.tokens_per_frame) + self.max_question_len + 1
        self.variant = "static" if self.camera_step == 0 and self.distractors == (0, 0) else "clutter"


def time_bin(cfg: ToyConfig, t: int) -> int:
    """The ``when`` bin of frame ``t``: ``t * time_bins // frames``."""
    return t * cfg.time_bins // cfg.frames


def cell_word(r: int, c: int) -> str:
    """The word of grid cell ``(r, c)``: ``"r{r}c{c}"``."""
    return f"r{r}c{c}"


def quadrant(cfg: ToyConfig, r: int, c: int) -> str:
    """The quadrant word of cell ``(r, c)`` (the grid is split at ``R/2`` and ``C/2``)."""
    return QUADRANTS[2 * int(r >= cfg.rows // 2) + int(c >= cfg.cols // 2)]


def answer_words(cfg: ToyConfig, qtype: str) -> list[str]:
    """The candidate answers of a question type, in a fixed order (the multiple-choice options).

    Raises:
        InputError: ``qtype`` not one of :data:`QTYPES`.
    """
    if qtype == "colour":
        return list(cfg.colours)
    if qtype == "when":
        return [f"bin{k}" for k in range(cfg.time_bins)]
    if qtype == "where":
        if cfg.where_answer == "quadrant":
            return list(QUADRANTS)
        return [cell_word(r, c) for r in range(cfg.rows) for c in range(cfg.cols)]
    if qtype == "count":
        return [str(n) for n in range(cfg.count_range[0], cfg.count_range[1] + 1)]
    if qtype == "order":
        return ["yes", "no"]
    raise InputError(f"unknown question type {qtype!r}; choose from {ALL_QTYPES}")


def chance_level(cfg: ToyConfig) -> dict[str, float]:
    """One over the number of candidate answers, for each question type of the config."""
    return {q: 1.0 / len(answer_words(cfg, q)) for q in cfg.qtypes}


def align_lengths(cfgs: Sequence[ToyConfig]) -> list[ToyConfig]:
    """Copies of ``cfgs`` that encode to one common sequence length (to batch their samples together).

    Each copy's ``question_len`` is the largest ``max_question_len`` of ``cfgs``, so every ``seq_len`` is equal;
    nothing else changes: the samples are the same, only their left padding grows. A ``static`` + ``clutter`` mix::

        static, clutter = align_lengths([ToyConfig.preset("static"), ToyConfig.preset("clutter")])

    Raises:
        InputError: an empty list, a non-config, or configs whose videos differ in ``frames``, ``height``,
            ``width`` or ``patch`` (the visual part of the sequence, which no padding can align).
    """
    if isinstance(cfgs, ToyConfig) or not isinstance(cfgs, Sequence) or len(cfgs) == 0:
        raise InputError("align_lengths takes a non-empty list of ToyConfigs")
    bad = [type(c).__name__ for c in cfgs if not isinstance(c, ToyConfig)]
    if bad:
        raise InputError(f"align_lengths takes ToyConfigs, got {bad}")
    shapes = sorted({(c.frames, c.height, c.width, c.patch) for c in cfgs})
    if len(shapes) > 1:
        raise InputError(
            f"align_lengths: the configs have different videos (frames, height, width, patch) = {shapes}; only "
            "configs of one video geometry can share a sequence length, so give them equal values"
        )
    longest = max(c.max_question_len for c in cfgs)
    return [replace(c, question_len=longest) for c in cfgs]


# --- vocabulary -----------------------------------------------------------------------------------------------


class Vocab:
    """The word-level vocabulary of a config: specials, question words, colours, numbers, cells, bins.

    Ids are fixed by the config: ``<pad>`` = 0, ``<bos>`` = 1, ``<video>`` = 2, ``<frame>`` = 3,
    ``<answer>`` = 4, then :data:`QUESTION_WORDS`, the config's colours, the numbers
    ``0 .. max(frames − 1, count_range[1])``, the cell words, the time-bin words and the quadrant words;
    then, only when ``qtypes`` has ``order``, :data:`ORDER_WORDS` (``before yes no``). New words are only ever
    appended, so two configs that differ only in variant settings (camera, noise, distractors, ``order``)
    have vocabularies one of which is a prefix of the other, and a model trained on the shorter keeps every id
    (the shipped checkpoint's ``static`` vocabulary is the first 86 words of the ``clutter`` one). Use
    :func:`shared_vocab` for a model trained on several configs.
    """

    def __init__(self, cfg: ToyConfig):
        if not isinstance(cfg, ToyConfig):
            raise InputError(f"Vocab needs a ToyConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        n_numbers = max(cfg.frames - 1, cfg.count_range[1]) + 1
        words = [*SPECIAL_TOKENS, *QUESTION_WORDS, *cfg.colours, *(str(n) for n in range(n_numbers))]
        words += [cell_word(r, c) for r in range(cfg.rows) for c in range(cfg.cols)]
        words += [f"bin{k}" for k in range(cfg.time_bins)] + list(QUADRANTS)
        if "order" in cfg.qtypes:  # appended only here: a config without order keeps its old vocabulary
            words += ORDER_WORDS
        self.words: list[str] = words
        self._ids = {w: i for i, w in enumerate(words)}
        if len(self._ids) != len(words):  # a guard on the word lists above
            raise AssertionError("duplicate vocabulary words")
        self.pad_id, self.bos_id, self.video_id, self.frame_id, self.answer_marker_id = range(5)

    @property
    def size(self) -> int:
        """Number of words (the embedding table size)."""
        return len(self.words)

    def __len__(self) -> int:
        return len(self.words)

    def token_id(self, word: str) -> int:
        """The id of one word. Raises InputError for a word outside the vocabulary."""
        try:
            return self._ids[word]
        except (KeyError, TypeError):
            raise InputError(f"{word!r} is not in the toy vocabulary ({self.size} words)") from None

    def encode(self, words: Sequence[str]) -> list[int]:
        """Ids of a list of words."""
        if isinstance(words, str):
            raise InputError("encode takes a list of words, not a string; split it first (text.split())")
        return [self.token_id(w) for w in words]

    def decode(self, ids) -> list[str]:
        """Words of a list (or 1-D tensor / array) of ids."""
        if isinstance(ids, (torch.Tensor, np.ndarray)):
            ids = ids.tolist()
        out = []
        for i in ids:
            if isinstance(i, bool) or not isinstance(i, numbers.Integral) or not 0 <= int(i) < self.size:
                raise InputError(f"id {i!r} is not in the toy vocabulary (ids 0..{self.size - 1})")
            out.append(self.words[int(i)])
        return out

    def answer_words(self, qtype: str) -> list[str]:
        """Candidate answers of a question type (see :func:`answer_words`)."""
        return answer_words(self.cfg, qtype)

    def answer_ids(self, qtype: str) -> list[int]:
        """Ids of the candidate answers of a question type, for multiple-choice scoring."""
        return self.encode(answer_words(self.cfg, qtype))


def shared_vocab(cfgs: Sequence[ToyConfig]) -> Vocab:
    """The vocabulary of a model trained on several configs: the longest of theirs, when it extends every other.

    A mix of ``static`` and ``clutter`` (same frames, colours, grid, time bins, count range and ``where_answer``)
    gets the ``clutter`` vocabulary, whose first words are exactly the ``static`` one; pass it as
    ``ToyDataset(..., vocab=...)`` for every config of the mix. Its ``answer_ids(q)`` are then the candidates of
    every config that asks ``q``.

    Raises:
        InputError: an empty list, a non-config, two configs whose vocabularies disagree on an id (they differ
            in frames, colours, grid, time_bins or count_range), or a question type whose candidate answers differ
            between a config and the returned vocabulary's (e.g. ``where_answer`` ``"cell"`` and ``"quadrant"``).
    """
    if isinstance(cfgs, ToyConfig) or not isinstance(cfgs, Sequence) or len(cfgs) == 0:
        raise InputError("shared_vocab takes a non-empty list of ToyConfigs")
    bad = [type(c).__name__ for c in cfgs if not isinstance(c, ToyConfig)]
    if bad:
        raise InputError(f"shared_vocab takes ToyConfigs, got {bad}")
    vocabs = [Vocab(c) for c in cfgs]
    longest = max(vocabs, key=len)
    for k, v in enumerate(vocabs):
        if longest.words[: len(v)] != v.words:
            i = next(i for i, (a, b) in enumerate(zip(v.words, longest.words, strict=False)) if a != b)
            raise InputError(
                f"shared_vocab: config {k}'s vocabulary gives id {i} to {v.words[i]!r}, another config gives it to "
                f"{longest.words[i]!r}; configs of one model need equal frames, colours, grid (height, width, "
                "patch), time_bins and count_range"
            )
        for q in cfgs[k].qtypes:  # the shared vocabulary's answer_ids(q) must be every config's candidates
            mine, shared = answer_words(cfgs[k], q), answer_words(longest.cfg, q)
            if mine != shared:
                raise InputError(
                    f"shared_vocab: config {k}'s {q!r} answers {mine[:5]} differ from {shared[:5]} of the "
                    "longest vocabulary's config; a model scores one candidate list per question type, so give the "
                    "configs equal where_answer, colours, time_bins and count_range"
                )
    return longest


# --- samples --------------------------------------------------------------------------------------------------


@dataclass
class Event:
    """One shape: a colour drawn at ``cells[i]`` in frame ``start + i`` for ``i < len(cells)``."""

    colour: str
    shape: str
    start: int
    cells: list[tuple[int, int]]

    @property
    def length(self) -> int:
        return len(self.cells)

    @property
    def end(self) -> int:
        """One past the last frame."""
        return self.start + len(self.cells)

    @property
    def tokens(self) -> list[tuple[int, int, int]]:
        """The ``(t, r, c)`` visual tokens the event covers, in time order."""
        return [(self.start + i, r, c) for i, (r, c) in enumerate(self.cells)]


@dataclass
class Sample:
    """One question about one video.

    Attributes:
        video: ``(T, H, W, 3)`` uint8 RGB frames.
        background: ``(Hc, Wc, 3)`` uint8, the texture the camera looks at (before ``frame_noise``): the
            ``(H, W, 3)`` picture every frame starts from for a still camera, a ``CANVAS_SCALE``-times larger
            canvas that wraps around for a moving one (see :meth:`frame_backgrounds`).
        question: the question words (no specials).
        qtype: one of :data:`ALL_QTYPES`.
        answer: the answer word (one of ``answer_words(cfg, qtype)``).
        relevant: the ``(t, r, c)`` tokens the answer depends on, sorted.
        events: every shape in the video, sorted by start frame.
        id: ``"{split}-{index}"`` for dataset items, else what the caller passed.
        camera: ``(T, 2)`` int64, the canvas pixel ``(y, x)`` at frame ``t``'s top-left corner (all zero for
            a still camera); None only for a Sample built by hand.
    """

    video: np.ndarray
    background: np.ndarray
    question: list[str]
    qtype: str
    answer: str
    relevant: list[tuple[int, int, int]]
    events: list[Event]
    id: str = ""
    camera: np.ndarray | None = None

    def frame_backgrounds(self) -> np.ndarray:
        """``(T, H, W, 3)`` uint8: what each frame shows before noise and shapes (``background`` seen through
        the camera; for a still camera, ``background`` in every frame)."""
        T, H, W, _ = self.video.shape
        camera = np.zeros((T, 2), dtype=np.int64) if self.camera is None else self.camera
        return _camera_view(self.background, camera, H, W)


_MASKS: dict[tuple[str, int], np.ndarray] = {}


def shape_mask(shape: str, p: int) -> np.ndarray:
    """``(p, p)`` bool pixels of a shape within one patch (a square with a ``p // 8`` margin, or a disc)."""
    key = (shape, p)
    if key not in _MASKS:
        if shape == "square":
            m = p // 8
            mask = np.zeros((p, p), dtype=bool)
            mask[m : p - m, m : p - m] = True
        elif shape == "disc":
            yy, xx = np.mgrid[0:p, 0:p] + 0.5 - p / 2
            mask = yy**2 + xx**2 <= (p / 2 - 0.25) ** 2
        else:
            raise InputError(f"unknown shape {shape!r}; choose from {SHAPES}")
        mask.setflags(write=False)
        _MASKS[key] = mask
    return _MASKS[key]


def _background(cfg: ToyConfig, rng: np.random.Generator) -> np.ndarray:
    """``(Hc, Wc, 3)`` uint8: a tinted mid-dark grey with a blocky low-frequency and a fine grey texture.

    ``(Hc, Wc) = (H, W)`` for a still camera, ``CANVAS_SCALE`` times that for a moving one (a canvas that wraps
    around: the blocks, ``p/2`` pixels wide, tile it exactly).
    """
    scale = CANVAS_SCALE if cfg.camera_step else 1
    H, W = scale * cfg.height, scale * cfg.width
    base = rng.uniform(50, 100) + rng.uniform(-8, 8, size=3)  # (3,) per-video grey level and tint
    block = max(1, cfg.patch // 2)
    coarse = rng.uniform(-cfg.texture, cfg.texture, size=(-(-H // block), -(-W // block), 1))
    coarse = np.repeat(np.repeat(coarse, block, axis=0), block, axis=1)[:H, :W]
    fine = rng.uniform(-6, 6, size=(H, W, 1))
    # static (texture 15): channels stay within [21, 129]; a stronger texture is cut at BACKGROUND_MAX
    return np.clip(base + coarse + fine, 0, BACKGROUND_MAX).astype(np.uint8)


def _camera_path(cfg: ToyConfig, rng: np.random.Generator) -> np.ndarray:
    """``(T, 2)`` int64 canvas ``(y, x)`` of each frame's top-left corner: a random walk from a random start.

    Each of the ``T − 1`` steps is uniform over ``[-s, s]²`` except ``(0, 0)`` (``s = camera_step``), taken modulo
    the canvas size. A still camera (``s = 0``) gives zeros and draws nothing from ``rng``.
    """
    T = cfg.frames
    if not cfg.camera_step:
        return np.zeros((T, 2), dtype=np.int64)
    s = cfg.camera_step
    side = 2 * s + 1
    k = rng.integers(0, side * side - 1, size=T - 1)  # index into the side x side steps, skipping the centre
    k = k + (k >= side * side // 2)
    steps = np.stack([k // side - s, k % side - s], axis=1)  # (T-1, 2), never (0, 0)
    size = np.array([CANVAS_SCALE * cfg.height, CANVAS_SCALE * cfg.width])
    start = rng.integers(0, size)  # (2,)
    return (start + np.concatenate([np.zeros((1, 2), dtype=np.int64), np.cumsum(steps, axis=0)])) % size


def _camera_view(background: np.ndarray, camera: np.ndarray, H: int, W: int) -> np.ndarray:
    """``(T, H, W, 3)``: the ``H × W`` window of a wrapping ``(Hc, Wc, 3)`` canvas at each ``camera[t]``."""
    # Wrap-around by tiling: (Hc + H, Wc + W, 3) holds every window as a plain slice (H <= Hc, W <= Wc).
    tiled = np.concatenate([background, background[:H]], axis=0)
    tiled = np.concatenate([tiled, tiled[:, :W]], axis=1)
    out = np.empty((len(camera), H, W, background.shape[2]), dtype=background.dtype)
    for t, (y, x) in enumerate(camera.tolist()):
        out[t] = tiled[y : y + H, x : x + W]
    return out


class _Canvas:
    """Occupancy of the ``(t, r, c)`` tokens and of each colour's frames while events are placed."""

    def __init__(self, cfg: ToyConfig):
        self.cfg = cfg
        self.cells = np.zeros((cfg.frames, cfg.rows, cfg.cols), dtype=bool)
        self.colour_frames: dict[str, np.ndarray] = {}
        self.events: list[Event] = []

    def path(
        self, rng: np.random.Generator, start_cell: tuple[int, int], length: int, move_prob: float | None = None
    ) -> list[tuple[int, int]]:
        """A random walk of ``length`` cells: each step moves to a 4-neighbour with probability ``move_prob``
        (default ``cfg.move_prob``; 1 moves in every frame, 0 stands still)."""
        cfg = self.cfg
        move_prob = cfg.move_prob if move_prob is None else move_prob
        r, c = start_cell
        cells = [(r, c)]
        for _ in range(length - 1):
            if rng.random() < move_prob:
                steps = [(dr, dc) for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)) if 0 <= r + dr < cfg.rows]
                steps = [(dr, dc) for dr, dc in steps if 0 <= c + dc < cfg.cols]
                if steps:
                    dr, dc = steps[rng.integers(len(steps))]
                    r, c = r + dr, c + dc
            cells.append((r, c))
        return cells

    def fits(self, event: Event) -> bool:
        """No token already taken, and no event of the same colour in the same or an adjacent frame."""
        rows, cols = zip(*event.cells, strict=True)
        if self.cells[np.arange(event.start, event.end), rows, cols].any():
            return False
        frames = self.colour_frames.get(event.colour)
        return frames is None or not frames[max(0, event.start - 1) : event.end + 1].any()

    def add(self, event: Event) -> Event:
        for t, r, c in event.tokens:
            self.cells[t, r, c] = True
        frames = self.colour_frames.setdefault(event.colour, np.zeros(self.cfg.frames, dtype=bool))
        frames[event.start : event.end] = True
        self.events.append(event)
        return event

    def place(
        self,
        rng: np.random.Generator,
        colour: str,
        start: int | None = None,
        start_cell: tuple[int, int] | None = None,
        length: int | None = None,
        tries: int = MAX_PLACEMENT_TRIES,
    ) -> Event | None:
        """Draw an event (the fixed parts as given) until it fits; None after ``tries`` failures."""
        cfg = self.cfg
        shape = cfg.shapes[rng.integers(len(cfg.shapes))]
        lo, hi = cfg.event_len
        for _ in range(tries):
            n = length if length is not None else int(rng.integers(lo, hi + 1))
            t0 = start if start is not None else int(rng.integers(0, cfg.frames - n + 1))
            cell = start_cell if start_cell is not None else (int(rng.integers(cfg.rows)), int(rng.integers(cfg.cols)))
            event = Event(colour, shape, t0, self.path(rng, cell, n))
            if self.fits(event):
                return self.add(event)
        return None

    def place_distractor(
        self, rng: np.random.Generator, colours: Sequence[str], tries: int = MAX_PLACEMENT_TRIES
    ) -> Event | None:
        """An event of a colour drawn from ``colours`` (repeats allowed) wherever it fits; None after ``tries``.

        With probability ``cfg.distractor_motion`` it moves to a random 4-neighbouring cell in every frame, else
        it stands still. Each try draws colour, length, a start among the frames where that colour is free (no
        event of it in the same or an adjacent frame), a start cell and a path; it fails only if the path meets
        a taken token.
        """
        cfg = self.cfg
        T, (lo, hi) = cfg.frames, cfg.event_len
        shape = cfg.shapes[rng.integers(len(cfg.shapes))]
        moving = rng.random() < cfg.distractor_motion
        for _ in range(tries):
            colour = colours[rng.integers(len(colours))]
            n = int(rng.integers(lo, hi + 1))
            busy = self.colour_frames.get(colour)
            if busy is None:
                t0 = int(rng.integers(0, T - n + 1))
            else:
                seen = np.concatenate([[0], np.cumsum(busy)])  # seen[t]: frames of this colour before t
                t = np.arange(T - n + 1)
                free = np.flatnonzero(seen[np.minimum(t + n + 1, T)] == seen[np.maximum(t - 1, 0)])
                if free.size == 0:
                    continue
                t0 = int(free[rng.integers(free.size)])
            cell = (int(rng.integers(cfg.rows)), int(rng.integers(cfg.cols)))
            event = Event(colour, shape, t0, self.path(rng, cell, n, move_prob=float(moving)))
            if self.fits(event):
                return self.add(event)
        return None


def _spread_starts(rng: np.random.Generator, lengths: list[int], frames: int) -> list[int]:
    """Random start frames of events with these lengths, in order, one empty frame apart, within the video."""
    n = len(lengths)
    slack = frames - (sum(lengths) + n - 1)  # ≥ 0, checked by ToyConfig
    cuts = np.sort(rng.integers(0, slack + 1, size=n))  # free frames before each event: a random composition
    starts, t = [], 0
    for i, length in enumerate(lengths):
        t += int(cuts[i] - (cuts[i - 1] if i else 0))
        starts.append(t)
        t += length + 1
    return starts


def make_sample(
    cfg: ToyConfig,
    rng: np.random.Generator,
    qtype: str | None = None,
    answer: str | None = None,
    sample_id: str = "",
) -> Sample:
    """Draw one video and one question about it.

    The answer is chosen first (uniformly among ``answer_words(cfg, qtype)`` unless given) and the video is
    built around it, so answers are balanced by construction. Then come, in this order, the ``n_events`` events
    (the question's own first), the ``distractors``, the background, the camera path and the noise; a config
    without distractors or camera motion draws nothing for them, so its samples are those of the benchmark
    before the variants existed, bit for bit.

    Args:
        cfg: the benchmark config.
        rng: the only source of randomness (``np.random.default_rng(seed)``).
        qtype: question type, one of ``cfg.qtypes``; drawn uniformly when None.
        answer: the answer word to build the sample for; drawn uniformly when None.
        sample_id: stored in :attr:`Sample.id`.
    Returns:
        A :class:`Sample`.
    Raises:
        InputError: a ``qtype`` not in ``cfg.qtypes`` or an ``answer`` that is not one of its candidates.
    """
    if not isinstance(cfg, ToyConfig):
        raise InputError(f"make_sample needs a ToyConfig, got {type(cfg).__name__}")
    if not isinstance(rng, np.random.Generator):
        raise InputError(f"rng must be a numpy Generator (np.random.default_rng(seed)), got {type(rng).__name__}")
    if qtype is None:
        qtype = cfg.qtypes[rng.integers(len(cfg.qtypes))]
    elif qtype not in cfg.qtypes:
        raise InputError(f"question type {qtype!r} is not in this config's qtypes {cfg.qtypes}")
    candidates = answer_words(cfg, qtype)
    if answer is None:
        answer = candidates[rng.integers(len(candidates))]
    elif answer not in candidates:
        raise InputError(f"{answer!r} is not a possible answer of a {qtype!r} question; choose from {candidates}")

    canvas = _Canvas(cfg)
    lo_ev, hi_ev = cfg.n_events
    T, lo_len, hi_len = cfg.frames, cfg.event_len[0], cfg.event_len[1]

    if qtype == "count":
        n = int(answer)
        total = int(rng.integers(max(lo_ev, cfg.count_range[1]), hi_ev + 1))  # independent of the answer
        colour = cfg.colours[rng.integers(len(cfg.colours))]
        lengths = [int(x) for x in rng.integers(lo_len, hi_len + 1, size=n)]
        targets = [
            canvas.place(rng, colour, start=s, length=k)
            for s, k in zip(_spread_starts(rng, lengths, T), lengths, strict=True)
        ]
        others = [c for c in cfg.colours if c != colour]
        for _ in range(total - n):  # distractor colours may repeat, so "the repeated colour" is no shortcut
            canvas.place(rng, others[rng.integers(len(others))])
        if any(e is None for e in targets):  # unreachable: targets never overlap in time
            raise AssertionError("a count target did not fit")
        relevant = [tok for e in targets for tok in e.tokens]
        question = ["how", "many", colour, "shapes", "appeared"]
        named = [colour]
    elif qtype == "order":
        total = int(rng.integers(max(lo_ev, 2), hi_ev + 1))
        i, j = rng.choice(len(cfg.colours), size=2, replace=False)
        colour, later = cfg.colours[i], cfg.colours[j]  # asked: "did {colour} appear before {later}"
        lengths = [int(x) for x in rng.integers(lo_len, hi_len + 1, size=2)]
        starts = _spread_starts(rng, lengths, T)  # at least one empty frame between the two
        order = (colour, later) if answer == "yes" else (later, colour)
        targets = [canvas.place(rng, c, start=t0, length=k) for c, t0, k in zip(order, starts, lengths, strict=True)]
        if any(e is None for e in targets):  # unreachable: the two never overlap in time
            raise AssertionError("an order target did not fit")
        named = [colour, later]
        others = [c for c in cfg.colours if c not in named]
        for k in rng.permutation(len(others))[: total - 2]:  # distinct colours
            canvas.place(rng, others[k])
        relevant = [tok for e in targets for tok in e.tokens]
        question = ["did", colour, "appear", "before", later]
    else:
        total = int(rng.integers(lo_ev, hi_ev + 1))
        if qtype == "colour":
            colour = answer
            target = canvas.place(rng, colour)
        elif qtype == "when":
            colour = cfg.colours[rng.integers(len(cfg.colours))]
            k = candidates.index(answer)
            first = -(-k * T // cfg.time_bins)  # first frame of bin k
            last = min(-(-(k + 1) * T // cfg.time_bins), T - lo_len + 1)  # one past the last allowed start
            t0 = int(rng.integers(first, last))
            length = int(rng.integers(lo_len, min(hi_len, T - t0) + 1))
            target = canvas.place(rng, colour, start=t0, length=length)
        else:  # where
            colour = cfg.colours[rng.integers(len(cfg.colours))]
            if cfg.where_answer == "quadrant":
                q = QUADRANTS.index(answer)
                h_r, h_c = cfg.rows // 2, cfg.cols // 2
                cell = ((q // 2) * h_r + int(rng.integers(h_r)), (q % 2) * h_c + int(rng.integers(h_c)))
            else:
                cell = divmod(candidates.index(answer), cfg.cols)
            target = canvas.place(rng, colour, start_cell=cell)
        if target is None:  # unreachable: the first event goes on an empty canvas
            raise AssertionError("the target event did not fit")
        others = [c for c in cfg.colours if c != colour]
        for i in rng.permutation(len(others))[: total - 1]:  # distinct colours
            canvas.place(rng, others[i])
        if qtype == "colour":
            i = int(rng.integers(target.length))
            t, r, c = target.tokens[i]
            relevant = [(t, r, c)]
            question = ["what", "colour", "was", "at", "frame", str(t), "cell", cell_word(r, c)]
        else:
            relevant = target.tokens
            question = [qtype, "did", "the", colour, "shape", "appear"]
        named = [] if qtype == "colour" else [colour]

    if cfg.distractors[1]:  # clutter: more events, never of a colour the question names (draws nothing if off)
        allowed = [c for c in cfg.colours if c not in named]
        for _ in range(int(rng.integers(cfg.distractors[0], cfg.distractors[1] + 1))):
            canvas.place_distractor(rng, allowed)

    events = sorted(canvas.events, key=lambda e: (e.start, e.colour, e.cells))
    background = _background(cfg, rng)
    camera = _camera_path(cfg, rng)
    video = _render(cfg, rng, background, camera, events)
    return Sample(video, background, question, qtype, answer, sorted(relevant), events, sample_id, camera)


def follow_up_questions(sample: Sample, cfg: ToyConfig, rng: np.random.Generator, n: int) -> list[tuple]:
    """``n`` more questions about ``sample``'s video, each answerable from the video alone (for training).

    Every question is well defined on the video: ``colour`` asks a random token of a random event;
    ``when`` / ``where`` ask a colour that appears in exactly one event; ``count`` asks a colour seen in at
    least two events (and at most ``cfg.count_range[1]``); ``order`` asks two colours that appear in exactly one
    event each, at least one frame apart, in a random order. Types are drawn uniformly among those of
    ``cfg.qtypes`` that the video allows; answers follow the video, so they are not balanced.

    Returns:
        ``n`` tuples ``(question words, qtype, answer word)``.
    """
    per_colour: dict[str, list[Event]] = {}
    for e in sample.events:
        per_colour.setdefault(e.colour, []).append(e)
    single = sorted(c for c, es in per_colour.items() if len(es) == 1)
    lo, hi = cfg.count_range
    # Colours seen more than once only: every colour of a non-count video appears once, and asking those
    # would make "1" the usual count answer.
    countable = sorted(c for c, es in per_colour.items() if max(lo, 2) <= len(es) <= hi)
    pairs = []  # (earlier, later) single colours, one frame or more apart; computed only when asked (no draws)
    if "order" in cfg.qtypes:
        for a, b in ((a, b) for a in single for b in single if a != b):
            if per_colour[a][0].end < per_colour[b][0].start:
                pairs.append((a, b))
    allowed = [
        q
        for q in cfg.qtypes
        if q == "colour"
        or (q in ("when", "where") and single)
        or (q == "count" and countable)
        or (q == "order" and pairs)
    ]
    out = []
    for _ in range(n):
        qtype = allowed[rng.integers(len(allowed))]
        if qtype == "colour":
            event = sample.events[rng.integers(len(sample.events))]
            t, r, c = event.tokens[rng.integers(event.length)]
            words = ["what", "colour", "was", "at", "frame", str(t), "cell", cell_word(r, c)]
            out.append((words, qtype, event.colour))
        elif qtype == "count":
            colour = countable[rng.integers(len(countable))]
            out.append((["how", "many", colour, "shapes", "appeared"], qtype, str(len(per_colour[colour]))))
        elif qtype == "order":
            first, second = pairs[rng.integers(len(pairs))]
            if rng.random() < 0.5:
                out.append((["did", first, "appear", "before", second], qtype, "yes"))
            else:
                out.append((["did", second, "appear", "before", first], qtype, "no"))
        else:
            colour = single[rng.integers(len(single))]
            event = per_colour[colour][0]
            if qtype == "when":
                answer = f"bin{time_bin(cfg, event.start)}"
            else:
                r, c = event.cells[0]
                answer = quadrant(cfg, r, c) if cfg.where_answer == "quadrant" else cell_word(r, c)
            out.append(([qtype, "did", "the", colour, "shape", "appear"], qtype, answer))
    return out


def _render(
    cfg: ToyConfig, rng: np.random.Generator, background: np.ndarray, camera: np.ndarray, events: list[Event]
) -> np.ndarray:
    """``(T, H, W, 3)`` uint8: the background seen through the camera, optional noise, then the shapes."""
    if cfg.camera_step:
        video = _camera_view(background, camera, cfg.height, cfg.width)
    else:
        video = np.broadcast_to(background, (cfg.frames, *background.shape))
    if cfg.frame_noise:
        noise = rng.integers(-cfg.frame_noise, cfg.frame_noise + 1, size=video.shape, dtype=np.int16)
        video = np.clip(video + noise, 0, 255).astype(np.uint8)
    else:
        video = video.copy()
    p = cfg.patch
    for event in events:
        mask = shape_mask(event.shape, p)
        rgb = np.asarray(PALETTE[event.colour], dtype=np.uint8)
        for t, r, c in event.tokens:
            video[t, r * p : (r + 1) * p, c * p : (c + 1) * p][mask] = rgb
    return video


# --- datasets -------------------------------------------------------------------------------------------------


class ToyDataset:
    """``size`` samples of one split, regenerated on access from a per-item seed (nothing big is stored).

    Item ``i`` always comes out the same: its randomness is ``np.random.default_rng((cfg.seed, split, 0, i))``.
    Splits use different seeds, so their videos differ. With ``balanced=True`` the question type cycles
    through ``cfg.qtypes`` (``qtypes[i % len(qtypes)]``) and, within a type, every consecutive block of
    ``n`` items of that type (``n`` candidate answers) holds each answer exactly once, in a seeded random
    order; so the first ``m · len(qtypes) · n`` items are exactly balanced. With ``balanced=False`` type and
    answer are drawn uniformly and independently.

    Args:
        cfg: the benchmark config.
        split: ``"train"``, ``"val"`` or ``"test"``.
        size: number of items, ``≥ 1``.
        balanced: stratify question types and answers (see above).
        vocab: the vocabulary to encode with (default ``Vocab(cfg)``); a superset, such as the vocabulary of a
            longer-video config, keeps the ids of a model trained on it (train-toy's short-video curriculum).
    """

    def __init__(
        self, cfg: ToyConfig, split: str = "train", size: int = 1000, balanced: bool = True, vocab: Vocab | None = None
    ):
        if not isinstance(cfg, ToyConfig):
            raise InputError(f"ToyDataset needs a ToyConfig, got {type(cfg).__name__}")
        if split not in SPLITS:
            raise InputError(f"split must be one of {tuple(SPLITS)}, got {split!r}")
        if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1:
            raise InputError(f"size must be a positive integer (the number of samples), got {size!r}")
        self.cfg, self.split, self.size, self.balanced = cfg, split, int(size), bool(balanced)
        self.vocab = Vocab(cfg) if vocab is None else vocab
        missing = [w for w in Vocab(cfg).words if w not in vocab.words] if vocab is not None else []
        if missing:
            raise InputError(f"the given vocab lacks words of this config: {missing[:5]}; use Vocab(cfg)")

    def __len__(self) -> int:
        return self.size

    def _index(self, i) -> int:
        if isinstance(i, bool) or not isinstance(i, numbers.Integral):
            raise InputError(f"ToyDataset indices must be integers, got {i!r}")
        j = int(i) + self.size if i < 0 else int(i)
        if not 0 <= j < self.size:
            raise IndexError(f"index {i} out of range for a ToyDataset of {self.size} items")
        return j

    def plan(self, i: int) -> tuple[str | None, str | None]:
        """``(qtype, answer)`` item ``i`` is built for, or ``(None, None)`` when not balanced."""
        i = self._index(i)
        if not self.balanced:
            return None, None
        nq = len(self.cfg.qtypes)
        qi, k = i % nq, i // nq
        qtype = self.cfg.qtypes[qi]
        candidates = answer_words(self.cfg, qtype)
        block, pos = divmod(k, len(candidates))
        order = np.random.default_rng((self.cfg.seed, SPLITS[self.split], 1, qi, block)).permutation(len(candidates))
        return qtype, candidates[order[pos]]

    def __getitem__(self, i) -> Sample:
        j = self._index(i)
        qtype, answer = self.plan(j)
        rng = np.random.default_rng((self.cfg.seed, SPLITS[self.split], 0, j))
        return make_sample(self.cfg, rng, qtype=qtype, answer=answer, sample_id=f"{self.split}-{j}")

    def __iter__(self) -> Iterator[Sample]:
        return (self[i] for i in range(self.size))

    def encoded(self, i: int) -> dict:
        """:func:`encode_sample` of item ``i``."""
        return encode_sample(self[i], self.vocab, self.cfg)

    def batch(self, indices: Sequence[int]) -> dict:
        """:func:`collate` of the encoded items ``indices``."""
        return collate([self.encoded(i) for i in indices])


# --- model inputs ---------------------------------------------------------------------------------------------


def visual_grid(cfg: ToyConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(frame_index, row_index, col_index)``, each ``(V,)`` long, of the visual tokens in sequence order."""
    t, r, c = np.meshgrid(np.arange(cfg.frames), np.arange(cfg.rows), np.arange(cfg.cols), indexing="ij")
    return tuple(torch.from_numpy(x.reshape(-1).astype(np.int64)) for x in (t, r, c))


def encode_sample(sample: Sample, vocab: Vocab, cfg: ToyConfig) -> dict:
    """The language-model inputs of one sample (layout in the module docstring; ``L = cfg.seq_len``).

    Returns:
        dict with
            ``input_ids``: ``(L,)`` long; ``attention_mask``: ``(L,)`` long, 0 on the left padding;
            ``visual_mask``: ``(L,)`` bool, True at the ``V`` ``<video>`` positions;
            ``relevant_mask``: ``(L,)`` bool, True at the ``<video>`` positions of ``sample.relevant``
            (a subset of ``visual_mask``); ``relevant_visual``: ``(V,)`` bool, the same over the visual tokens;
            ``frame_index``, ``row_index``, ``col_index``: ``(V,)`` long, each visual token's ``(t, r, c)``;
            ``pixels``: ``(T, 3, H, W)`` float32 in ``[0, 1]``;
            ``answer_id``: int, the answer's vocabulary id (the target at position ``L − 1``);
            ``answer_index``: int, its index in ``vocab.answer_ids(qtype)``;
            ``qtype``: str; ``id``: str.
    Raises:
        InputError: a sample whose video does not match ``cfg``, or a question longer than ``cfg.max_question_len``.
    """
    T, H, W = cfg.frames, cfg.height, cfg.width
    if not isinstance(sample, Sample) or sample.video.shape != (T, H, W, 3) or sample.video.dtype != np.uint8:
        shape = sample.video.shape if isinstance(sample, Sample) else type(sample).__name__
        raise InputError(f"sample must be a Sample with a (T, H, W, 3) = {(T, H, W, 3)} uint8 video, got {shape}")
    q_ids = vocab.encode(sample.question)
    pad = cfg.max_question_len - len(q_ids)
    if pad < 0:
        raise InputError(
            f"question of {len(q_ids)} words is longer than cfg.max_question_len = {cfg.max_question_len}; "
            f"was the sample made with another config? (qtype {sample.qtype!r})"
        )
    tpf, L = cfg.tokens_per_frame, cfg.seq_len
    frames = torch.full((T, 1 + tpf), vocab.video_id, dtype=torch.long)
    frames[:, 0] = vocab.frame_id
    input_ids = torch.cat(
        [
            torch.full((pad,), vocab.pad_id, dtype=torch.long),
            torch.tensor([vocab.bos_id]),
            frames.reshape(-1),
            torch.tensor(q_ids + [vocab.answer_marker_id], dtype=torch.long),
        ]
    )
    attention_mask = torch.ones(L, dtype=torch.long)
    attention_mask[:pad] = 0
    visual_pos = (pad + 2 + torch.arange(T)[:, None] * (1 + tpf) + torch.arange(tpf)[None]).reshape(-1)  # (V,)
    visual_mask = torch.zeros(L, dtype=torch.bool)
    visual_mask[visual_pos] = True
    relevant_visual = torch.zeros(cfg.n_visual, dtype=torch.bool)
    if sample.relevant:
        flat = torch.tensor([t * tpf + r * cfg.cols + c for t, r, c in sample.relevant], dtype=torch.long)
        relevant_visual[flat] = True
    relevant_mask = torch.zeros(L, dtype=torch.bool)
    relevant_mask[visual_pos[relevant_visual]] = True
    frame_index, row_index, col_index = visual_grid(cfg)
    # In numpy (single-threaded): torch's parallel elementwise kernels crawl on a busy 2-core machine.
    pixels = np.ascontiguousarray(sample.video.transpose(0, 3, 1, 2), dtype=np.float32)
    pixels /= 255.0
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "visual_mask": visual_mask,
        "relevant_mask": relevant_mask,
        "relevant_visual": relevant_visual,
        "frame_index": frame_index,
        "row_index": row_index,
        "col_index": col_index,
        "pixels": torch.from_numpy(pixels),
        "answer_id": vocab.token_id(sample.answer),
        "answer_index": answer_words(cfg, sample.qtype).index(sample.answer),
        "qtype": sample.qtype,
        "id": sample.id,
    }


def collate(batch: Sequence[dict]) -> dict:
    """Stack encoded samples of one config into a batch.

    Tensors are stacked to ``(b, ...)``, ints become a ``(b,)`` long tensor, anything else (``qtype``,
    ``id``) a list. Samples of one config have the same length, so no padding happens here.

    Raises:
        InputError: an empty batch, different keys, or tensors of different shapes (mixed configs).
    """
    if isinstance(batch, dict) or not isinstance(batch, Sequence) or len(batch) == 0:
        raise InputError("collate needs a non-empty list of encode_sample dicts")
    keys = list(batch[0])
    for item in batch:
        if list(item) != keys:
            raise InputError(f"collate got dicts with different keys: {keys} and {list(item)}")
    out = {}
    for key in keys:
        values = [item[key] for item in batch]
        if isinstance(values[0], torch.Tensor):
            shapes = {tuple(v.shape) for v in values}
            if len(shapes) != 1:
                raise InputError(
                    f"collate: {key!r} has different shapes {sorted(shapes)}; batch samples of one ToyConfig only"
                )
            if all(v.device.type == "cpu" and not v.requires_grad for v in values):  # numpy: see encode_sample
                out[key] = torch.from_numpy(np.stack([v.numpy() for v in values]))
            else:
                out[key] = torch.stack(values)
        elif isinstance(values[0], numbers.Integral) and not isinstance(values[0], bool):
            out[key] = torch.tensor(values, dtype=torch.long)
        else:
            out[key] = list(values)
    return out


def patchify(pixels, patch: int) -> torch.Tensor:
    """Cut frames into flattened ``p × p`` patches, in the visual-token order of the sequence.

    Args:
        pixels: ``(T, 3, H, W)`` or ``(b, T, 3, H, W)`` tensor (or numpy array), ``H`` and ``W`` multiples of ``p``.
        patch: ``p``.
    Returns:
        ``(T·R·C, 3·p·p)`` (or ``(b, T·R·C, 3·p·p)``): row ``t·R·C + r·C + c`` is the patch of frame ``t``,
        row ``r``, column ``c`` (frame-major, then row, then column); its features are in ``(channel, dy, dx)``
        order, the order of ``nn.Conv2d(3, d, p, stride=p).weight.reshape(d, -1)``, so a linear layer on
        the patches equals that convolution.
    Raises:
        InputError: wrong rank, not 3 channels, or a size not divisible by ``p``.
    """
    if isinstance(pixels, np.ndarray):
        pixels = torch.from_numpy(pixels)
    if isinstance(patch, bool) or not isinstance(patch, numbers.Integral) or patch < 1:
        raise InputError(f"patch must be a positive integer, got {patch!r}")
    if not isinstance(pixels, torch.Tensor) or pixels.dim() not in (4, 5) or pixels.shape[-3] != 3:
        shape = tuple(pixels.shape) if isinstance(pixels, torch.Tensor) else type(pixels).__name__
        raise InputError(
            f"pixels must be (T, 3, H, W) or (b, T, 3, H, W), got {shape}; permute a channels-last (T, H, W, 3) "
            "video with .permute(0, 3, 1, 2)"
        )
    *lead, T, ch, H, W = pixels.shape
    p = int(patch)
    if H % p or W % p:
        raise InputError(f"frame size {H}x{W} is not divisible by patch {p}")
    R, C = H // p, W // p
    x = pixels.reshape(*lead, T, ch, R, p, C, p)
    x = x.permute(
        *range(len(lead)), len(lead), len(lead) + 2, len(lead) + 4, len(lead) + 1, len(lead) + 3, len(lead) + 5
    )
    return x.reshape(*lead, T * R * C, ch * p * p)
