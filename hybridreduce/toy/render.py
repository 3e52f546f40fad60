"""Drawing the toy benchmark's videos (events, background canvas, camera, noise, shapes) and the records of a
sample (:class:`Event`, :class:`Sample`).

A sample's randomness is drawn in a fixed order (:func:`~hybridreduce.toy.dataset.make_sample`): the events
(:class:`Canvas` places them: the question's own first, then the distractors), then
:func:`background_canvas`, :func:`camera_path` and the noise of :func:`render_video`. A config without distractors
or camera motion draws nothing for them, so its samples are those of the benchmark before the variants existed.

``render_video`` paints, per frame: the background seen through the camera (:func:`camera_view`; for a still
camera the ``(H·P, W·P, 3)`` background itself), plus uniform noise in ``[-frame_noise, frame_noise]``, then each
event's shape (:func:`shape_mask`) in its colour (:data:`~hybridreduce.toy.config.PALETTE`) at its
``(frame, row, column)`` tokens. Shapes are drawn in screen cells, so the camera never moves a shape.

Shapes use the dimension letters of :mod:`hybridreduce.glossary`; a frame is ``H·P × W·P`` pixels, the
background canvas ``Hc × Wc``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from .config import OBJECT_SHAPES, PALETTE, ToyConfig

#: The brightest background grey (before noise): 40 below the palette's weakest bright channel (220), so a
#: high-contrast texture never looks like a shape.
BACKGROUND_MAX = 180
#: A moving camera looks at a background canvas this many times the frame size along each axis (wrapping around).
CANVAS_SCALE = 2
#: A distractor event that finds no free place after this many draws is dropped (never at the defaults).
MAX_PLACEMENT_TRIES = 200


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
        """The ``(frame, row, column)`` visual tokens the event covers, in time order."""
        return [(self.start + i, r, c) for i, (r, c) in enumerate(self.cells)]


@dataclass
class Sample:
    """One question about one video.

    Attributes:
        video: ``(F, H·P, W·P, 3)`` uint8 RGB frames.
        background: ``(Hc, Wc, 3)`` uint8, the texture the camera looks at (before ``frame_noise``): the
            ``(H·P, W·P, 3)`` picture every frame starts from for a still camera, a ``CANVAS_SCALE``-times larger
            canvas that wraps around for a moving one (see :meth:`frame_backgrounds`).
        question: the question words (no specials).
        qtype: one of :data:`~hybridreduce.toy.questions.ALL_QTYPES`.
        answer: the answer word (one of :func:`~hybridreduce.toy.questions.answer_words` ``(cfg, qtype)``).
        relevant: the ``(frame, row, column)`` tokens the answer depends on, sorted.
        events: every shape in the video, sorted by start frame.
        id: ``"{split}-{index}"`` for dataset items, else what the caller passed.
        camera: ``(F, 2)`` int64, the canvas pixel ``(row, column)`` at each frame's top-left corner (all zero
            for a still camera); None only for a Sample built by hand.
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
        """``(F, H·P, W·P, 3)`` uint8: what each frame shows before noise and shapes (``background`` seen through
        the camera; for a still camera, ``background`` in every frame)."""
        F, height, width, _ = self.video.shape
        camera = np.zeros((F, 2), dtype=np.int64) if self.camera is None else self.camera
        return camera_view(self.background, camera, height, width)


_MASKS: dict[tuple[str, int], np.ndarray] = {}


def shape_mask(shape: str, patch: int) -> np.ndarray:
    """``(P, P)`` bool pixels of a shape within one patch of side ``patch`` = ``P`` (a square with a ``P // 8``
    margin, or a disc)."""
    key = (shape, patch)
    if key not in _MASKS:
        P = patch
        if shape == "square":
            m = P // 8
            mask = np.zeros((P, P), dtype=bool)
            mask[m : P - m, m : P - m] = True
        elif shape == "disc":
            yy, xx = np.mgrid[0:P, 0:P] + 0.5 - P / 2
            mask = yy**2 + xx**2 <= (P / 2 - 0.25) ** 2
        else:
            raise InputError(f"unknown shape {shape!r}; choose from {OBJECT_SHAPES}")
        mask.setflags(write=False)
        _MASKS[key] = mask
    return _MASKS[key]


