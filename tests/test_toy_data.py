"""Toy long-video QA benchmark: determinism, balance, relevance, sequence layout, patchify, config errors;
the static / clutter variants (static bit-identical to before them), vocabulary prefixes, common lengths, and
the benchmark statistics of hybridreduce.toy.stats."""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import itertools
import json
import time

import numpy as np
import pytest
import torch

from hybridreduce.errors import InputError
from hybridreduce.toy import (
    ALL_QTYPES,
    PALETTE,
    QTYPES,
    VARIANTS,
    Sample,
    ToyConfig,
    ToyDataset,
    Vocab,
    align_lengths,
    answer_words,
    chance_level,
    collate,
    encode_sample,
    make_sample,
    patchify,
    shared_vocab,
    visual_grid,
)
from hybridreduce.toy import stats as toy_stats
from hybridreduce.toy.config import PRESETS
from hybridreduce.toy.questions import (
    FIRST_WORDS,
    ORDER_WORDS,
    QUADRANTS,
    QUESTION_WORDS,
    QUESTIONS,
    cell_word,
    follow_up_questions,
    quadrant,
    relevant_tokens,
    time_bin,
)
from hybridreduce.toy.render import BACKGROUND_MAX, CANVAS_SCALE, shape_mask

CFG = ToyConfig()
SMALL = ToyConfig(frames=16, height=24, width=32, patch=8, n_events=(2, 4), event_len=(2, 3), seed=3)  # 3x4 grid
CLUTTER = ToyConfig.preset("clutter")
CLUTTER_ALL = ToyConfig.preset("clutter", qtypes=ALL_QTYPES)  # clutter videos, every question type (+ `order`)


@pytest.fixture(scope="module")
def samples() -> list[Sample]:
    """400 balanced test-split samples of the default config (100 per question type)."""
    return list(ToyDataset(CFG, "test", 400))


def patch_of(video: np.ndarray, p: int, t: int, r: int, c: int) -> np.ndarray:
    """``(p, p, 3)`` pixels of token ``(t, r, c)``."""
    return video[t, r * p : (r + 1) * p, c * p : (c + 1) * p]


def centre_colour(patch: np.ndarray) -> str:
    """Nearest palette colour to the mean of the central ``p/2 × p/2`` pixels (always inside a shape)."""
    p = patch.shape[0]
    q = p // 4
    mean = patch[q : p - q, q : p - q].reshape(-1, 3).astype(float).mean(0)
    return min(PALETTE, key=lambda name: np.abs(mean - PALETTE[name]).sum())


def named_colours(sample: Sample) -> list[str]:
    """The colours a question names: none (colour), the asked one (when, where, count), both (order, first)."""
    q = sample.question
    slots = {"colour": [], "when": [3], "where": [3], "count": [2], "order": [1, 4], "first": [3, 5]}[sample.qtype]
    return [q[i] for i in slots]


def oracle(sample: Sample, cfg: ToyConfig) -> str:
    """Answer from the question and the pixels of the RELEVANT tokens only."""
    patches = {tok: patch_of(sample.video, cfg.patch, *tok) for tok in sample.relevant}
    q = sample.question
    if sample.qtype == "colour":
        (patch,) = patches.values()
        return centre_colour(patch)
    if sample.qtype == "order":  # the first frame showing each named colour
        first = {}
        for tok in sorted(patches):
            first.setdefault(centre_colour(patches[tok]), tok[0])
        assert sorted(first) == sorted(named_colours(sample))
        return "yes" if first[q[1]] < first[q[4]] else "no"
    if sample.qtype == "first":  # the named colour whose first frame is earlier
        first = {}
        for tok in sorted(patches):
            first.setdefault(centre_colour(patches[tok]), tok[0])
        assert sorted(first) == sorted(named_colours(sample))
        return min(first, key=first.get)
    colour = q[3] if sample.qtype in ("when", "where") else q[2]
    assert all(centre_colour(p) == colour for p in patches.values())
    tokens = sorted(patches)
    if sample.qtype == "when":
        return f"bin{time_bin(cfg, tokens[0][0])}"
    if sample.qtype == "where":
        _, r, c = tokens[0]
        return quadrant(cfg, r, c) if cfg.where_answer == "quadrant" else cell_word(r, c)
    frames = sorted({t for t, _, _ in tokens})  # same-colour shapes never touch in time: count the runs
    return str(1 + sum(b - a > 1 for a, b in itertools.pairwise(frames)))


# --- config ---------------------------------------------------------------------------------------------------


