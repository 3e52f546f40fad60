"""The toy benchmark's configuration: :class:`ToyConfig`, its named variants and its splits.

A video is ``F`` frames of ``H·P × W·P`` RGB pixels cut into an ``H × W`` grid of ``P × P`` patches; a
patch-embedding vision encoder turns each ``(frame, cell)`` into one visual token, so a sample has
``V = F·H·W`` visual tokens (defaults: 32 frames of 32×32 pixels, ``P = 8``, 4×4 cells, ``V = 512``).

Every video holds a few sparse **events**: a saturated coloured square or disc that fills most of one cell
for 2–4 consecutive frames and may step to a 4-neighbouring cell between frames. Two events never share a
``(frame, cell)``, and two events of the same colour never touch in time (at least one frame lies between
them), so "how many" is unambiguous. Events are drawn in screen cells, so a token is relevant or not
whatever the camera does. How they are drawn: :mod:`~hybridreduce.toy.render`; the questions:
:mod:`~hybridreduce.toy.questions`; a sample and the datasets: :mod:`~hybridreduce.toy.dataset`.

Two **variants** (:data:`VARIANTS`, :meth:`ToyConfig.preset`; DESIGN decision 12)::

    variant  camera (camera_step)        background (texture)        noise    events                      qtypes
    static   still                       low-contrast grey, ±15      none     n_events (3–6); distinct    colour when
                                                                              colours, but count's        where count
                                                                              distractors may repeat
    clutter  random walk, steps of 1–8   high-contrast grey, ±90     ±6 per   the same, plus 20–26        + first
             pixels per axis per frame   (cut at 180), on a canvas   frame    distractor events
             (sub-patch and whole-patch  of twice the frame's size            (colours repeat; 70% step
             steps)                      that wraps around: every             every frame, 30% stand still)
                                         patch changes

``static`` makes temporal change an oracle for events: EVS keeps the first frame of every shape even at keep
0.125 and loses only their still frames. In ``clutter`` temporal change marks far more tokens than any question
needs, and EVS at keep 0.25 keeps under half of the relevant tokens (:mod:`hybridreduce.toy.stats` measures
both; val, pixel EVS at 0.25: 62% of the relevant tokens on ``static``, 39% on ``clutter``). A distractor
never has a colour the question names (the asked colour of ``when`` / ``where``, both of ``order`` / ``first``, the
counted one of ``count``); ``colour`` questions name no colour, so their distractors may take any colour,
the answer's included (no "the colour seen once" shortcut). In ``static`` only ``count`` questions repeat a
colour within a video; ``static`` items are bit-identical to those of the benchmark before the variants.

Shapes use the dimension letters of :mod:`hybridreduce.glossary`; a frame's pixel size is ``H·P × W·P``.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace

from ..errors import InputError
from .questions import ALL_QTYPES, PAIR_QTYPES, QTYPES, QUESTIONS, WHERE_ANSWERS

#: The named colours (RGB). Every one has a channel ≥ 220; the background never exceeds 130 at the default
#: texture (15) and :data:`~hybridreduce.toy.render.BACKGROUND_MAX` (180) at any, before ``frame_noise``.
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
#: The shapes an object is drawn as (a nuisance variable; schedule shapes are :data:`hybridreduce.schedule.SHAPES`).
OBJECT_SHAPES = ("square", "disc")
#: The splits and their seed component: item ``index`` of a split draws from ``(seed, SPLITS[split], 0, index)``.
SPLITS = {"train": 0, "val": 1, "test": 2}

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
        "qtypes": (*QTYPES, "first"),  # `order` asks the same with a yes / no answer; no model here learned it
    },
}


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
        frames: ``F``, frames per video.
        height, width: frame size in pixels, ``H·P`` and ``W·P``: multiples of ``patch``.
        patch: ``P``, side of a square patch (one visual token) in pixels, ``≥ 2``.
        n_events: inclusive ``(min, max)`` number of events (shapes) per video. ``count`` questions use
            ``max(min, count_range[1]) .. max`` so the total number of shapes says nothing about the answer.
        event_len: inclusive ``(min, max)`` frames an event lasts.
        move_prob: probability that an event steps to a random 4-neighbouring cell between two frames.
        qtypes: the question types to ask, a subset of :data:`ALL_QTYPES` (default :data:`QTYPES`: ``order`` and
            ``first`` are opt-in, so the default benchmark stays as it was).
        colours: the colour names used, a subset of :data:`PALETTE` (at least 4, and at least
            ``n_events[1]`` since colours are distinct within a video).
        shapes: the shapes drawn, a subset of :data:`OBJECT_SHAPES` (a nuisance variable, never asked).
        time_bins: number of equal time bins a ``when`` answer is quantised into (``≥ 4``); frame ``t``
            is in bin ``t * time_bins // frames``.
        where_answer: ``"cell"`` (answer one of ``H·W`` cell words) or ``"quadrant"`` (one of 4).
        count_range: inclusive ``(min, max)`` answers of ``count`` questions (``min ≥ 1``, at least 4 values).
        frame_noise: per-frame uniform pixel noise in ``[-frame_noise, frame_noise]`` (0: exactly static
            background, every frame draws fresh noise otherwise).
        seed: base seed; item ``index`` of a split uses the seed ``(seed, split, index)``.
        camera_step: largest camera step between two frames, in pixels per axis (0: a still camera). With
            ``camera_step > 0`` the camera looks at a ``CANVAS_SCALE·height × CANVAS_SCALE·width`` texture that
            wraps around, and every step ``(dy, dx)`` is uniform over ``[-camera_step, camera_step]²`` except
            ``(0, 0)``: never zero, so every background patch changes in every frame; ``camera_step ≥ patch``
            gives whole-patch steps besides sub-patch ones.
        texture: amplitude of the background's blocky grey texture (``± texture`` grey levels in ``P/2``-pixel
            blocks, on a per-video grey of 50–100 and a ``±6`` per-pixel grain), cut to ``[0, BACKGROUND_MAX]``;
            15 is the low-contrast ``static`` background, 90 the high-contrast ``clutter`` one.
        distractors: inclusive ``(min, max)`` extra events per video on top of ``n_events``, whose colours may
            repeat but are never one the question names (see :mod:`~hybridreduce.toy.dataset`); ``(0, 0)``: none.
        distractor_motion: share of distractors that step to a random 4-neighbouring cell in every frame (the
            others stand still; the question's own events follow ``move_prob``).
        question_len: pad every question to at least this many words (0: to the longest question of
            ``qtypes``); :func:`align_lengths` sets it so that configs share one ``seq_len``.
    Derived (not arguments): ``rows`` = ``H``, ``cols`` = ``W``, ``tokens_per_frame`` = ``H·W``,
    ``n_visual`` = ``V``, ``max_question_len``, ``seq_len`` = ``T``, ``variant``: ``"static"`` for a still
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
    shapes: tuple[str, ...] = OBJECT_SHAPES
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
        self.shapes = _names(self.shapes, "shapes", OBJECT_SHAPES)
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
        for q in (q for q in PAIR_QTYPES if q in self.qtypes):
            if self.n_events[1] < 2:
                raise InputError(
                    f"ToyConfig.n_events max {self.n_events[1]} is below 2, but {q!r} questions compare two "
                    f"shapes: raise n_events[1] to at least 2 or drop {q!r} from qtypes"
                )
            if 2 * hi_len + 1 > self.frames:
                raise InputError(
                    f"ToyConfig: two events of up to {hi_len} frames, one empty frame apart, do not fit in "
                    f"{self.frames} frames ({q!r} questions); lower event_len or add frames"
                )
        self.max_question_len = max(self.question_len, *(QUESTIONS[q].length for q in self.qtypes))
        self.seq_len = 1 + self.frames * (1 + self.tokens_per_frame) + self.max_question_len + 1
        self.variant = "static" if self.camera_step == 0 and self.distractors == (0, 0) else "clutter"


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
