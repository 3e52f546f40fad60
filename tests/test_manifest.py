"""Manifests: path resolution, option and answer forms, question types, every error with its line, prompts, replies."""

from __future__ import annotations

import json
import os

import pytest

from hybridreduce.errors import InputError
from hybridreduce.manifest import Item, parse_choice, prompt_text, read_manifest, write_manifest

COLOURS = ["red", "green", "blue"]


def read_lines(tmp_path, *lines):
    """Write ``lines`` (dicts, or raw strings written as they are) to tmp_path/sub/m.jsonl and read it back."""
    (tmp_path / "sub").mkdir(exist_ok=True)
    path = tmp_path / "sub" / "m.jsonl"
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return read_manifest(path)


def item(**fields):
    """A valid manifest line with ``fields`` overriding the defaults (a None value removes the key)."""
    line = {"id": "q1", "video": "v.mp4", "question": "What colour?", "options": COLOURS, "answer": "B"} | fields
    return {key: value for key, value in line.items() if value is not None}


def test_paths_and_defaults(tmp_path):
    absolute = str(tmp_path / "elsewhere" / "w.mp4")
    first, second, third = read_lines(
        tmp_path,
        item(id=7),
        item(id="q2", video="../videos/x.webm", options=None, answer=None),
        item(id="q3", video=absolute),
    )
    assert first == Item(
        id="7", video=str(tmp_path / "sub" / "v.mp4"), question="What colour?", options=tuple(COLOURS), answer="B"
    )
    assert (first.qtype, first.extra, first.letters) == ("all", {}, ("A", "B", "C"))
    assert second.video == os.path.join(str(tmp_path), "videos", "x.webm")  # ".." resolved
    assert (second.options, second.answer, second.letters) == ((), None, ())
    assert third.video == absolute


def test_relative_to_the_manifest_not_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_manifest("sub.jsonl", [item()])
    (tmp_path / "run").mkdir()
    monkeypatch.chdir(tmp_path / "run")
    assert read_manifest(tmp_path / "sub.jsonl")[0].video == str(tmp_path / "v.mp4")


@pytest.mark.parametrize(
    "options",
    [
        ["red", "green", "blue"],
        ["A. red", "B. green", "C. blue"],
        ["(A) red", "(B) green", "(C) blue"],
        ["A) red", " B)  green ", "C. blue"],
        {"A": "red", "B": "green", "C": "blue"},
        {"C": "C. blue", "A": "A. red", "B": "B. green"},  # letter order, whatever the key order
    ],
)
def test_option_forms(tmp_path, options):
    assert read_lines(tmp_path, item(options=options))[0].options == ("red", "green", "blue")


def test_only_the_options_own_letter_is_stripped(tmp_path):
    (parsed,) = read_lines(tmp_path, item(options=["B. red", "A.M. green", "C.blue"], answer="A"))
    assert parsed.options == ("B. red", "A.M. green", "C.blue")


@pytest.mark.parametrize(
    "answer, options, expected",
    [
        ("B", COLOURS, "B"),
        (" C ", COLOURS, "C"),
        ("green", COLOURS, "B"),
        ("B. green", COLOURS, "B"),
        ("blue", ["A. red", "B. green", "C. blue"], "C"),
        ("C. blue", ["A. red", "B. green", "C. blue"], "C"),
        (0, COLOURS, "A"),
        (2, COLOURS, "C"),
        ("a cat", None, "a cat"),  # open-ended: kept as text
        (42, None, "42"),
    ],
)
def test_answer_forms(tmp_path, answer, options, expected):
    assert read_lines(tmp_path, item(answer=answer, options=options))[0].answer == expected


def test_question_type_keys_and_extra_fields(tmp_path):
    items = read_lines(
        tmp_path,
        item(id=1, type="Counting", duration="short"),
        item(id=2, task_type="Action Order"),
        item(id=3, task="needle", url="https://example.org/v", meta={"k": [1, 2]}),
        item(id=4, type="OCR", task="ignored here"),
    )
    assert [i.qtype for i in items] == ["Counting", "Action Order", "needle", "OCR"]
    assert [i.extra for i in items] == [
        {"duration": "short"},
        {},
        {"url": "https://example.org/v", "meta": {"k": [1, 2]}},
        {"task": "ignored here"},  # "type" wins; the other key is kept
    ]


def test_blank_lines_and_write_manifest(tmp_path):
    path = tmp_path / "m.jsonl"
    write_manifest(path, [item(id=1), item(id=2, question="Où ?")])
    path.write_text("\n  \n" + path.read_text(encoding="utf-8").replace("\n", "\n\n"), encoding="utf-8")
    assert [(i.id, i.question) for i in read_manifest(path)] == [("1", "What colour?"), ("2", "Où ?")]