def test_config_derived_fields():
    assert (CFG.rows, CFG.cols, CFG.tokens_per_frame, CFG.n_visual) == (4, 4, 16, 512)
    assert CFG.max_question_len == 8
    assert CFG.seq_len == 1 + 32 * (1 + 16) + 8 + 1
    assert (SMALL.rows, SMALL.cols, SMALL.n_visual) == (3, 4, 16 * 12)
    assert ToyConfig(qtypes=["count"]).qtypes == ("count",)  # lists become tuples
    assert ToyConfig(qtypes=["count"]).max_question_len == 5


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(patch=5), ["32x32", "not divisible by patch 5"]),
        (dict(height=30), ["30x32", "multiples of the patch"]),
        (dict(frames=0), ["ToyConfig.frames", ">= 1"]),
        (dict(frames=2.5), ["ToyConfig.frames"]),
        (dict(patch=1), ["ToyConfig.patch", ">= 2"]),
        (dict(patch=True), ["ToyConfig.patch"]),
        (dict(n_events=(5, 3)), ["n_events", "min > max"]),
        (dict(n_events=4), ["n_events", "(min, max)"]),
        (dict(n_events=(3, 9)), ["n_events max 9", "8 colours"]),
        (dict(event_len=(2, 40)), ["event_len max 40", "longer than the video"]),
        (dict(qtypes=["colour", "size"]), ["qtypes", "'size'"]),
        (dict(qtypes=[]), ["qtypes", "non-empty"]),
        (dict(qtypes=["when", "when"]), ["qtypes", "twice"]),
        (dict(colours=("red", "green", "blue"), n_events=(2, 3)), ["colours", "at least 4"]),
        (dict(colours=("red", "green", "blue", "purple")), ["colours", "'purple'"]),
        (dict(move_prob=1.5), ["move_prob", "[0, 1]"]),
        (dict(move_prob=float("nan")), ["move_prob"]),
        (dict(time_bins=3), ["time_bins", ">= 4"]),
        (dict(frames=12, time_bins=8), ["time_bins", "event_len[0]"]),
        (dict(where_answer="row"), ["where_answer", "'row'"]),
        (dict(height=24, where_answer="quadrant"), ["quadrant", "even grid"]),
        (dict(height=8, width=16, frames=64), ["only 2 cells", "where"]),
        (dict(count_range=(1, 3)), ["count_range", "at least 4"]),
        (dict(count_range=(0, 4)), ["count_range[0]", ">= 1"]),
        (dict(count_range=(1, 7), n_events=(3, 6)), ["below count_range max 7"]),
        (dict(frames=16, event_len=(2, 4)), ["4 same-colour events", "16 frames"]),
        (dict(frames=8, height=16, width=16, qtypes=["colour"]), ["sparse"]),
        (dict(frame_noise=200), ["frame_noise"]),
        (dict(camera_step=-1), ["ToyConfig.camera_step", ">= 0"]),
        (dict(camera_step=True), ["ToyConfig.camera_step"]),
        (dict(camera_step=2.5), ["ToyConfig.camera_step"]),
        (dict(camera_step=40), ["camera_step = 40", "at most 32"]),
        (dict(texture=-5), ["ToyConfig.texture", ">= 0"]),
        (dict(texture=1.5), ["ToyConfig.texture"]),
        (dict(distractors=(5, 2)), ["distractors", "min > max"]),
        (dict(distractors=3), ["distractors", "(min, max)"]),
        (dict(distractors=(-1, 2)), ["distractors[0]", ">= 0"]),
        (dict(distractors=(20, 30)), ["36 events (with distractors)", "sparse"]),
        (dict(distractor_motion=1.5), ["distractor_motion", "[0, 1]"]),
        (dict(distractor_motion=True), ["distractor_motion"]),
        (dict(distractor_motion=float("nan")), ["distractor_motion"]),
        (dict(question_len=-1), ["ToyConfig.question_len", ">= 0"]),
        (dict(question_len=True), ["ToyConfig.question_len"]),
        (dict(qtypes=["order"], n_events=(1, 1)), ["n_events max 1", "'order'"]),
        (dict(qtypes=["order"], frames=8, event_len=(4, 4), n_events=(2, 2)), ["two events", "8 frames"]),
        (dict(qtypes=["order", "why"]), ["qtypes", "'why'", "'order'"]),
        (dict(qtypes=["first"], n_events=(1, 1)), ["n_events max 1", "'first'"]),
        (dict(qtypes=["first"], frames=8, event_len=(4, 4), n_events=(2, 2)), ["two events", "8 frames"]),
    ],
)
def test_config_errors(kwargs, words):
    with pytest.raises(InputError) as info:
        ToyConfig(**kwargs)
    for word in words:
        assert word in str(info.value), str(info.value)


def test_other_input_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(InputError, match="qtypes"):
        make_sample(ToyConfig(qtypes=["colour"]), rng, qtype="count")
    with pytest.raises(InputError, match="possible answer"):
        make_sample(CFG, rng, qtype="count", answer="7")
    with pytest.raises(InputError, match="numpy Generator"):
        make_sample(CFG, 0)
    with pytest.raises(InputError, match="split"):
        ToyDataset(CFG, "dev")
    with pytest.raises(InputError, match="size"):
        ToyDataset(CFG, size=0)
    with pytest.raises(InputError, match="question type"):
        answer_words(CFG, "size")


# --- determinism ----------------------------------------------------------------------------------------------


def assert_same(a: Sample, b: Sample):
    assert np.array_equal(a.video, b.video) and np.array_equal(a.background, b.background)
    assert (a.question, a.qtype, a.answer, a.relevant, a.events, a.id) == (
        b.question,
        b.qtype,
        b.answer,
        b.relevant,
        b.events,
        b.id,
    )


def test_deterministic():
    ds, again = ToyDataset(CFG, "train", 50), ToyDataset(ToyConfig(), "train", 50)
    for i in (0, 7, 49):
        assert_same(ds[i], again[i])
        assert_same(ds[i], ds[i])
    assert_same(ds[-1], ds[49])
    s1 = make_sample(CFG, np.random.default_rng(5))
    s2 = make_sample(CFG, np.random.default_rng(5))
    assert_same(s1, s2)


def test_splits_and_seeds_differ():
    train, test = ToyDataset(CFG, "train", 100), ToyDataset(CFG, "test", 100)
    other_seed = ToyDataset(ToyConfig(seed=1), "train", 100)
    train_bg = {train[i].background.tobytes() for i in range(100)}
    assert len(train_bg) == 100
    assert not train_bg & {test[i].background.tobytes() for i in range(100)}
    assert not train_bg & {other_seed[i].background.tobytes() for i in range(100)}
    assert not np.array_equal(train[0].video, test[0].video)


def test_dataset_indexing():
    ds = ToyDataset(CFG, "val", 10)
    assert len(ds) == 10 and len(list(ds)) == 10
    assert ds[3].id == "val-3"
    with pytest.raises(IndexError):
        ds[10]
    with pytest.raises(IndexError):
        ds[-11]
    with pytest.raises(InputError, match="integers"):
        ds["3"]


# --- answers: candidates, balance -----------------------------------------------------------------------------


def test_candidates_and_chance():
    vocab = Vocab(CFG)
    sizes = {"colour": 8, "when": 4, "where": 16, "count": 4}
    for qtype in QTYPES:
        ids = vocab.answer_ids(qtype)
        assert len(ids) == sizes[qtype] >= 4 and len(set(ids)) == len(ids)
        assert vocab.decode(ids) == answer_words(CFG, qtype)
    assert chance_level(CFG) == {"colour": 1 / 8, "when": 1 / 4, "where": 1 / 16, "count": 1 / 4}
    assert Vocab(ToyConfig(where_answer="quadrant")).answer_words("where") == list(QUADRANTS)


def matches_template(words: list[str], qtype: str) -> dict:
    """The slot fillers of ``words`` when they follow ``qtype``'s template (assert otherwise)."""
    template = QUESTIONS[qtype].template
    assert len(words) == len(template), (words, template)
    slots = {}
    for w, t in zip(words, template, strict=True):
        if t.startswith("{"):
            slots[t[1:-1]] = w
        else:
            assert w == t, (words, template)
    return slots


