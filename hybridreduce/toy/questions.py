"""The toy benchmark's question types in one table (:data:`QUESTIONS`): words, answers, relevant tokens.

Each :class:`QuestionType` states how the question is worded (a template whose ``{slot}`` words are filled in),
its candidate answers, what it asks about (which videos allow it as a follow-up question) and its
relevant-token rule. Everything else derives from the table: a type's question length, the question words of the
vocabulary (:data:`QUESTION_WORDS`, :data:`ORDER_WORDS`), the colours a question names (no distractor takes them),
the chance level. :func:`~hybridreduce.toy.dataset.make_sample` builds a video around a question and
:func:`follow_up_questions` asks more questions of a finished video, both with :meth:`QuestionType.words`.

The types (chance is one over the number of candidates; answers are drawn uniformly, and
:class:`~hybridreduce.toy.dataset.ToyDataset` balances them exactly)::

    type    question (words)                               answer                   candidates    chance
    colour  what colour was at frame 17 cell r1c2          colour word              len(colours)  1/8
    when    when did the red shape appear                  time bin of first frame  time_bins     1/4
    where   where did the red shape appear                 cell of first frame      H·W (or 4)    1/16 (1/4)
    count   how many red shapes appeared                   number                   count_range   1/4
    order   did red appear before blue                     yes / no                 2             1/2
    first   which appeared first red or blue               the earlier colour       colours       1/2

    relevant tokens: colour → the one asked (frame, row, column); when / where → every token of that shape
    (its first token alone suffices); count → every token of every shape of that colour; order / first → every
    token of both shapes (the first token of each suffices).

``order`` and ``first`` are opt-in (not in the default :data:`QTYPES`, so ``static`` items do not change): the
two named colours appear once each, in two events at least one frame apart, so "before" compares two distinct
times. Both need tokens from two different times; they ask the same fact in two forms. ``order`` answers with
one bit that must be compared against the colour named first; ``first`` answers with the earlier colour itself,
the word a lookup of "the earliest token of either colour" returns. The 24-block model never learned ``order``
(``experiments/order_question/``), which is why ``clutter`` asks ``first``. ``first``'s candidates are all the
colours (its answer is a colour word), but a model that reads the question can tell that only the two named
colours are possible, so its chance level is 1/2 (:attr:`QuestionType.plausible`).

Chance is for a model that knows only the question (defaults in brackets: ``where_answer="quadrant"``).
A model that sees which colours are present but not where does better on ``colour`` (about one over
the number of events, ~1/4.5 at defaults): the asked cell always holds one of the present colours.

Questions end on their key words (no question mark), so the words that name what to look for — the
colour(s), the frame and cell — sit within the last four tokens before ``<answer>``, inside the reach of a
Mamba block's short convolution at that position.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InputError

if TYPE_CHECKING:  # annotations only: the config validates qtypes against this module
    from .config import ToyConfig
    from .render import Event, Sample

WHERE_ANSWERS = ("cell", "quadrant")
QUADRANTS = ("top-left", "top-right", "bottom-left", "bottom-right")
#: The answers of ``order`` questions.
ORDER_ANSWERS = ("yes", "no")
#: The two-shape question types (subject ``pair``): both ask which of two named shapes appeared first.
PAIR_QTYPES = ("order", "first")
#: Slots whose filler is a colour word: the colours a question names.
COLOUR_SLOTS = ("colour", "later")
#: What a question asks about, hence which videos allow it (:func:`follow_up_questions`): ``token`` any token of
#: any event; ``single`` a colour seen in exactly one event; ``repeated`` a colour seen in
#: ``max(count_range[0], 2) .. count_range[1]`` events; ``pair`` two single colours, the first ending at least one
#: frame before the second starts.
SUBJECTS = ("token", "single", "repeated", "pair")
#: Relevant-token rules: ``token`` the one ``(frame, row, column)`` asked about; ``events`` every token of the
#: question's target events (:func:`relevant_tokens`).
RELEVANT_RULES = ("token", "events")


def time_bin(cfg: ToyConfig, t: int) -> int:
    """The ``when`` bin of frame ``t``: ``t * time_bins // frames``."""
    return t * cfg.time_bins // cfg.frames