@pytest.mark.parametrize(
    "bad, match",
    [
        ('{"id": 1, "video": ', r"invalid JSON \(.* at column \d+\); write one JSON object per line"),
        ("[1, 2]", "expected a JSON object, got list"),
        (item(id=None), "missing required key 'id'; every line needs id, video and question"),
        (item(video=None), "missing required key 'video'"),
        (item(question=None), "missing required key 'question'"),
        (item(id=True), "'id' must be a non-empty string or an integer, got True"),
        (item(id=""), "'id' must be a non-empty string"),
        (item(video=3), "'video' must be a non-empty path string, got 3"),
        (item(question=["why"]), "'question' must be a string"),
        (item(options="red, green"), "'options' must be a list of strings or an object"),
        (item(options=["red", 2]), "every option must be a string"),
        (item(options={"A": "red", "C": "blue"}), "the options' keys must be the letters A, B, got A, C; rename them"),
        (item(options=[f"o{i}" for i in range(27)], answer="A"), "27 options, but letters A to Z allow at most 26"),
        (item(answer="D"), r"answer 'D' matches none of the 3 options; give a letter A-C, .* index 0-2"),
        (item(answer="purple"), "answer 'purple' matches none"),
        (item(answer="AB"), "answer 'AB' matches none"),
        (item(answer=3), "answer 3 matches none"),
        (item(answer=1.0), "answer 1.0 matches none"),
        (item(answer=True), "answer True matches none"),
        (item(answer=[1], options=None), "'answer' must be a string or a number"),
        (item(type=3), "the question type must be a string"),
    ],
)
def test_line_errors_name_file_and_line(tmp_path, bad, match):
    with pytest.raises(InputError, match=r"m\.jsonl:3: " + match):
        read_lines(tmp_path, item(id="a"), "", bad, item(id="b"))


def test_duplicate_id(tmp_path):
    with pytest.raises(
        InputError, match=r"m\.jsonl:3: duplicate id '7', first used on line 1; give every item its own"
    ):
        read_lines(tmp_path, item(id=7), item(id=8), item(id="7"))


def test_file_errors(tmp_path):
    with pytest.raises(InputError, match=r"manifest .*nope\.jsonl not found; give the path of a \.jsonl file"):
        read_manifest(tmp_path / "nope.jsonl")
    (tmp_path / "blank.jsonl").write_text("\n\n")
    with pytest.raises(InputError, match=r"blank\.jsonl has no items; write one JSON object per line"):
        read_manifest(tmp_path / "blank.jsonl")
    (tmp_path / "latin1.jsonl").write_bytes('{"id": 1, "video": "v.mp4", "question": "Où ?"}\n'.encode("latin-1"))
    with pytest.raises(InputError, match=r"latin1\.jsonl is not UTF-8 text .*; save it as UTF-8"):
        read_manifest(tmp_path / "latin1.jsonl")


def test_video_files_are_not_checked(tmp_path):
    assert not os.path.exists(read_lines(tmp_path, item(video="missing/clip.mp4"))[0].video)


def test_prompt_text(tmp_path):
    (parsed,) = read_lines(tmp_path, item(options=["A. red", "B. green", "C. blue"]))
    assert prompt_text(parsed) == (
        "What colour?\nA. red\nB. green\nC. blue\nAnswer with the option's letter from the given choices directly."
    )
    assert prompt_text(Item(id="o", video="/v.mp4", question="Describe the video.")) == "Describe the video."


@pytest.mark.parametrize(
    "reply, expected",
    [
        ("B", "B"),
        ("B.", "B"),
        ("(B)", "B"),
        ("B) green", "B"),
        ("  \n C", "C"),
        ("Answer: B", "B"),
        ("The answer is B.", "B"),
        ("The answer is (A) red", "A"),
        ("A", "A"),  # exactly a letter
        ("Apple", None),  # the A of a word is not an answer
        ("Blue, I think", None),  # "I" is standalone but not an option letter
        ("D", None),  # not among the letters
        ("b", None),
        ("", None),
        ("C2 or B", "B"),
        ("Between B and C: C", "B"),  # the first one wins
    ],
)
def test_parse_choice(reply, expected):
    assert parse_choice(reply, ("A", "B", "C")) == expected


def test_parse_choice_rejects_a_non_string():
    with pytest.raises(InputError, match="text must be the generated reply as a string, got NoneType"):
        parse_choice(None, ("A", "B"))