def test_the_question_table_is_the_one_source_of_question_words():
    # the vocabulary's question words come from the templates, in the ids the shipped checkpoint was trained with
    assert QUESTION_WORDS == (
        "what", "colour", "was", "at", "frame", "cell", "when", "did", "the", "shape", "appear", "where", "how",
        "many", "shapes", "appeared", "?",
    )  # fmt: skip
    assert ORDER_WORDS == ("before", "yes", "no") and FIRST_WORDS == ("which", "first", "or")
    assert tuple(QUESTIONS) == ALL_QTYPES and set(QTYPES) < set(ALL_QTYPES)
    for q, question in QUESTIONS.items():
        assert question.name == q and ToyConfig.preset("clutter", qtypes=(q,)).max_question_len == question.length
        assert question.candidates(CLUTTER) == answer_words(CLUTTER, q) and question.answer
    assert CFG.max_question_len == max(QUESTIONS[q].length for q in QTYPES) == 8
    count = QUESTIONS["count"]
    assert count.words(colour="red") == ["how", "many", "red", "shapes", "appeared"]
    assert QUESTIONS["colour"].words(frame=17, cell="r1c2") == "what colour was at frame 17 cell r1c2".split()
    assert QUESTIONS["order"].named_colours(colour="red", later="blue") == ["red", "blue"]
    assert QUESTIONS["first"].words(colour="red", later="blue") == "which appeared first red or blue".split()
    assert QUESTIONS["first"].named_colours(colour="red", later="blue") == ["red", "blue"]
    assert answer_words(CLUTTER, "first") == list(CLUTTER.colours) and chance_level(CLUTTER)["first"] == 0.5
    assert QUESTIONS["colour"].named_colours(frame=3, cell="r0c0") == []
    with pytest.raises(InputError, match=r"fills the slots \('colour',\)"):
        count.words(colour="red", frame=3)
    with pytest.raises(InputError, match="unknown question type"):
        answer_words(CFG, "why")


def test_questions_follow_their_templates_and_relevant_token_rules(samples, clutter_samples):
    for s in [*samples, *clutter_samples]:
        slots = matches_template(s.question, s.qtype)
        assert QUESTIONS[s.qtype].named_colours(**slots) == named_colours(s)
        if QUESTIONS[s.qtype].relevant == "token":
            t, r, c = s.relevant[0]
            assert slots == {"frame": str(t), "cell": cell_word(r, c)}
            assert relevant_tokens(s.qtype, [], (t, r, c)) == s.relevant
        else:
            targets = [e for e in s.events if e.colour in slots.values()]
            assert sorted(relevant_tokens(s.qtype, targets)) == s.relevant
    rng = np.random.default_rng(0)
    for s in clutter_samples[:40]:
        for words, qtype, _ in follow_up_questions(s, CLUTTER, rng, 6):
            matches_template(words, qtype)


def test_answers_are_candidates(samples):
    vocab = Vocab(CFG)
    for s in samples:
        assert s.answer in answer_words(CFG, s.qtype)
        assert vocab.token_id(s.answer) in vocab.answer_ids(s.qtype)


def test_balanced_dataset_is_exact(samples):
    """Types cycle; within a type every block of n items holds each of the n answers once."""
    by_type = collections.defaultdict(list)
    for i, s in enumerate(samples):
        assert s.qtype == CFG.qtypes[i % 4]
        by_type[s.qtype].append(s.answer)
    for qtype, answers in by_type.items():
        n = len(answer_words(CFG, qtype))
        for start in range(0, len(answers) - n + 1, n):
            assert sorted(answers[start : start + n]) == sorted(answer_words(CFG, qtype))


def test_random_answers_are_balanced():
    """make_sample's own draws over 400 samples per type: a chi-square statistic far below a p ~ 1e-4 bound."""
    for qtype in QTYPES:
        rng = np.random.default_rng(11)
        counts = collections.Counter(make_sample(CFG, rng, qtype=qtype).answer for _ in range(400))
        cands = answer_words(CFG, qtype)
        expected, df = 400 / len(cands), len(cands) - 1
        chi2 = sum((counts[a] - expected) ** 2 / expected for a in cands)
        assert set(counts) == set(cands) and chi2 < df + 6 * (2 * df) ** 0.5, (qtype, counts)
        assert min(counts.values()) / max(counts.values()) > 0.4, (qtype, counts)
    rng = np.random.default_rng(12)
    types = collections.Counter(make_sample(CFG, rng).qtype for _ in range(400))
    assert all(70 <= types[q] <= 130 for q in QTYPES), types


def test_count_total_shapes_is_no_shortcut():
    """For count questions the number of shapes in the video does not depend on the answer."""
    ds = ToyDataset(CFG, "train", 800)
    means = collections.defaultdict(list)
    for i in range(3, 800, 4):  # the count items
        s = ds[i]
        means[s.answer].append(len(s.events))
    avg = {a: np.mean(v) for a, v in means.items()}
    assert max(avg.values()) - min(avg.values()) < 0.4, avg


# --- events and pixels ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg", [CFG, SMALL], ids=["default", "small"])
def test_event_invariants(cfg):
    for s in ToyDataset(cfg, "train", 120):
        taken = [tok for e in s.events for tok in e.tokens]
        assert len(taken) == len(set(taken)), "two events share a (t, cell)"
        assert cfg.n_events[0] <= len(s.events) <= cfg.n_events[1]
        for e in s.events:
            assert cfg.event_len[0] <= e.length <= cfg.event_len[1] and 0 <= e.start and e.end <= cfg.frames
            assert e.colour in cfg.colours and e.shape in cfg.shapes
            for (r0, c0), (r1, c1) in itertools.pairwise(e.cells):
                assert abs(r0 - r1) + abs(c0 - c1) <= 1
            assert all(0 <= r < cfg.rows and 0 <= c < cfg.cols for r, c in e.cells)
        for a, b in itertools.combinations(s.events, 2):
            if a.colour == b.colour:
                assert a.end < b.start or b.end < a.start, "same-colour events touch in time"
        if s.qtype != "count":
            assert len({e.colour for e in s.events}) == len(s.events)


def test_palette_is_distinct_from_background(samples):
    colours = np.array(list(PALETTE.values()), dtype=int)
    pair_l1 = np.abs(colours[:, None] - colours[None]).sum(-1) + 1000 * np.eye(len(colours), dtype=int)
    assert pair_l1.min() >= 100
    assert colours.max(1).min() >= 220
    assert max(int(s.background.max()) for s in samples) <= 130


def test_pixels_match_events(samples):
    """Event tokens show their colour at the centre; every other token is exactly the background."""
    p = CFG.patch
    for s in samples[:100]:
        background = np.broadcast_to(s.background, s.video.shape)
        changed = (s.video != background).any(axis=-1)  # (T, H, W)
        on = {tok: e for e in s.events for tok in e.tokens}
        for t, r, c in itertools.product(range(CFG.frames), range(CFG.rows), range(CFG.cols)):
            cell = changed[t, r * p : (r + 1) * p, c * p : (c + 1) * p]
            if (t, r, c) in on:
                assert cell.mean() > 0.5 and centre_colour(patch_of(s.video, p, t, r, c)) == on[t, r, c].colour
            else:
                assert not cell.any()