def cell_word(r: int, c: int) -> str:
    """The word of the grid cell in row ``r``, column ``c``: ``"r{r}c{c}"``."""
    return f"r{r}c{c}"


def bin_word(k: int) -> str:
    """The word of time bin ``k``: ``"bin{k}"``."""
    return f"bin{k}"


def quadrant(cfg: ToyConfig, r: int, c: int) -> str:
    """The quadrant word of the cell in row ``r``, column ``c`` (the grid is split at ``H/2`` and ``W/2``)."""
    return QUADRANTS[2 * int(r >= cfg.rows // 2) + int(c >= cfg.cols // 2)]


def _colour_answers(cfg: ToyConfig) -> list[str]:
    return list(cfg.colours)


def _when_answers(cfg: ToyConfig) -> list[str]:
    return [bin_word(k) for k in range(cfg.time_bins)]


def _where_answers(cfg: ToyConfig) -> list[str]:
    if cfg.where_answer == "quadrant":
        return list(QUADRANTS)
    return [cell_word(r, c) for r in range(cfg.rows) for c in range(cfg.cols)]


def _count_answers(cfg: ToyConfig) -> list[str]:
    return [str(n) for n in range(cfg.count_range[0], cfg.count_range[1] + 1)]


def _order_answers(cfg: ToyConfig) -> list[str]:
    return list(ORDER_ANSWERS)


@dataclass(frozen=True)
class QuestionType:
    """One question type: its words, its answers, what it asks about and the tokens its answer needs.

    Attributes:
        name: the type, as ``ToyConfig.qtypes`` lists it.
        template: the question's words; a ``{slot}`` word is filled by :meth:`words` (``{frame}`` a frame number,
            ``{cell}`` a cell word, ``{colour}`` and ``{later}`` colour words: :data:`COLOUR_SLOTS`).
        answer: what the answer is, in words.
        candidates: ``cfg → list[str]``, the candidate answer words in their fixed order (:func:`answer_words`).
        subject: what it asks about, one of :data:`SUBJECTS`.
        relevant: its relevant-token rule, one of :data:`RELEVANT_RULES`.
        plausible: how many of the candidates a model that reads only the question cannot rule out (``first``:
            the two colours it names), when fewer than all of them; :func:`chance_level` is one over it.
    Derived: ``length`` (words, :attr:`length`; the sequence layout pads every question of a config to the
    longest), ``slots`` and ``fixed`` (the template's slots and its literal words).
    """

    name: str
    template: tuple[str, ...]
    answer: str
    candidates: Callable[[ToyConfig], list[str]]
    subject: str
    relevant: str
    plausible: int | None = None

    def __post_init__(self):  # a guard on the table below
        if self.subject not in SUBJECTS or self.relevant not in RELEVANT_RULES:
            raise AssertionError(f"question type {self.name!r}: bad subject or relevant rule")

    @property
    def length(self) -> int:
        """Words of the question (every question of the type has this many)."""
        return len(self.template)

    @property
    def slots(self) -> tuple[str, ...]:
        """The template's slot names, in order (``"{colour}"`` → ``"colour"``)."""
        return tuple(w[1:-1] for w in self.template if _is_slot(w))

    @property
    def fixed(self) -> tuple[str, ...]:
        """The template's literal words, in order."""
        return tuple(w for w in self.template if not _is_slot(w))

    def words(self, **slots) -> list[str]:
        """The question with every slot filled: ``QUESTIONS["count"].words(colour="red")`` →
        ``["how", "many", "red", "shapes", "appeared"]``.

        Raises:
            InputError: a slot missing or one the template does not have.
        """
        if set(slots) != set(self.slots):
            raise InputError(f"a {self.name!r} question fills the slots {self.slots}, got {tuple(slots)}")
        return [str(slots[w[1:-1]]) if _is_slot(w) else w for w in self.template]

    def named_colours(self, **slots) -> list[str]:
        """The colours a question with these slot fillers names (distractors never take them)."""
        return [slots[s] for s in self.slots if s in COLOUR_SLOTS]


def _is_slot(word: str) -> bool:
    return word.startswith("{") and word.endswith("}")


#: Every question type, in the order of :data:`ALL_QTYPES`.
QUESTIONS: dict[str, QuestionType] = {
    q.name: q
    for q in (
        QuestionType(
            "colour",
            ("what", "colour", "was", "at", "frame", "{frame}", "cell", "{cell}"),
            "colour word",
            _colour_answers,
            subject="token",
            relevant="token",
        ),
        QuestionType(
            "when",
            ("when", "did", "the", "{colour}", "shape", "appear"),
            "time bin of the shape's first frame",
            _when_answers,
            subject="single",
            relevant="events",
        ),
        QuestionType(
            "where",
            ("where", "did", "the", "{colour}", "shape", "appear"),
            "cell (or quadrant) of the shape's first frame",
            _where_answers,
            subject="single",
            relevant="events",
        ),
        QuestionType(
            "count",
            ("how", "many", "{colour}", "shapes", "appeared"),
            "number of shapes of that colour",
            _count_answers,
            subject="repeated",
            relevant="events",
        ),
        QuestionType(
            "order",
            ("did", "{colour}", "appear", "before", "{later}"),
            "yes / no",
            _order_answers,
            subject="pair",
            relevant="events",
        ),
        QuestionType(
            "first",
            ("which", "appeared", "first", "{colour}", "or", "{later}"),
            "the colour of the shape that appeared first",
            _colour_answers,
            subject="pair",
            relevant="events",
            plausible=2,
        ),
    )
}
#: The default question types (those of ``static``).
QTYPES = ("colour", "when", "where", "count")
#: Every question type; ``order`` and ``first`` are opt-in (``ToyConfig.qtypes``); ``clutter`` asks ``first``.
ALL_QTYPES = tuple(QUESTIONS)


def _literal_words(qtypes) -> tuple[str, ...]:
    """The literal words of the templates of ``qtypes``, each once, in order of first use."""
    return tuple(dict.fromkeys(w for q in qtypes for w in QUESTIONS[q].fixed))


#: The question words of every vocabulary (:class:`~hybridreduce.toy.encoding.Vocab`): the literal words of the
#: default types' templates, then ``"?"`` (no question uses it; it keeps its id, as every word does).
QUESTION_WORDS = (*_literal_words(QTYPES), "?")
#: Words only ``order`` questions use (its new literal words, then its answers); :class:`Vocab` appends them, in
#: this order, when ``qtypes`` has ``order``.
ORDER_WORDS = (*(w for w in _literal_words(["order"]) if w not in QUESTION_WORDS), *ORDER_ANSWERS)
#: Words only ``first`` questions use; :class:`Vocab` appends them after :data:`ORDER_WORDS` when ``qtypes`` has
#: ``first`` (so a vocabulary with ``first`` extends one with ``order``, and a model trained on ``order`` grows).
FIRST_WORDS = tuple(w for w in _literal_words(["first"]) if w not in (*QUESTION_WORDS, *ORDER_WORDS))


def answer_words(cfg: ToyConfig, qtype: str) -> list[str]:
    """The candidate answers of a question type, in a fixed order (the multiple-choice options).

    Raises:
        InputError: ``qtype`` not one of :data:`ALL_QTYPES`.
    """
    if qtype not in QUESTIONS:
        raise InputError(f"unknown question type {qtype!r}; choose from {ALL_QTYPES}")
    return QUESTIONS[qtype].candidates(cfg)


def chance_level(cfg: ToyConfig) -> dict[str, float]:
    """One over the number of candidate answers a model that reads only the question cannot rule out (all of
    them, or :attr:`QuestionType.plausible`), for each question type of the config."""
    return {q: 1.0 / (QUESTIONS[q].plausible or len(answer_words(cfg, q))) for q in cfg.qtypes}


def relevant_tokens(qtype: str, targets: list[Event], asked: tuple[int, int, int] | None = None) -> list[tuple]:
    """The ``(frame, row, column)`` tokens the answer of a ``qtype`` question depends on (its rule, unsorted).

    Args:
        targets: the question's target events (the one shape of ``when`` / ``where``, every shape of the counted
            colour, both shapes of ``order`` / ``first``); unused by the ``token`` rule.
        asked: the token a ``token``-rule question asks about.
    """
    if QUESTIONS[qtype].relevant == "token":
        return [asked]
    return [tok for e in targets for tok in e.tokens]


def order_starts(words: list[str], events: list[Event]) -> tuple[int, int]:
    """First frames of the two shapes an ``order`` question (``did A appear before B``) names, A's then B's.

    The answer is "yes" exactly when the first is smaller. Used as the target of training's order hint
    (``TrainConfig.order_hint_weight``) and by ``scripts/order_probe.py``.
    """
    starts = {e.colour: e.start for e in events}
    named = [starts[w] for w in words if w in starts]
    if len(named) != 2:
        raise InputError(f"an order question names two shapes of its video; {' '.join(words)!r} names {len(named)}")
    return named[0], named[1]


def follow_up_questions(sample: Sample, cfg: ToyConfig, rng: np.random.Generator, n: int) -> list[tuple]:
    """``n`` more questions about ``sample``'s video, each answerable from the video alone (for training).

    Every question is well defined on the video, by its type's subject (:data:`SUBJECTS`): ``colour`` asks a
    random token of a random event; ``when`` / ``where`` ask a colour that appears in exactly one event;
    ``count`` asks a colour seen in at least two events (and at most ``cfg.count_range[1]``); ``order`` and
    ``first`` ask two colours that appear in exactly one event each, at least one frame apart, in a random order.
    Types are drawn uniformly among those of ``cfg.qtypes`` that the video allows; answers follow the video, so
    they are not balanced.

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
    if set(PAIR_QTYPES) & set(cfg.qtypes):
        for a, b in ((a, b) for a in single for b in single if a != b):
            if per_colour[a][0].end < per_colour[b][0].start:
                pairs.append((a, b))
    available = {"token": True, "single": bool(single), "repeated": bool(countable), "pair": bool(pairs)}
    allowed = [q for q in cfg.qtypes if available[QUESTIONS[q].subject]]
    out = []
    for _ in range(n):
        qtype = allowed[rng.integers(len(allowed))]
        question = QUESTIONS[qtype]
        if qtype == "colour":
            event = sample.events[rng.integers(len(sample.events))]
            t, r, c = event.tokens[rng.integers(event.length)]
            out.append((question.words(frame=t, cell=cell_word(r, c)), qtype, event.colour))
        elif qtype == "count":
            colour = countable[rng.integers(len(countable))]
            out.append((question.words(colour=colour), qtype, str(len(per_colour[colour]))))
        elif qtype == "order":
            first, second = pairs[rng.integers(len(pairs))]
            if rng.random() < 0.5:
                out.append((question.words(colour=first, later=second), qtype, "yes"))
            else:
                out.append((question.words(colour=second, later=first), qtype, "no"))
        elif qtype == "first":
            earlier, later = pairs[rng.integers(len(pairs))]
            named = (earlier, later) if rng.random() < 0.5 else (later, earlier)
            out.append((question.words(colour=named[0], later=named[1]), qtype, earlier))
        else:
            colour = single[rng.integers(len(single))]
            event = per_colour[colour][0]
            if qtype == "when":
                answer = bin_word(time_bin(cfg, event.start))
            else:
                r, c = event.cells[0]
                answer = quadrant(cfg, r, c) if cfg.where_answer == "quadrant" else cell_word(r, c)
            out.append((question.words(colour=colour), qtype, answer))
    return out