def background_canvas(cfg: ToyConfig, rng: np.random.Generator) -> np.ndarray:
    """``(Hc, Wc, 3)`` uint8: a tinted mid-dark grey with a blocky low-frequency and a fine grey texture.

    ``Hc × Wc`` is the frame's ``H·P × W·P`` for a still camera, ``CANVAS_SCALE`` times that for a moving one (a
    canvas that wraps around: the blocks, ``P/2`` pixels wide, tile it exactly).
    """
    scale = CANVAS_SCALE if cfg.camera_step else 1
    Hc, Wc = scale * cfg.height, scale * cfg.width
    base = rng.uniform(50, 100) + rng.uniform(-8, 8, size=3)  # (3,) per-video grey level and tint
    block = max(1, cfg.patch // 2)
    coarse = rng.uniform(-cfg.texture, cfg.texture, size=(-(-Hc // block), -(-Wc // block), 1))
    coarse = np.repeat(np.repeat(coarse, block, axis=0), block, axis=1)[:Hc, :Wc]
    fine = rng.uniform(-6, 6, size=(Hc, Wc, 1))
    # static (texture 15): channels stay within [21, 129]; a stronger texture is cut at BACKGROUND_MAX
    return np.clip(base + coarse + fine, 0, BACKGROUND_MAX).astype(np.uint8)


def camera_path(cfg: ToyConfig, rng: np.random.Generator) -> np.ndarray:
    """``(F, 2)`` int64 canvas pixel ``(row, column)`` of each frame's top-left corner: a random walk from a random
    start.

    Each of the ``F − 1`` steps is uniform over ``[-camera_step, camera_step]²`` except ``(0, 0)``, taken modulo
    the canvas size. A still camera (``camera_step = 0``) gives zeros and draws nothing from ``rng``.
    """
    F = cfg.frames
    if not cfg.camera_step:
        return np.zeros((F, 2), dtype=np.int64)
    s = cfg.camera_step
    side = 2 * s + 1
    k = rng.integers(0, side * side - 1, size=F - 1)  # index into the side x side steps, skipping the centre
    k = k + (k >= side * side // 2)
    steps = np.stack([k // side - s, k % side - s], axis=1)  # (F-1, 2), never (0, 0)
    size = np.array([CANVAS_SCALE * cfg.height, CANVAS_SCALE * cfg.width])
    start = rng.integers(0, size)  # (2,)
    return (start + np.concatenate([np.zeros((1, 2), dtype=np.int64), np.cumsum(steps, axis=0)])) % size


def camera_view(background: np.ndarray, camera: np.ndarray, height: int, width: int) -> np.ndarray:
    """``(F, height, width, 3)``: the ``height × width`` window of a wrapping ``(Hc, Wc, 3)`` canvas at each
    ``camera[t]``."""
    # Wrap-around by tiling: (Hc + height, Wc + width, 3) holds every window as a plain slice (height <= Hc,
    # width <= Wc).
    tiled = np.concatenate([background, background[:height]], axis=0)
    tiled = np.concatenate([tiled, tiled[:, :width]], axis=1)
    out = np.empty((len(camera), height, width, background.shape[2]), dtype=background.dtype)
    for t, (y, x) in enumerate(camera.tolist()):
        out[t] = tiled[y : y + height, x : x + width]
    return out


class Canvas:
    """Occupancy of the ``(frame, row, column)`` tokens and of each colour's frames while events are placed."""

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
        F, (lo, hi) = cfg.frames, cfg.event_len
        shape = cfg.shapes[rng.integers(len(cfg.shapes))]
        moving = rng.random() < cfg.distractor_motion
        for _ in range(tries):
            colour = colours[rng.integers(len(colours))]
            n = int(rng.integers(lo, hi + 1))
            busy = self.colour_frames.get(colour)
            if busy is None:
                t0 = int(rng.integers(0, F - n + 1))
            else:
                seen = np.concatenate([[0], np.cumsum(busy)])  # seen[t]: frames of this colour before t
                t = np.arange(F - n + 1)
                free = np.flatnonzero(seen[np.minimum(t + n + 1, F)] == seen[np.maximum(t - 1, 0)])
                if free.size == 0:
                    continue
                t0 = int(free[rng.integers(free.size)])
            cell = (int(rng.integers(cfg.rows)), int(rng.integers(cfg.cols)))
            event = Event(colour, shape, t0, self.path(rng, cell, n, move_prob=float(moving)))
            if self.fits(event):
                return self.add(event)
        return None


def spread_starts(rng: np.random.Generator, lengths: list[int], frames: int) -> list[int]:
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


def render_video(
    cfg: ToyConfig, rng: np.random.Generator, background: np.ndarray, camera: np.ndarray, events: list[Event]
) -> np.ndarray:
    """``(F, H·P, W·P, 3)`` uint8: the background seen through the camera, optional noise, then the shapes."""
    if cfg.camera_step:
        video = camera_view(background, camera, cfg.height, cfg.width)
    else:
        video = np.broadcast_to(background, (cfg.frames, *background.shape))
    if cfg.frame_noise:
        noise = rng.integers(-cfg.frame_noise, cfg.frame_noise + 1, size=video.shape, dtype=np.int16)
        video = np.clip(video + noise, 0, 255).astype(np.uint8)
    else:
        video = video.copy()
    P = cfg.patch
    for event in events:
        mask = shape_mask(event.shape, P)
        rgb = np.asarray(PALETTE[event.colour], dtype=np.uint8)
        for t, r, c in event.tokens:
            video[t, r * P : (r + 1) * P, c * P : (c + 1) * P][mask] = rgb
    return video