def test_relevant_tokens_show_the_event(samples):
    for s in samples:
        assert s.relevant and s.relevant == sorted(s.relevant)
        for t, r, c in s.relevant:
            patch, bg = patch_of(s.video, CFG.patch, t, r, c), s.background[None]
            bg_patch = patch_of(bg, CFG.patch, 0, r, c)
            assert (np.abs(patch.astype(int) - bg_patch).sum(-1) > 100).mean() > 0.5  # the shape fills most of it
        if s.qtype == "colour":
            assert centre_colour(patch_of(s.video, CFG.patch, *s.relevant[0])) == s.answer
        else:  # every token of the asked colour, and only those, is relevant (count) / the target shape
            colour = s.question[3] if s.qtype in ("when", "where") else s.question[2]
            assert set(s.relevant) == {tok for e in s.events if e.colour == colour for tok in e.tokens}


@pytest.mark.parametrize(
    "cfg",
    [
        CFG,
        SMALL,
        ToyConfig(where_answer="quadrant", frame_noise=8, shapes=("disc",), seed=9),
        CLUTTER,
        ToyConfig.preset("clutter", where_answer="quadrant", event_len=(3, 3), shapes=("disc",), seed=4),
    ],
    ids=["default", "small", "quadrant-noise", "clutter", "clutter-quadrant-disc"],
)
def test_oracle_on_relevant_tokens_is_perfect(cfg):
    """Each question is answerable from the pixels of its relevant tokens alone."""
    ds = ToyDataset(cfg, "test", 160)
    wrong = [(s.id, s.qtype, s.answer, oracle(s, cfg)) for s in ds if oracle(s, cfg) != s.answer]
    assert not wrong


def test_frame_noise_stays_small():
    cfg = ToyConfig(frame_noise=5)
    s = ToyDataset(cfg, "train", 1)[0]
    on = np.zeros((cfg.frames, cfg.height, cfg.width), dtype=bool)
    for t, r, c in (tok for e in s.events for tok in e.tokens):
        on[t, r * 8 : (r + 1) * 8, c * 8 : (c + 1) * 8] = True
    diff = np.abs(s.video.astype(int) - s.background.astype(int)).max(-1)
    assert diff[~on].max() <= 5 and diff[~on].max() > 0
    free = ~on[0] & ~on[1]
    assert not np.array_equal(s.video[0][free], s.video[1][free])  # fresh noise in every frame


def test_shape_masks_fill_most_of_the_patch():
    for shape in ("square", "disc"):
        for p in (4, 8, 16):
            mask = shape_mask(shape, p)
            assert mask.shape == (p, p) and mask.mean() > 0.5
            q = p // 4
            assert mask[q : p - q, q : p - q].all()


# --- sequence layout ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg", [CFG, SMALL], ids=["default", "small"])
def test_encode_layout(cfg):
    vocab = Vocab(cfg)
    ds = ToyDataset(cfg, "train", 8)
    tpf, L = cfg.tokens_per_frame, cfg.seq_len
    frame_index, row_index, col_index = visual_grid(cfg)
    for s in ds:
        enc = encode_sample(s, vocab, cfg)
        ids = enc["input_ids"]
        assert ids.shape == (L,) and ids.dtype == torch.long
        pad = cfg.max_question_len - len(s.question)
        assert ids[:pad].eq(vocab.pad_id).all() and enc["attention_mask"].tolist() == [0] * pad + [1] * (L - pad)
        assert ids[pad] == vocab.bos_id and ids[-1] == vocab.answer_marker_id
        body = ids[pad + 1 : pad + 1 + cfg.frames * (1 + tpf)].reshape(cfg.frames, 1 + tpf)
        assert body[:, 0].eq(vocab.frame_id).all() and body[:, 1:].eq(vocab.video_id).all()
        assert vocab.decode(ids[-1 - len(s.question) : -1]) == s.question
        vm, rm = enc["visual_mask"], enc["relevant_mask"]
        assert vm.dtype == rm.dtype == torch.bool
        assert int(vm.sum()) == cfg.n_visual and torch.equal(vm, ids == vocab.video_id)
        assert not (rm & ~vm).any() and int(rm.sum()) == len(s.relevant)
        assert torch.equal(enc["relevant_visual"], rm[vm])
        rel = enc["relevant_visual"].nonzero().squeeze(1)
        got = list(zip(frame_index[rel].tolist(), row_index[rel].tolist(), col_index[rel].tolist(), strict=True))
        assert got == s.relevant
        assert torch.equal(enc["frame_index"], frame_index) and enc["row_index"].max() == cfg.rows - 1
        assert enc["answer_id"] == vocab.token_id(s.answer)
        assert vocab.answer_ids(s.qtype)[enc["answer_index"]] == enc["answer_id"]
        px = enc["pixels"]
        assert px.shape == (cfg.frames, 3, cfg.height, cfg.width) and px.dtype == torch.float32
        assert 0 <= px.min() and px.max() <= 1
        assert torch.equal((px * 255).round().byte(), torch.from_numpy(s.video).permute(0, 3, 1, 2))


def test_relevant_patches_line_up_with_patchify(samples):
    """The patchify row of each relevant visual token is the event's patch."""
    vocab = Vocab(CFG)
    for s in samples[:20]:
        enc = encode_sample(s, vocab, CFG)
        patches = patchify(enc["pixels"], CFG.patch)  # (V, 3*p*p)
        for row in enc["relevant_visual"].nonzero().squeeze(1).tolist():
            t, rest = divmod(row, CFG.tokens_per_frame)
            r, c = divmod(rest, CFG.cols)
            expect = torch.from_numpy(patch_of(s.video, CFG.patch, t, r, c)).permute(2, 0, 1).reshape(-1) / 255
            assert torch.allclose(patches[row], expect)


def test_collate():
    ds = ToyDataset(SMALL, "train", 6)
    batch = ds.batch(range(6))
    assert batch["input_ids"].shape == (6, SMALL.seq_len)
    assert batch["pixels"].shape == (6, SMALL.frames, 3, SMALL.height, SMALL.width)
    assert batch["answer_id"].shape == (6,) and batch["answer_id"].dtype == torch.long
    assert batch["qtype"] == [ds[i].qtype for i in range(6)] and batch["id"][2] == "train-2"
    assert batch["visual_mask"].sum(1).eq(SMALL.n_visual).all()
    assert torch.equal(batch["input_ids"][4], ds.encoded(4)["input_ids"])
    other = encode_sample(ToyDataset(CFG, "train", 1)[0], Vocab(CFG), CFG)
    with pytest.raises(InputError, match="different shapes"):
        collate([ds.encoded(0), other])
    with pytest.raises(InputError, match="non-empty"):
        collate([])
    with pytest.raises(InputError, match="Sample"):
        encode_sample(ToyDataset(CFG, "train", 1)[0], Vocab(SMALL), SMALL)


