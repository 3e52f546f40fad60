"""Property-based tests (hypothesis) of every loader of user files: any input loads to a valid object or is refused
with the project's own :class:`~hybridreduce.errors.InputError` whose message names the file; never another
exception type, never a hang (issue 26, deliverable 5).

Inputs are drawn three ways: valid files with a few settings replaced, dropped or added (values of every YAML type,
NaN and infinities, nested lists and mappings), arbitrary text, and arbitrary bytes. Each loader gets a bounded
number of examples (``max_examples``) and each example a time limit, so the whole file stays within seconds.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from hybridreduce.errors import InputError  # noqa: E402
from tests.conftest import TINY_TOY  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: Examples per loader, derandomized in the suite (the same inputs every run); ``FUZZ_EXAMPLES=2000`` searches
#: further, with fresh inputs, by hand.
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
FUZZ = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=EXAMPLES <= 25
)
#: Seconds one load may take before it counts as a hang.
TIME_LIMIT = 10

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=10),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=6,
)


def _slots(data, prefix=()):
    """Every (container, key) of a nested mapping/list, the leaves and the containers themselves."""
    if isinstance(data, dict):
        for key, value in data.items():
            yield data, key
            yield from _slots(value)
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield data, i
            yield from _slots(value)


@st.composite
def mutated(draw, base: dict) -> dict:
    """``base`` with one to three settings replaced by any value, dropped, or joined by an unknown one."""
    data = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        slots = list(_slots(data))
        if not slots:
            break
        container, key = draw(st.sampled_from(slots))
        action = draw(st.sampled_from(("replace", "replace", "drop", "add")))
        if action == "replace":
            container[key] = draw(VALUES)
        elif action == "drop" and isinstance(container, dict):
            del container[key]
        elif isinstance(container, dict):
            container[draw(st.text(min_size=1, max_size=8))] = draw(VALUES)
    return data


def _yaml_text(data) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def contents(base: dict):
    """A YAML file's text (a mutated valid file, or any text) or bytes."""
    return st.one_of(mutated(base).map(_yaml_text), mutated(base).map(_yaml_text), st.text(max_size=200), st.binary())


@contextmanager
def time_limit(seconds: int):
    def stop(*_):
        raise TimeoutError(f"a load ran past {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def loads_or_refuses(load, path: Path, content) -> object | None:
    """Write ``content`` to ``path`` and load it: the object, or None after an InputError naming the file."""
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    try:
        with time_limit(TIME_LIMIT):
            return load(path)
    except InputError as exc:
        assert path.name in str(exc) or str(path.parent) in str(exc), f"the message names no file: {exc}"
        return None


@contextmanager
def folder():
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp)


def _yaml_loaders() -> dict:
    """Config kind → (loader, a valid config to mutate, the class it loads to)."""
    from analysis.config import AnalysisConfig
    from hybridreduce.schedule import Schedule
    from hybridreduce.toy.train_config import ToySpec, load_spec

    def valid(path: str) -> dict:
        return yaml.safe_load((ROOT / path).read_text())

    return {
        "schedule": (Schedule.load, valid("configs/schedules/progressive.yaml"), Schedule),
        "analysis": (AnalysisConfig.from_yaml, valid("configs/analysis/toy.yaml"), AnalysisConfig),
        "training": (load_spec, TINY_TOY, ToySpec),
    }


@pytest.mark.parametrize("kind", ["schedule", "analysis", "training"])
@FUZZ
@given(data=st.data())
def test_yaml_configs(kind, data):
    load, base, cls = _yaml_loaders()[kind]
    with folder() as tmp:
        loaded = loads_or_refuses(load, tmp / f"{kind}.yaml", data.draw(contents(base)))
        if loaded is not None:
            assert isinstance(loaded, cls)


MANIFEST_LINE = {"id": "q1", "video": "v.mp4", "question": "what?", "options": ["a", "b", "c"], "answer": "B"}


