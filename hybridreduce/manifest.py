"""Video question-answering manifests: JSON Lines in the multiple-choice layout of VideoMME, MLVU and LongVideoBench.

One JSON object per line (blank lines are skipped), for example::

    {"id": "001-1", "video": "videos/fFjv93ACGo8.mp4", "question": "What is the man holding?",
     "options": ["A. A cup.", "B. A phone.", "C. A book."], "answer": "B", "type": "Object Recognition"}

Keys:

- ``id`` (required): a string or an integer (stored as a string), unique in the file.
- ``video`` (required): a path; a relative one is resolved against the manifest's folder. Whether the file exists
  is not checked here: a run records a missing video as that item's error and goes on.
- ``question`` (required): a non-empty string.
- ``options``: a list of strings, or an object ``{"A": ..., "B": ...}`` whose keys are the first letters of the
  alphabet; two to 26, each non-empty and different from the others (an item that cannot be scored is refused:
  one option is always "right", two equal ones cannot be told apart). A prefix that repeats the option's own
  letter (``"A. "``, ``"(A) "``, ``"A) "``) is removed, since :func:`prompt_text` adds the letters itself.
- ``answer``: with options, the option's letter, its text (with or without its letter prefix) or its 0-based index,
  stored as the letter (an answer that reads as one option's letter and another's text is refused); without options
  (an open-ended question), a string or a number, stored as text.
- ``type``: the question type or task, also read from ``task_type`` or ``task``; ``"all"`` when absent.

Every other key is kept, as is, in :attr:`Item.extra`.

:func:`prompt_text` writes the question, one ``"A. text"`` line per option and the instruction
:data:`ANSWER_INSTRUCTION`; :func:`parse_choice` reads the chosen letter back from the model's reply.
"""

from __future__ import annotations

import json
import os
import re
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

from .errors import InputError

LETTERS = string.ascii_uppercase
#: The last line of a multiple-choice prompt.
ANSWER_INSTRUCTION = "Answer with the option's letter from the given choices directly."
#: Keys read as the question type, in order of precedence; the ones not used stay in ``extra``.
QTYPE_KEYS = ("type", "task_type", "task")

# "A. ", "A) " or "(A) " at the start of an option; group 1 or 2 is the letter.
_LETTER_PREFIX = re.compile(r"(?:\(([A-Z])\)|([A-Z])[.)])\s+")
# A capital letter that is not part of a word or number ("B", "(B)", "B." but not the "A" of "Apple").
_STANDALONE_LETTER = re.compile(r"(?<!\w)[A-Z](?!\w)")


@dataclass(frozen=True)
class Item:
    """One question of a manifest.

    Attributes:
        id: the item's id, unique in its manifest.
        video: absolute path of the video file or frame folder (not checked to exist).
        question: the question text.
        options: the answer options without letter prefixes; empty for an open-ended question.
        answer: the correct option's letter, the expected text of an open-ended question, or None when unknown.
        qtype: the question type or task, ``"all"`` when the manifest gives none.
        extra: every other key of the manifest line.
    """

    id: str
    video: str
    question: str
    options: tuple[str, ...] = ()
    answer: str | None = None
    qtype: str = "all"
    extra: dict = field(default_factory=dict)

    @property
    def letters(self) -> tuple[str, ...]:
        """The options' letters: ``("A", "B", ...)``, one per option."""
        return tuple(LETTERS[: len(self.options)])