def test_vocab():
    vocab = Vocab(CFG)
    assert [vocab.pad_id, vocab.bos_id, vocab.video_id, vocab.frame_id, vocab.answer_marker_id] == [0, 1, 2, 3, 4]
    assert vocab.decode([0, 1, 2, 3, 4]) == ["<pad>", "<bos>", "<video>", "<frame>", "<answer>"]
    words = ["how", "many", "red", "shapes", "appeared"]
    assert vocab.decode(torch.tensor(vocab.encode(words))) == words
    assert vocab.size == len(vocab) == len(set(vocab.words))
    assert "31" in vocab.words and "r3c3" in vocab.words and "bin3" in vocab.words
    with pytest.raises(InputError, match="not in the toy vocabulary"):
        vocab.token_id("purple")
    with pytest.raises(InputError, match="list of words"):
        vocab.encode("how many")
    with pytest.raises(InputError, match="ids 0.."):
        vocab.decode([vocab.size])


# --- patchify -------------------------------------------------------------------------------------------------


def test_patchify_hand_built():
    """T=2 frames of 4x6 pixels, p=2: a 2x3 grid; each pixel value encodes (t, channel, y, x)."""
    T, H, W, p = 2, 4, 6, 2
    t, ch, y, x = np.meshgrid(np.arange(T), np.arange(3), np.arange(H), np.arange(W), indexing="ij")
    pixels = torch.from_numpy(1000 * t + 100 * ch + 10 * y + x)  # (T, 3, H, W)
    out = patchify(pixels, p)
    assert out.shape == (T * 2 * 3, 3 * p * p)
    # token (t=1, r=0, c=2) is row 1*6 + 0*3 + 2 = 8: pixels y in {0, 1}, x in {4, 5}; features (ch, dy, dx)
    assert out[8].tolist() == [
        1000 + 100 * c + 10 * dy + 4 + dx for c in range(3) for dy in range(2) for dx in range(2)
    ]
    assert out[0, :4].tolist() == [0, 1, 10, 11]
    for row, (tt, r, c) in enumerate(itertools.product(range(T), range(2), range(3))):
        assert torch.equal(out[row], pixels[tt, :, r * p : (r + 1) * p, c * p : (c + 1) * p].reshape(-1))
    batched = patchify(torch.stack([pixels, pixels + 1]), p)
    assert batched.shape == (2, 12, 12) and torch.equal(batched[1], out + 1)
    assert torch.equal(patchify(pixels.numpy(), p), out)


def test_patchify_equals_strided_conv():
    torch.manual_seed(0)
    pixels = torch.rand(3, 3, 16, 24)
    conv = torch.nn.Conv2d(3, 5, 8, stride=8, bias=False)
    ref = conv(pixels).permute(0, 2, 3, 1).reshape(-1, 5)  # (T*R*C, d)
    ours = patchify(pixels, 8) @ conv.weight.reshape(5, -1).T
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_patchify_errors():
    with pytest.raises(InputError, match="permute"):
        patchify(torch.zeros(2, 8, 8, 3), 4)
    with pytest.raises(InputError, match="not divisible"):
        patchify(torch.zeros(2, 3, 8, 10), 4)
    with pytest.raises(InputError, match="patch"):
        patchify(torch.zeros(2, 3, 8, 8), 0)


# --- variants: static is unchanged ----------------------------------------------------------------------------


def digest(s: Sample) -> str:
    """A short hash of everything a sample holds (video and background bytes, question, answer, events)."""
    h = hashlib.sha256()
    h.update(s.video.tobytes())
    h.update(s.background.tobytes())
    events = [(e.colour, e.shape, e.start, e.cells) for e in s.events]
    h.update(repr((s.question, s.qtype, s.answer, s.relevant, events, s.id)).encode())
    return h.hexdigest()[:16]


def digest_items(ds: ToyDataset, n: int) -> str:
    return hashlib.sha256("".join(digest(ds[i]) for i in range(n)).encode()).hexdigest()[:16]


QNOISE = ToyConfig(where_answer="quadrant", frame_noise=8, shapes=("disc",), seed=9)
#: Digests computed with the code BEFORE the variants existed (commit 414b652): the static benchmark, the
#: shipped checkpoint's settings among them, must keep producing exactly these items.
BEFORE_VARIANTS = [
    (CFG, "train", 16, "bd5cf7ae435481fe"),
    (CFG, "val", 16, "a37b1bb57db61e3d"),
    (CFG, "test", 16, "e13f8ceff01675b8"),
    (SMALL, "train", 16, "fc0a65cde9285f4c"),
    (SMALL, "val", 16, "c0eab025f60145e4"),
    (SMALL, "test", 16, "390eb85d15ca9fa1"),
    (QNOISE, "train", 16, "b500ee8c1f34a1dc"),
    (QNOISE, "val", 16, "d298c70356a22b39"),
    (QNOISE, "test", 16, "7df4f7de7798b779"),
    (ToyConfig(event_len=(3, 3), where_answer="quadrant", move_prob=0.0, seed=5), "train", 24, "8d9b9ff8fc632b18"),
    (ToyConfig(event_len=(3, 3), where_answer="quadrant", move_prob=0.0, seed=5), "test", 24, "1accc50362e1d9b1"),
    (ToyConfig.preset("static", event_len=(3, 3), where_answer="quadrant"), "train", 24, "3520d12246879626"),
    (ToyConfig.preset("static", event_len=(3, 3), where_answer="quadrant"), "test", 24, "caa63cb05c664168"),
]


@pytest.mark.parametrize("cfg, split, n, expected", BEFORE_VARIANTS)
def test_static_items_are_bit_identical_to_before_the_variants(cfg, split, n, expected):
    assert digest_items(ToyDataset(cfg, split, n), n) == expected


def test_static_vocab_unbalanced_follow_ups_and_encoding_are_unchanged():
    vocab = Vocab(CFG)
    assert len(vocab) == 86
    assert hashlib.sha256(" ".join(vocab.words).encode()).hexdigest()[:16] == "0247e95221fa7264"
    assert digest_items(ToyDataset(CFG, "val", 8, balanced=False), 8) == "957882358b8ffc3c"
    sample = ToyDataset(CFG, "train", 1)[0]
    follow = follow_up_questions(sample, CFG, np.random.default_rng(4), 6)
    assert hashlib.sha256(repr(follow).encode()).hexdigest()[:16] == "4d891eada4fe632a"
    enc = encode_sample(ToyDataset(CFG, "test", 4)[3], vocab, CFG)
    raw = enc["input_ids"].numpy().tobytes() + enc["relevant_mask"].numpy().tobytes()
    assert hashlib.sha256(raw).hexdigest()[:16] == "6efd8313e76bbe23"
    assert (CFG.seq_len, CFG.max_question_len, CFG.qtypes) == (554, 8, QTYPES)


def test_static_still_camera():
    s = ToyDataset(CFG, "train", 3)[2]
    assert s.background.shape == (CFG.height, CFG.width, 3)
    assert s.camera.shape == (CFG.frames, 2) and not s.camera.any()
    assert np.array_equal(s.frame_backgrounds(), np.broadcast_to(s.background, s.video.shape))


