"""Toy long-video QA benchmark: determinism, balance, relevance, sequence layout, patchify, config errors."""

from __future__ import annotations

import collections
import itertools

import numpy as np
import pytest
import torch

from hybridreduce.errors import InputError
from hybridreduce.toy import (
    PALETTE,
    QTYPES,
    Sample,
    ToyConfig,
    ToyDataset,
    Vocab,
    answer_words,
    chance_level,
    collate,
    encode_sample,
    make_sample,
    patchify,
    visual_grid,
)
from hybridreduce.toy.data import QUADRANTS, cell_word, quadrant, shape_mask, time_bin

CFG = ToyConfig()
SMALL = ToyConfig(frames=16, height=24, width=32, patch=8, n_events=(2, 4), event_len=(2, 3), seed=3)  # 3x4 grid


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


def oracle(sample: Sample, cfg: ToyConfig) -> str:
    """Answer from the question and the pixels of the RELEVANT tokens only."""
    patches = {tok: patch_of(sample.video, cfg.patch, *tok) for tok in sample.relevant}
    q = sample.question
    if sample.qtype == "colour":
        (patch,) = patches.values()
        return centre_colour(patch)
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
    [CFG, SMALL, ToyConfig(where_answer="quadrant", frame_noise=8, shapes=("disc",), seed=9)],
    ids=["default", "small", "quadrant-noise"],
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