def read_manifest(path: str | PathLike) -> list[Item]:
    """Read a JSON Lines manifest (layout in the module docstring).

    Args:
        path: the ``.jsonl`` file.
    Returns:
        Its items in file order.
    Raises:
        InputError: the file is missing, not UTF-8 or has no item, or a line (named as ``FILE:LINE``) is not a JSON
            object, lacks ``id``/``video``/``question`` or has one of the wrong type, has an empty question, has
            malformed, empty, repeated, a single or more than 26 options, an answer that matches no option or two
            (a letter and another option's text), or an id already used.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"manifest {path} not found; give the path of a .jsonl file (one JSON object per line)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"manifest {path} is not UTF-8 text ({exc.reason}); save it as UTF-8") from None
    base = path.absolute().parent
    items: list[Item] = []
    first_line: dict[str, int] = {}
    # split("\n"), not splitlines(): JSON strings may hold U+2028 and other characters splitlines() breaks at.
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        item = _parse_line(line, base, f"{path}:{lineno}")
        if item.id in first_line:
            raise InputError(
                f"{path}:{lineno}: duplicate id {item.id!r}, first used on line {first_line[item.id]}; "
                "give every item its own id"
            )
        first_line[item.id] = lineno
        items.append(item)
    if not items:
        raise InputError(f"manifest {path} has no items; write one JSON object per line")
    return items


def _parse_line(line: str, base: Path, where: str) -> Item:
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{where}: invalid JSON ({exc.msg} at column {exc.colno}); write one JSON object per line"
        ) from None
    if not isinstance(raw, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(raw).__name__}; write one {{...}} per line")
    for key in ("id", "video", "question"):
        if key not in raw:
            raise InputError(f"{where}: missing required key {key!r}; every line needs id, video and question")
    item_id, video, question = raw.pop("id"), raw.pop("video"), raw.pop("question")
    if isinstance(item_id, bool) or not isinstance(item_id, (str, int)) or item_id == "":
        raise InputError(f"{where}: 'id' must be a non-empty string or an integer, got {item_id!r}")
    if not isinstance(video, str) or not video:
        raise InputError(f"{where}: 'video' must be a non-empty path string, got {video!r}")
    if not isinstance(question, str):
        raise InputError(f"{where}: 'question' must be a string, got {question!r}")
    if not question.strip():
        raise InputError(f"{where}: 'question' is empty; write the question (or drop the item)")
    options = parse_options(raw.pop("options", None), where)
    if len(options) == 1:  # a one-option item is always answered right: it would inflate the accuracy
        raise InputError(
            f"{where}: one option ({options[0]!r}) is no choice; give at least two options, or none for an "
            "open-ended question"
        )
    answer = _parse_answer(raw.pop("answer", None), options, where)
    qtype = next((raw.pop(key) for key in QTYPE_KEYS if key in raw), "all")
    if not isinstance(qtype, str):
        raise InputError(f"{where}: the question type must be a string, got {qtype!r}")
    return Item(
        id=str(item_id),
        video=os.path.abspath(os.path.join(base, video)),  # join keeps an absolute `video` as it is
        question=question,
        options=options,
        answer=answer,
        qtype=qtype,
        extra=raw,
    )


def _strip_letter(text: str, letter: str) -> str:
    """``text`` without surrounding spaces and without a leading ``"X. "``, ``"X) "`` or ``"(X) "`` for X = letter."""
    text = text.strip()
    prefix = _LETTER_PREFIX.match(text)
    return text[prefix.end() :] if prefix and letter in prefix.groups() else text


def parse_options(value: object, where: str) -> tuple[str, ...]:
    """The multiple-choice options of a manifest line or of ``generate --option``, in letter order A, B, ...: a list
    of strings or a mapping ``{"A": ..., "B": ...}``, at most 26, none empty or repeated (``where`` names the source
    in every error). A leading ``"A. "``, ``"A) "`` or ``"(A) "`` that repeats the option's own letter is dropped."""
    if value is None:
        return ()
    if not isinstance(value, (list, dict)):
        raise InputError(
            f'{where}: \'options\' must be a list of strings or an object {{"A": ..., "B": ...}}, got {value!r}'
        )
    if len(value) > len(LETTERS):
        raise InputError(f"{where}: {len(value)} options, but letters A to Z allow at most 26; drop some options")
    if isinstance(value, dict):
        letters = list(LETTERS[: len(value)])
        if sorted(value) != letters:
            raise InputError(
                f"{where}: the options' keys must be the letters {', '.join(letters)}, got {', '.join(value)}; "
                "rename them, or give the options as a list"
            )
        value = [value[letter] for letter in letters]
    if not all(isinstance(option, str) for option in value):
        raise InputError(f"{where}: every option must be a string, got {value!r}")
    options = tuple(_strip_letter(option, letter) for option, letter in zip(value, LETTERS[: len(value)], strict=True))
    seen: dict[str, str] = {}
    for letter, option in zip(LETTERS, options, strict=False):
        if not option:
            raise InputError(f"{where}: option {letter} is empty; write its text or drop it")
        key = " ".join(option.casefold().split())
        if key in seen:  # two options with one text: the model's choice between them cannot be scored
            raise InputError(
                f"{where}: options {seen[key]} and {letter} are the same ({option!r}); give every option its own text"
            )
        seen[key] = letter
    return options