# --- variants: presets and validation -------------------------------------------------------------------------


def test_presets():
    assert VARIANTS == ("static", "clutter") and set(PRESETS) == set(VARIANTS)
    assert ToyConfig.preset("static") == ToyConfig() and ToyConfig.preset("static", seed=3) == ToyConfig(seed=3)
    assert ToyConfig().variant == "static" and not {"order", "first"} & set(ToyConfig().qtypes)
    for name, value in PRESETS["clutter"].items():
        assert getattr(CLUTTER, name) == value, name
    assert CLUTTER.variant == "clutter" and CLUTTER.qtypes == (*QTYPES, "first")
    assert CLUTTER.camera_step >= CLUTTER.patch  # whole-patch steps happen
    assert CLUTTER.frame_noise > 0 and CLUTTER.distractors[0] > 0
    q = ToyConfig.preset("clutter", where_answer="quadrant", event_len=[3, 3])
    assert (q.where_answer, q.event_len, q.camera_step) == ("quadrant", (3, 3), CLUTTER.camera_step)
    assert ToyConfig(camera_step=2).variant == "clutter" and ToyConfig(distractors=(1, 2)).variant == "clutter"
    assert ToyConfig(qtypes=ALL_QTYPES).variant == "static"  # variant describes the video, not the questions


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda: ToyConfig.preset("noisy"), ["unknown benchmark variant 'noisy'", "('static', 'clutter')"]),
        (lambda: ToyConfig.preset(1), ["unknown benchmark variant 1"]),
        (lambda: ToyConfig.preset("clutter", colour="red"), ["unknown fields ['colour']", "camera_step"]),
        (lambda: ToyConfig.preset("clutter", rows=3), ["unknown fields ['rows']"]),
        (lambda: ToyConfig.preset("clutter", camera_step=True), ["ToyConfig.camera_step"]),
        (lambda: ToyConfig.preset("clutter", distractors=(30, 40)), ["sparse"]),
    ],
)
def test_preset_errors(call, words):
    with pytest.raises(InputError) as info:
        call()
    for word in words:
        assert word in str(info.value), str(info.value)


# --- variants: clutter ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clutter_samples() -> list[Sample]:
    """300 balanced test-split samples of clutter videos, every question type (50 per type, ``order`` included)."""
    return list(ToyDataset(CLUTTER_ALL, "test", 300))


def test_clutter_deterministic():
    a, b = ToyDataset(CLUTTER, "val", 5), ToyDataset(ToyConfig.preset("clutter"), "val", 5)
    for i in range(5):
        assert_same(a[i], b[i])
        assert np.array_equal(a[i].camera, b[i].camera)
    assert not np.array_equal(a[0].video, ToyDataset(ToyConfig.preset("clutter", seed=1), "val", 1)[0].video)


def test_clutter_event_invariants(clutter_samples):
    cfg = CLUTTER
    lo, hi = cfg.n_events[0] + cfg.distractors[0], cfg.n_events[1] + cfg.distractors[1]
    moving = still = 0
    for s in clutter_samples:
        taken = [tok for e in s.events for tok in e.tokens]
        assert len(taken) == len(set(taken)), "two events share a (t, cell)"
        assert lo <= len(s.events) <= hi
        for e in s.events:
            assert cfg.event_len[0] <= e.length <= cfg.event_len[1] and 0 <= e.start and e.end <= cfg.frames
            assert e.colour in cfg.colours and e.shape in cfg.shapes
            for (r0, c0), (r1, c1) in itertools.pairwise(e.cells):
                assert abs(r0 - r1) + abs(c0 - c1) <= 1
            moving += len(set(e.cells)) == e.length
            still += len(set(e.cells)) == 1
        for a, b in itertools.combinations(s.events, 2):
            if a.colour == b.colour:
                assert a.end < b.start or b.end < a.start, "same-colour events touch in time"
    assert moving > 0.4 * still > 0, (moving, still)  # distractors: some move in every frame, some stand still


def test_clutter_answers_are_unique_and_distractors_avoid_named_colours(clutter_samples):
    """The named colours appear only in the question's own events; every answer follows from the events."""
    repeated = colour_answer_repeated = 0
    for s in clutter_samples:
        per_colour = collections.Counter(e.colour for e in s.events)
        named = named_colours(s)
        repeated += any(n > 1 for c, n in per_colour.items() if c not in named)
        if s.qtype == "colour":
            t, r, c = s.relevant[0]
            (event,) = [e for e in s.events if (t, r, c) in e.tokens]
            assert event.colour == s.answer
            colour_answer_repeated += per_colour[s.answer] > 1
        elif s.qtype == "count":
            assert per_colour[named[0]] == int(s.answer)
        else:  # when, where, order, first: each named colour in exactly one event
            assert all(per_colour[c] == 1 for c in named), (s.id, named, per_colour)
            ev = {e.colour: e for e in s.events if e.colour in named}
            if s.qtype == "when":
                assert s.answer == f"bin{time_bin(CLUTTER, ev[named[0]].start)}"
            elif s.qtype == "where":
                assert s.answer == cell_word(*ev[named[0]].cells[0])
            else:
                a, b = ev[named[0]], ev[named[1]]
                assert a.end < b.start or b.end < a.start  # two distinct times, a frame or more apart
                if s.qtype == "order":
                    assert s.answer == ("yes" if a.start < b.start else "no")
                else:
                    assert s.qtype == "first" and s.answer == (a.colour if a.start < b.start else b.colour)
    assert repeated == len(clutter_samples)  # distractor colours repeat in every video
    assert colour_answer_repeated > 10  # a colour question's answer is not "the colour seen once"


def test_clutter_relevant_tokens_are_exactly_the_asked_shapes(clutter_samples):
    for s in clutter_samples:
        assert s.relevant and s.relevant == sorted(s.relevant)
        if s.qtype == "colour":
            assert len(s.relevant) == 1
        else:
            named = set(named_colours(s))
            assert set(s.relevant) == {tok for e in s.events if e.colour in named for tok in e.tokens}
        if s.qtype in ("order", "first"):
            assert len({t for t, _, _ in s.relevant}) >= 2


def test_clutter_balanced_dataset_is_exact(clutter_samples):
    by_type = collections.defaultdict(list)
    for i, s in enumerate(clutter_samples):
        assert s.qtype == CLUTTER_ALL.qtypes[i % len(CLUTTER_ALL.qtypes)]
        by_type[s.qtype].append(s.answer)
    assert set(by_type) == set(ALL_QTYPES)
    assert collections.Counter(by_type["order"]) == {"yes": 25, "no": 25}
    for qtype, answers in by_type.items():
        n = len(answer_words(CLUTTER, qtype))
        for start in range(0, len(answers) - n + 1, n):
            assert sorted(answers[start : start + n]) == sorted(answer_words(CLUTTER, qtype))


