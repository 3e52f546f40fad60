"""The toy benchmark's samples and datasets: :func:`make_sample` draws one question and builds its video,
:class:`ToyDataset` holds the seeded, balanced items of a split.

A sample is one question (:mod:`~hybridreduce.toy.questions`) about one video (:mod:`~hybridreduce.toy.render`).
Its answer is chosen first and the video built around it: the question's target events are placed first
(the asked token's shape; the asked colour's one shape; every shape of the counted colour; both shapes of
``order`` / ``first``), then the video's other events in distinct colours (a ``count`` video's may repeat), then the
``distractors`` in colours the question does not name. The relevant tokens follow the type's rule
(:func:`~hybridreduce.toy.questions.relevant_tokens`). :func:`~hybridreduce.toy.encoding.encode_sample`
turns a sample into language-model inputs.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator, Sequence

import numpy as np

from ..errors import InputError
from .config import SPLITS, ToyConfig
from .encoding import Vocab, collate, encode_sample
from .questions import PAIR_QTYPES, QUADRANTS, QUESTIONS, answer_words, cell_word, relevant_tokens
from .render import Canvas, Sample, background_canvas, camera_path, render_video, spread_starts


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

    canvas = Canvas(cfg)
    lo_ev, hi_ev = cfg.n_events
    F, lo_len, hi_len = cfg.frames, cfg.event_len[0], cfg.event_len[1]
    asked = None  # the token a question of the "token" relevant-token rule asks about

    # Per type: the target event(s) the answer needs and the question's slot fillers (QUESTIONS[qtype].template).
    if qtype == "count":
        n = int(answer)
        total = int(rng.integers(max(lo_ev, cfg.count_range[1]), hi_ev + 1))  # independent of the answer
        colour = cfg.colours[rng.integers(len(cfg.colours))]
        lengths = [int(x) for x in rng.integers(lo_len, hi_len + 1, size=n)]
        targets = [
            canvas.place(rng, colour, start=s, length=k)
            for s, k in zip(spread_starts(rng, lengths, F), lengths, strict=True)
        ]
        others = [c for c in cfg.colours if c != colour]
        for _ in range(total - n):  # distractor colours may repeat, so "the repeated colour" is no shortcut
            canvas.place(rng, others[rng.integers(len(others))])
        if any(e is None for e in targets):  # unreachable: targets never overlap in time
            raise AssertionError("a count target did not fit")
        slots = {"colour": colour}
    elif qtype in PAIR_QTYPES:
        total = int(rng.integers(max(lo_ev, 2), hi_ev + 1))
        if qtype == "order":
            i, j = rng.choice(len(cfg.colours), size=2, replace=False)
            colour, later = cfg.colours[i], cfg.colours[j]  # asked: "did {colour} appear before {later}"
            order = (colour, later) if answer == "yes" else (later, colour)  # the two shapes, earlier first
        else:  # asked: "which appeared first {colour} or {later}", the answer named first or second at random
            other = [c for c in cfg.colours if c != answer][rng.integers(len(cfg.colours) - 1)]
            colour, later = (answer, other) if rng.random() < 0.5 else (other, answer)
            order = (answer, other)
        lengths = [int(x) for x in rng.integers(lo_len, hi_len + 1, size=2)]
        starts = spread_starts(rng, lengths, F)  # at least one empty frame between the two
        targets = [canvas.place(rng, c, start=t0, length=k) for c, t0, k in zip(order, starts, lengths, strict=True)]
        if any(e is None for e in targets):  # unreachable: the two never overlap in time
            raise AssertionError(f"an {qtype} target did not fit")
        slots = {"colour": colour, "later": later}
        others = [c for c in cfg.colours if c not in (colour, later)]
        for k in rng.permutation(len(others))[: total - 2]:  # distinct colours
            canvas.place(rng, others[k])
    else:
        total = int(rng.integers(lo_ev, hi_ev + 1))
        if qtype == "colour":
            colour = answer
            target = canvas.place(rng, colour)
        elif qtype == "when":
            colour = cfg.colours[rng.integers(len(cfg.colours))]
            k = candidates.index(answer)
            first = -(-k * F // cfg.time_bins)  # first frame of bin k
            last = min(-(-(k + 1) * F // cfg.time_bins), F - lo_len + 1)  # one past the last allowed start
            t0 = int(rng.integers(first, last))
            length = int(rng.integers(lo_len, min(hi_len, F - t0) + 1))
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
        targets = [target]
        others = [c for c in cfg.colours if c != colour]
        for i in rng.permutation(len(others))[: total - 1]:  # distinct colours
            canvas.place(rng, others[i])
        if qtype == "colour":
            asked = target.tokens[int(rng.integers(target.length))]
            slots = {"frame": asked[0], "cell": cell_word(asked[1], asked[2])}
        else:
            slots = {"colour": colour}

    question_type = QUESTIONS[qtype]
    question = question_type.words(**slots)
    relevant = relevant_tokens(qtype, targets, asked)
    if cfg.distractors[1]:  # clutter: more events, never of a colour the question names (draws nothing if off)
        named = question_type.named_colours(**slots)
        allowed = [c for c in cfg.colours if c not in named]
        for _ in range(int(rng.integers(cfg.distractors[0], cfg.distractors[1] + 1))):
            canvas.place_distractor(rng, allowed)

    events = sorted(canvas.events, key=lambda e: (e.start, e.colour, e.cells))
    background = background_canvas(cfg, rng)
    camera = camera_path(cfg, rng)
    video = render_video(cfg, rng, background, camera, events)
    return Sample(video, background, question, qtype, answer, sorted(relevant), events, sample_id, camera)


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