def _parse_answer(value: object, options: tuple[str, ...], where: str) -> str | None:
    if value is None:
        return None
    if not options:  # open-ended: the expected text
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise InputError(f"{where}: 'answer' must be a string or a number, got {value!r}")
        return str(value)
    letters = tuple(LETTERS[: len(options)])  # a tuple: `in` on a string would accept "AB" or ""
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value < len(options):
            return letters[value]
    elif isinstance(value, str):
        text = value.strip()
        matches = {text} if text in letters else set()
        matches |= {
            letter for letter, option in zip(letters, options, strict=True) if _strip_letter(text, letter) == option
        }
        if len(matches) > 1:
            raise InputError(
                f"{where}: answer {value!r} matches options {', '.join(sorted(matches))} (a letter and another "
                "option's text); give the answer as its 0-based index"
            )
        if matches:
            return matches.pop()
    raise InputError(
        f"{where}: answer {value!r} matches none of the {len(options)} options; give a letter "
        f"{letters[0]}-{letters[-1]}, the text of one option, or its 0-based index 0-{len(options) - 1}"
    )


def prompt_text(item: Item) -> str:
    """The question as shown to the model.

    Args:
        item: a manifest item.
    Returns:
        The question, then (when there are options) one ``"A. text"`` line per option and
        :data:`ANSWER_INSTRUCTION`, joined by newlines.
    """
    lines = [item.question]
    if item.options:
        lines += [f"{letter}. {option}" for letter, option in zip(item.letters, item.options, strict=True)]
        lines.append(ANSWER_INSTRUCTION)
    return "\n".join(lines)


def parse_choice(text: str, letters: Sequence[str]) -> str | None:
    """The option letter a model's reply chooses.

    The first capital letter standing alone (not inside a word or a number) that is one of ``letters`` wins, so
    ``"B"``, ``"B."``, ``"(B)"``, ``"B) a phone"``, ``"Answer: B"`` and ``"The answer is B"`` all give ``"B"``,
    while ``"Apple"`` gives no ``"A"``.

    Args:
        text: the generated reply.
        letters: the allowed letters, e.g. :attr:`Item.letters`.
    Returns:
        The letter, or None when the reply has none of ``letters`` standing alone.
    Raises:
        InputError: ``text`` is not a string.
    """
    if not isinstance(text, str):
        raise InputError(f"text must be the generated reply as a string, got {type(text).__name__}")
    allowed = set(letters)
    return next((match.group() for match in _STANDALONE_LETTER.finditer(text) if match.group() in allowed), None)


def write_manifest(path: str | PathLike, items: Iterable[dict]) -> None:
    """Write ``items`` (plain dicts with the keys of the module docstring) as a JSON Lines manifest.

    Args:
        path: the file to write (overwritten).
        items: one dict per line, written with ``json.dumps(..., ensure_ascii=False)``.
    """
    with Path(path).open("w", encoding="utf-8") as out:
        for item in items:
            out.write(json.dumps(item, ensure_ascii=False) + "\n")