def test_order_answers_drawn_at_random_are_balanced():
    rng = np.random.default_rng(21)
    samples = [make_sample(CLUTTER_ALL, rng, qtype="order") for _ in range(300)]
    counts = collections.Counter(s.answer for s in samples)
    assert set(counts) == {"yes", "no"} and abs(counts["yes"] - 150) < 45, counts  # > 5 sigma away otherwise
    assert answer_words(CLUTTER_ALL, "order") == ["yes", "no"] and chance_level(CLUTTER_ALL)["order"] == 0.5
    # no shortcut from the first-named colour's start: it is early as often for yes as for no
    early = collections.Counter(
        (s.answer, next(e.start for e in s.events if e.colour == s.question[1]) < CLUTTER.frames // 2) for s in samples
    )
    assert early[("yes", True)] > early[("no", True)] > 0


def test_first_answers_are_named_first_and_second_equally_often():
    """No shortcut from the words: the earlier colour is the one named first about half the time, and an early
    first-named colour is no clue either."""
    rng = np.random.default_rng(22)
    samples = [make_sample(CLUTTER, rng, qtype="first") for _ in range(300)]
    named_first = collections.Counter(s.answer == s.question[3] for s in samples)
    assert abs(named_first[True] - 150) < 45, named_first  # > 5 sigma away otherwise
    assert set(collections.Counter(s.answer for s in samples)) == set(CLUTTER.colours)
    early = collections.Counter(
        (s.answer == s.question[3], next(e.start for e in s.events if e.colour == s.question[3]) < CLUTTER.frames // 2)
        for s in samples
    )
    assert early[(True, True)] > early[(False, True)] > 0


def test_camera_motion_changes_every_background_patch():
    cfg = ToyConfig.preset("clutter", frame_noise=0)
    p, whole, sub = cfg.patch, 0, 0
    size = np.array([CANVAS_SCALE * cfg.height, CANVAS_SCALE * cfg.width])
    for s in ToyDataset(cfg, "train", 20):
        assert s.background.shape == (*size, 3) and s.background.max() <= BACKGROUND_MAX
        steps = (np.diff(s.camera, axis=0) + cfg.camera_step) % size - cfg.camera_step  # undo the wrap-around
        assert steps.shape == (cfg.frames - 1, 2) and np.abs(steps).max() <= cfg.camera_step
        assert np.abs(steps).max(axis=1).min() >= 1  # the camera never stands still
        whole += int((np.abs(steps) == p).any(axis=1).sum())
        sub += int(((np.abs(steps) % p) != 0).any(axis=1).sum())
        on = np.zeros((cfg.frames, cfg.rows, cfg.cols), dtype=bool)
        for t, r, c in (tok for e in s.events for tok in e.tokens):
            on[t, r, c] = True
        backgrounds = s.frame_backgrounds()  # (T, H, W, 3)
        pixel_on = on.repeat(p, axis=1).repeat(p, axis=2)  # (T, H, W)
        assert np.array_equal(s.video[~pixel_on], backgrounds[~pixel_on])  # off the shapes: the camera's view
        for t in range(1, cfg.frames):
            for r, c in itertools.product(range(cfg.rows), range(cfg.cols)):
                if not on[t, r, c] and not on[t - 1, r, c]:
                    assert not np.array_equal(patch_of(s.video, p, t, r, c), patch_of(s.video, p, t - 1, r, c))
    assert whole > 10 and sub > 100, (whole, sub)


def test_clutter_background_stays_darker_than_shapes(clutter_samples):
    limit = BACKGROUND_MAX + CLUTTER.frame_noise
    assert min(max(rgb) for rgb in PALETTE.values()) - limit >= 30
    for s in clutter_samples[:50]:
        on = np.zeros(s.video.shape[:3], dtype=bool)
        for t, r, c in (tok for e in s.events for tok in e.tokens):
            on[t, r * 8 : (r + 1) * 8, c * 8 : (c + 1) * 8] = True
        assert s.video[~on].max() <= limit
        assert np.percentile(s.background, 90) - np.percentile(s.background, 10) > 60  # high contrast


def test_clutter_follow_up_questions_follow_the_video(clutter_samples):
    rng = np.random.default_rng(3)
    seen = collections.Counter()
    for s in clutter_samples[:60]:
        per_colour = collections.defaultdict(list)
        for e in s.events:
            per_colour[e.colour].append(e)
        for words, qtype, answer in follow_up_questions(s, CLUTTER_ALL, rng, 10):
            seen[qtype] += 1
            if qtype == "order":
                assert words[0] == "did" and words[3] == "before" and len(words) == 5
                (a,), (b,) = per_colour[words[1]], per_colour[words[4]]
                assert a.end < b.start or b.end < a.start
                assert answer == ("yes" if a.start < b.start else "no")
            elif qtype == "first":
                assert words[:3] == ["which", "appeared", "first"] and words[4] == "or" and len(words) == 6
                (a,), (b,) = per_colour[words[3]], per_colour[words[5]]
                assert a.end < b.start or b.end < a.start
                assert answer == (a.colour if a.start < b.start else b.colour)
            elif qtype == "count":
                assert answer == str(len(per_colour[words[2]]))
            elif qtype in ("when", "where"):
                assert len(per_colour[words[3]]) == 1
    assert set(seen) == set(ALL_QTYPES)


def test_clutter_generation_stays_fast():
    """Training draws thousands of samples a minute on 2 cores: one clutter sample takes a few ms (bound: 25)."""
    ds = ToyDataset(CLUTTER, "train", 60)
    ds[0]
    start = time.perf_counter()
    for i in range(60):
        ds[i]
    assert (time.perf_counter() - start) / 60 < 0.025


# --- variants: one model, one vocabulary, one sequence length -------------------------------------------------


def test_vocab_of_static_is_a_prefix_of_clutter():
    static, clutter = Vocab(ToyConfig.preset("static")), Vocab(CLUTTER)
    assert clutter.words[: len(static)] == static.words
    assert clutter.words[len(static) :] == [*ORDER_WORDS, *FIRST_WORDS]
    assert not set(ORDER_WORDS + FIRST_WORDS) & set(static.words)
    with_order = Vocab(ToyConfig.preset("clutter", qtypes=(*QTYPES, "order")))  # the stage-2 models' vocabulary
    assert clutter.words[: len(with_order)] == with_order.words == [*static.words, *ORDER_WORDS]
    assert Vocab(ToyConfig(qtypes=ALL_QTYPES)).words == clutter.words  # the words follow qtypes, not the camera
    for a, b in [(static, clutter), (clutter, static)]:
        assert shared_vocab([a.cfg, b.cfg]).words == clutter.words
    assert shared_vocab([CFG]).words == static.words
    # a static dataset encoded with the shared vocabulary has the ids it always had
    ds, shared = ToyDataset(CFG, "val", 4), ToyDataset(CFG, "val", 4, vocab=shared_vocab([CFG, CLUTTER]))
    for i in range(4):
        assert torch.equal(ds.encoded(i)["input_ids"], shared.encoded(i)["input_ids"])


def test_shared_vocab_errors():
    mismatch = "config 1's vocabulary gives id 22 to 'green', another config gives it to 'red'"
    with pytest.raises(InputError, match=mismatch):
        shared_vocab([CFG, ToyConfig(colours=("green", "red", "blue", "yellow", "cyan", "white"))])
    with pytest.raises(InputError, match="frames, colours"):
        shared_vocab([CFG, ToyConfig.preset("clutter", frames=24, event_len=(2, 3))])
    with pytest.raises(InputError, match="'where' answers"):
        shared_vocab([ToyConfig(where_answer="quadrant"), CLUTTER])
    with pytest.raises(InputError, match="'count' answers"):
        shared_vocab([ToyConfig(count_range=(2, 5)), CLUTTER])
    with pytest.raises(InputError, match="non-empty"):
        shared_vocab([])
    with pytest.raises(InputError, match="ToyConfigs"):
        shared_vocab([CFG, "clutter"])


def test_align_lengths_gives_one_sequence_length():
    counting = ToyConfig(qtypes=["count", "order"])  # longest question: 5 words
    assert counting.seq_len == CFG.seq_len - 3  # its own encoding is unchanged by the variants
    a, b = align_lengths([counting, CFG])
    assert (
        a.seq_len == b.seq_len == CFG.seq_len and a.question_len == 8 and b == dataclasses.replace(CFG, question_len=8)
    )
    assert a.qtypes == counting.qtypes and a.max_question_len == 8
    static, clutter = align_lengths([ToyConfig.preset("static"), CLUTTER])
    assert static.seq_len == clutter.seq_len == CFG.seq_len
    vocab = shared_vocab([static, clutter])
    mixed = [ToyDataset(a, "val", 3, vocab=vocab).encoded(i) for i in range(3)]
    mixed += [ToyDataset(clutter, "val", 5, vocab=vocab).encoded(4)]  # a first question
    batch = collate(mixed)
    assert batch["input_ids"].shape == (4, CFG.seq_len)
    for enc in mixed:  # left padding: the question ends at the <answer> marker, the video starts after <bos>
        ids = enc["input_ids"]
        assert ids[-1] == vocab.answer_marker_id and int(enc["attention_mask"].sum()) == ids.ne(vocab.pad_id).sum()
    with pytest.raises(InputError, match="different videos"):
        align_lengths([CFG, SMALL])
    with pytest.raises(InputError, match="non-empty"):
        align_lengths([])
    with pytest.raises(InputError, match="ToyConfigs"):
        align_lengths([CFG, None])


# --- benchmark statistics -------------------------------------------------------------------------------------


def test_stats_static_vs_clutter():
    static = toy_stats.benchmark_stats(CFG, "val", 40, keeps=(1.0, 0.25))
    assert static["variant"] == "static" and static["size"] == 40 and static["n_visual"] == 512
    ds = ToyDataset(CFG, "val", 40)
    pct = [100 * len(s.relevant) / 512 for s in ds]
    assert static["relevant_pct"]["mean"] == pytest.approx(np.mean(pct)) and static["relevant_pct"]["max"] == max(pct)
    full = static["evs"]["pixel"]["1"]
    assert full["share"]["mean"] == full["complete"]["mean"] == full["any"]["mean"] == 1.0  # keep 1: every token
    # a still camera: EVS keeps a token of every asked shape; clutter: under half of the relevant tokens at 0.25
    assert all(static["evs"]["pixel"]["0.25"]["any"]["per_type"][q] == 1.0 for q in ("when", "where", "count"))
    clutter = toy_stats.benchmark_stats(CLUTTER, "val", 100, keeps=(0.25,))
    assert clutter["variant"] == "clutter" and set(clutter["relevant_pct"]["per_type"]) == set(CLUTTER.qtypes)
    assert clutter["relevant_pct"]["max"] < 5.0  # events stay a small share of the tokens
    assert clutter["evs"]["pixel"]["0.25"]["share"]["mean"] < 0.5
    assert static["evs"]["pixel"]["0.25"]["share"]["mean"] > clutter["evs"]["pixel"]["0.25"]["share"]["mean"] + 0.1
    json.dumps(clutter)  # a plain dict
    assert "relevant % (mean)" in toy_stats.format_stats(clutter)


def test_stats_embedding_mode_with_an_encoder():
    def encoder(pixels):  # (b, T, 3, H, W) -> (b, V, 3p²): the raw patches as "embeddings"
        return patchify(pixels, 8)

    out = toy_stats.benchmark_stats(CFG, "test", 8, keeps=(0.5,), encoder=encoder)
    assert set(out["evs"]) == {"pixel", "embedding"} and 0 < out["evs"]["embedding"]["0.5"]["share"]["mean"] <= 1
    with pytest.raises(InputError, match=r"\(b, V, d\)"):
        toy_stats.benchmark_stats(CFG, "test", 4, encoder=lambda px: px)
    with pytest.raises(InputError, match="keep fraction"):
        toy_stats.benchmark_stats(CFG, "test", 4, keeps=(0.0,))
    with pytest.raises(InputError, match="keep fraction"):
        toy_stats.benchmark_stats(CFG, "test", 4, keeps=(True,))
    with pytest.raises(InputError, match="split"):
        toy_stats.benchmark_stats(CFG, "dev", 4)


def test_stats_script(tmp_path, capsys):
    out = tmp_path / "stats.json"
    args = ["--variant", "clutter", "--size", "10", "--keep", "0.25", "--set", "where_answer=quadrant"]
    assert toy_stats.main([*args, "--out", str(out)]) == 0
    assert "clutter benchmark, val split, 10 questions" in capsys.readouterr().out
    written = json.loads(out.read_text())
    assert written["variant"] == "clutter" and list(written["evs"]["pixel"]) == ["0.25"]
    assert toy_stats.main([*args, "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert toy_stats.main([*args, "--out", str(out), "--force"]) == 0
    assert toy_stats.main(["--size", "4", "--set", "colour=red"]) == 2
    assert "unknown fields ['colour']" in capsys.readouterr().err
    assert toy_stats.main(["--size", "4", "--set", "frames"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    assert toy_stats.main(["--size", "4", "--checkpoint", "x"]) == 2
    assert "--embedding" in capsys.readouterr().err