@st.composite
def manifests(draw):
    """A manifest of one to three lines, each a mutated valid line, or any text or bytes."""
    kind = draw(st.sampled_from(("lines", "lines", "text", "bytes")))
    if kind == "text":
        return draw(st.text(max_size=200))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    lines = [draw(mutated({**MANIFEST_LINE, "id": f"q{i}"})) for i in range(draw(st.integers(1, 3)))]
    return "\n".join(json.dumps(line, allow_nan=True) for line in lines) + "\n"


@FUZZ
@given(manifests())
def test_manifests(content):
    from hybridreduce.manifest import Item, read_manifest

    with folder() as tmp:
        items = loads_or_refuses(read_manifest, tmp / "data.jsonl", content)
        if items is not None:
            assert items and all(isinstance(item, Item) for item in items)
            for item in items:  # what loads can be scored: a question, no single or repeated option
                assert item.question.strip() and len(item.options) != 1
                assert len({o.casefold() for o in item.options}) == len(item.options)


@pytest.fixture(scope="module")
def toy_checkpoint(tmp_path_factory):
    """A tiny train-toy run (config.json, model.safetensors, train_config.yaml) to corrupt."""
    from hybridreduce.toy.train_config import build_model, spec_from_dict

    spec = spec_from_dict(copy.deepcopy(TINY_TOY))
    out = tmp_path_factory.mktemp("toy_run")
    build_model(spec).save_pretrained(out)
    (out / "train_config.yaml").write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))
    return out


def _corrupted(draw, data: bytes) -> bytes:
    how = draw(st.sampled_from(("truncate", "flip", "empty", "random")))
    if how == "truncate":
        return data[: draw(st.integers(0, max(0, len(data) - 1)))]
    if how == "flip":
        at = draw(st.integers(0, min(len(data), 4096) - 1))
        return data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1 :]
    if how == "empty":
        return b""
    return draw(st.binary(max_size=300))


@FUZZ
@given(st.data())
def test_checkpoint_folders(toy_checkpoint, data):
    """A toy checkpoint whose config.json is mutated or whose weights are truncated, flipped or replaced."""
    import shutil

    from hybridreduce.toy.demo import load_toy_spec

    with folder() as tmp:
        run = tmp / "run"
        shutil.copytree(toy_checkpoint, run)
        if data.draw(st.booleans()):
            config = json.loads((run / "config.json").read_text())
            content = data.draw(st.one_of(mutated(config).map(json.dumps), st.binary(max_size=200)))
            path = run / "config.json"
        else:
            content = _corrupted(data.draw, (run / "model.safetensors").read_bytes())
            path = run / "model.safetensors"
        loaded = loads_or_refuses(lambda _: load_toy_spec(run), path, content)
        if loaded is not None:
            from hybridreduce.toy.model import ToyVLM
            from hybridreduce.toy.train_config import ToySpec

            assert isinstance(loaded[0], ToyVLM) and isinstance(loaded[1], ToySpec)


@pytest.fixture(scope="module")
def video_bytes(tmp_path_factory):
    """A short valid MP4 to corrupt."""
    import numpy as np

    from hybridreduce.video import write_video

    path = tmp_path_factory.mktemp("video") / "v.mp4"
    rng = np.random.default_rng(0)
    write_video(path, rng.integers(0, 255, (12, 32, 32, 3), dtype=np.uint8), fps=6)
    return path.read_bytes()


@FUZZ
@given(st.data())
def test_video_files(video_bytes, data):
    """Truncated, bit-flipped, empty or random video files: read, or a VideoError naming the file."""
    from hybridreduce.video import Video, read_video

    frames = data.draw(st.sampled_from((None, 1, 4, 64)))
    with folder() as tmp:
        content = _corrupted(data.draw, video_bytes)
        video = loads_or_refuses(lambda p: read_video(p, num_frames=frames), tmp / "v.mp4", content)
        if video is not None:
            assert isinstance(video, Video) and len(video.frames) >= 1
