"""EVS pre-LLM pruning: exact agreement with transformers, the budget, pixel motion, original positions, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hybridreduce.compat import retention_mask_reference
from hybridreduce.errors import InputError
from hybridreduce.evs import (
    EVSResult,
    apply_retention,
    dissimilarity_from_embeddings,
    dissimilarity_from_pixels,
    evs_retention_mask,
    merge_patches,
    num_tokens_to_keep,
    retained_grid_positions,
    retained_indices,
    retention_mask,
)

RATES = [0.0, 0.25, 0.5, 0.75, 0.9]
SHAPES = [(4, 4, 4, 16), (6, 8, 6, 8), (3, 2, 2, 32), (1, 4, 4, 8), (9, 6, 10, 4)]  # (F, H, W, C)
KINDS = ["random", "mostly_static", "static", "constant"]


def make_video(kind: str, n_frames: int, H: int, W: int, C: int, seed: int = 0) -> torch.Tensor:
    """``(F, H, W, C)`` embeddings: i.i.d. noise, a static video with a few moving positions, or full ties."""
    g = torch.Generator().manual_seed(seed)
    if kind == "random":
        return torch.randn(n_frames, H, W, C, generator=g)
    if kind == "constant":  # every token the same vector: all later-frame dissimilarities tie exactly
        return torch.randn(C, generator=g).expand(n_frames, H, W, C).clone()
    video = torch.randn(1, H, W, C, generator=g).expand(n_frames, H, W, C).clone()  # frame 0 repeated
    if kind == "mostly_static":
        moving = torch.randperm(H * W, generator=g)[: max(1, H * W // 8)]
        flat = video.view(n_frames, H * W, C)
        flat[1:, moving] = torch.randn(n_frames - 1, len(moving), C, generator=g)
    return video


def reference_mask(video: torch.Tensor, rate: float, s: int) -> torch.Tensor:
    """transformers' mask: its input is one row per LLM token (each s×s block concatenated), (H, W) the encoder grid.

    Through compat.retention_mask_reference: up to 5.23 ``thw=(F, H, W), spatial_merge_size=s``, from 5.24
    ``num_tubelets=F`` (the same rows either way).
    """
    n_frames, H, W, C = video.shape
    # Built independently of merge_patches: (dy, dx, channel) order by strided slicing.
    merged = torch.cat([video[:, dy::s, dx::s, :] for dy in range(s) for dx in range(s)], dim=-1)
    return retention_mask_reference(merged.reshape(-1, s * s * C), n_frames, H, W, rate, spatial_merge_size=s)


# --- exact agreement with transformers -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("s", [1, 2])
@pytest.mark.parametrize("rate", RATES)
def test_matches_transformers(kind, shape, s, rate):
    n_frames, H, W, C = shape
    video = make_video(kind, n_frames, H, W, C, seed=10 * KINDS.index(kind) + SHAPES.index(shape))
    ours = evs_retention_mask(video, rate, spatial_merge_size=s)
    ref = reference_mask(video, rate, s)
    assert ours.dtype == torch.bool and ours.shape == (n_frames * (H // s) * (W // s),)
    assert torch.equal(ours, ref)
    assert int(ours.sum()) == num_tokens_to_keep(n_frames, (H // s) * (W // s), rate)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("rate", RATES)
def test_matches_transformers_model_call(kind, rate):
    """The (F, H*W, C) layout, called as NemotronH_Omni's forward calls it: the (F, H*W, C) features with a square
    thw and s=1 up to 5.23, the (F*H*W, C) rows with F tubelets from 5.24."""
    n_frames, side, C = 5, 6, 12
    video = make_video(kind, n_frames, side, side, C, seed=7).reshape(n_frames, side * side, C)
    H = W = int(video.shape[1] ** 0.5)
    ref = retention_mask_reference(video, video.shape[0], H, W, rate)
    assert torch.equal(evs_retention_mask(video, rate), ref)
    # The (F, H, W, C) layout of the same video gives the same mask.
    assert torch.equal(evs_retention_mask(video.reshape(n_frames, side, side, C), rate), ref)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("kind", ["random", "mostly_static"])
def test_matches_transformers_other_dtypes(dtype, kind):
    video = make_video(kind, 6, 4, 6, 16, seed=3).to(dtype)
    for rate in RATES:
        for s in (1, 2):
            assert torch.equal(evs_retention_mask(video, rate, spatial_merge_size=s), reference_mask(video, rate, s))


def test_retention_mask_reference_checks_rows_and_the_installed_form(monkeypatch):
    """The compat wrapper knows the installed signature, rejects rows that do not fit the grid, and names an
    unknown signature with the installed version."""
    import transformers.models.nemotron_h_omni.modeling_nemotron_h_omni as omni

    from hybridreduce import compat

    assert compat.retention_mask_form() in (compat.RETENTION_MASK_GRID, compat.RETENTION_MASK_TUBELETS)
    with pytest.raises(InputError, match=r"embeds \(9, 4\) is not 8 rows"):
        retention_mask_reference(torch.randn(9, 4), 2, 2, 2, 0.5)
    with pytest.raises(InputError, match=r"embeds \(16, 4\) is not 8 rows .* merged by 2"):
        retention_mask_reference(torch.randn(16, 4), 2, 4, 4, 0.5, spatial_merge_size=2)
    monkeypatch.setattr(omni, "compute_retention_mask", lambda embeds, grid, rate: None)
    unknown = rf"transformers {compat.VERSION}: compute_retention_mask takes \(embeds, grid, rate\)"
    with pytest.raises(InputError, match=unknown):
        retention_mask_reference(torch.randn(8, 4), 2, 2, 2, 0.5)


def test_merge_patches_layout():
    n_frames, H, W, C, s = 2, 4, 6, 3, 2
    video = torch.arange(n_frames * H * W * C, dtype=torch.float32).reshape(n_frames, H, W, C)
    merged = merge_patches(video, s)
    assert merged.shape == (n_frames, H // s, W // s, s * s * C)
    # Token (t, i, j) concatenates patches (2i, 2j), (2i, 2j+1), (2i+1, 2j), (2i+1, 2j+1).
    t, i, j = 1, 1, 2
    expected = torch.cat(
        [video[t, 2 * i, 2 * j], video[t, 2 * i, 2 * j + 1], video[t, 2 * i + 1, 2 * j], video[t, 2 * i + 1, 2 * j + 1]]
    )
    assert torch.equal(merged[t, i, j], expected)
    assert torch.equal(merge_patches(video, 1), video)


# --- dissimilarities, ties, budget ------------------------------------------------------------------------------


def test_embedding_dissimilarity_values():
    e0 = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]])  # (1, H=1, W=3, C=2)
    e1 = torch.tensor([[[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]]])  # same direction, orthogonal, opposite
    d = dissimilarity_from_embeddings(torch.stack([e0, e1]))
    assert d.shape == (2, 1, 3) and d.dtype == torch.float32
    assert torch.equal(d[0], torch.full((1, 3), 255.0))
    torch.testing.assert_close(d[1], torch.tensor([[0.0, 1.0, 2.0]]))
    assert dissimilarity_from_embeddings(torch.stack([e0, e1]).to(torch.bfloat16)).dtype == torch.float32
    assert dissimilarity_from_embeddings(torch.stack([e0, e1]).double()).dtype == torch.float64


def test_pixel_dissimilarity_values_and_uint8():
    frames = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    frames[0] = 200
    frames[1] = 200
    frames[1, :, :2, :2] = 10  # top-left 2x2 patch: |10 - 200| = 190 everywhere (uint8 wrap-around would give 66)
    frames[1, 0, 2:, 2:] = 230  # bottom-right patch: one channel of three moved by 30 → mean 10
    d = dissimilarity_from_pixels(frames, 2)
    assert d.shape == (2, 2, 2) and d.dtype == torch.float32
    assert bool(torch.isinf(d[0]).all())
    torch.testing.assert_close(d[1], torch.tensor([[190.0, 0.0], [0.0, 10.0]]))
    assert torch.equal(dissimilarity_from_pixels(frames.float(), 2), d)


def test_ties_go_to_earlier_tokens():
    """A constant video ties every later-frame token: the stable sort keeps the first k in (F, H, W) order."""
    n_frames, H, W = 5, 3, 4
    video = make_video("constant", n_frames, H, W, 8)
    for rate in RATES:
        k = num_tokens_to_keep(n_frames, H * W, rate)
        expected = torch.arange(n_frames * H * W) < k
        assert torch.equal(evs_retention_mask(video, rate), expected)
    d = torch.zeros(3, 2, 2)
    d[0] = 255.0
    d[2, 1, 1] = 0.5
    # k = max(4, int(12 * 0.5)) = 6: frame 0, the one moving token, then the earliest tie (frame 1, position 0).
    assert retention_mask(d, 0.5).tolist() == [True] * 4 + [True, False, False, False] + [False, False, False, True]


@pytest.mark.parametrize(
    "n_frames, per_frame, rate, expected",
    [
        (8, 64, 0.75, 128),
        (4, 16, 0.9, 16),
        (10, 10, 0.25, 75),
        (7, 9, 0.0, 63),
        (1, 5, 0.5, 5),
        (3, 10, 0.7, 10),
        (20, 5, 0.9, 9),
    ],
)
def test_num_tokens_to_keep(n_frames, per_frame, rate, expected):
    assert (
        num_tokens_to_keep(n_frames, per_frame, rate)
        == expected
        == max(per_frame, int(n_frames * per_frame * (1 - rate)))
    )


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("kind", ["random", "mostly_static"])
def test_first_frame_kept_and_count(kind, rate):
    n_frames, H, W = 8, 4, 5
    mask = evs_retention_mask(make_video(kind, n_frames, H, W, 8, seed=11), rate).view(n_frames, H, W)
    assert bool(mask[0].all())
    assert int(mask.sum()) == num_tokens_to_keep(n_frames, H * W, rate)


def test_first_frame_kept_even_when_later_frames_move_most():
    """Every later frame is the exact opposite of its predecessor (1 − cos = 2): frame 0 still wins."""
    n_frames, H, W = 10, 3, 3
    base = torch.randn(H, W, 6, generator=torch.Generator().manual_seed(0))
    video = torch.stack([base * (-1) ** t for t in range(n_frames)])
    mask = evs_retention_mask(video, 0.9).view(n_frames, H, W)  # budget max(9, int(90 * 0.1)) = 9: exactly one frame
    assert bool(mask[0].all()) and int(mask.sum()) == H * W


def test_rate_zero_keeps_everything():
    video = make_video("static", 4, 4, 4, 8)
    assert bool(evs_retention_mask(video, rate=0.0).all())
    assert num_tokens_to_keep(n_frames=4, tokens_per_frame=16, rate=0.0) == 64
    frames = torch.rand(4, 3, 8, 8)
    assert bool(evs_retention_mask(frames, 0, mode="pixel", patch_size=4).all())


# --- pixel space ------------------------------------------------------------------------------------------------


def moving_square_video(n_frames: int = 6, size: int = 48, patch: int = 4, seed: int = 0):
    """Static random background with faint sensor noise, and a white 2×2-patch square moving 2 patches per frame."""
    g = torch.Generator().manual_seed(seed)
    background = torch.rand(3, size, size, generator=g) * 0.5
    frames = background.expand(n_frames, 3, size, size).clone() + 0.02 * torch.rand(
        n_frames, 3, size, size, generator=g
    )
    row = 5  # patch row of the square's top edge
    cols = [2 * t for t in range(n_frames)]  # patch column of the square's left edge in frame t
    for t, col in enumerate(cols):
        frames[t, :, row * patch : (row + 2) * patch, col * patch : (col + 2) * patch] = 1.0
    return frames, row, cols


def test_pixel_mode_keeps_moving_square():
    n_frames, size, patch, rate = 6, 48, 4, 0.75
    frames, row, cols = moving_square_video(n_frames, size, patch)
    G = size // patch
    mask = evs_retention_mask(frames, rate, mode="pixel", patch_size=patch).view(n_frames, G, G)
    assert int(mask.sum()) == num_tokens_to_keep(n_frames, G * G, rate) == 216
    assert bool(mask[0].all())
    moving = torch.zeros(n_frames, G, G, dtype=torch.bool)
    for t in range(1, n_frames):
        moving[t, row : row + 2, cols[t] : cols[t] + 2] = True  # where the square is now
        moving[t, row : row + 2, cols[t - 1] : cols[t - 1] + 2] = True  # where it was (background uncovered)
    assert bool(mask[moving].all())
    static = ~moving
    static[0] = False
    kept_static = int(mask[static].sum())
    assert kept_static == 216 - G * G - int(moving.sum())  # only the leftover budget goes to static patches
    assert kept_static / int(static.sum()) < 0.1  # the static background is mostly dropped
    # uint8 frames give the same decision
    mask_u8 = evs_retention_mask((frames * 255).round().to(torch.uint8), rate, mode="pixel", patch_size=patch).view(
        n_frames, G, G
    )
    assert bool(mask_u8[moving].all())


def test_pixel_mode_spatial_merge_averages_blocks():
    frames, _, _ = moving_square_video()
    fine = dissimilarity_from_pixels(frames, 4)[1:]
    coarse = dissimilarity_from_pixels(frames, 8)[1:]
    torch.testing.assert_close(coarse, F.avg_pool2d(fine[:, None], 2)[:, 0])
    merged = evs_retention_mask(frames, 0.5, mode="pixel", patch_size=4, spatial_merge_size=2)
    assert torch.equal(merged, retention_mask(dissimilarity_from_pixels(frames, 8), 0.5))
    assert merged.shape == (6 * 6 * 6,)


# --- original positions ---------------------------------------------------------------------------------------


def test_retained_positions_helpers():
    retention = torch.zeros(2 * 2 * 3, dtype=torch.bool)
    retention[[0, 4, 7, 11]] = True
    assert retained_indices(retention).tolist() == [0, 4, 7, 11]
    assert retained_grid_positions(retention, (2, 2, 3)).tolist() == [[0, 0, 0], [0, 1, 1], [1, 0, 1], [1, 1, 2]]
    with pytest.raises(InputError, match="12 entries but thw"):
        retained_grid_positions(retention, (2, 2, 2))


def test_apply_retention_single_sequence():
    ids = torch.tensor([[100, 101, 10, 11, 12, 13, 14, 15, 102]])
    visual = torch.zeros(1, 9, dtype=torch.bool)
    visual[0, 2:8] = True
    retention = torch.tensor([True, False, True, False, False, True])
    out = apply_retention(ids, visual, retention)
    assert isinstance(out, EVSResult)
    assert out.inputs.tolist() == [[100, 101, 10, 12, 15, 102]]
    assert out.kept_index.tolist() == [[0, 1, 2, 4, 7, 8]]
    assert out.position_ids.tolist() == [[0, 1, 2, 4, 7, 8]]
    assert out.position_ids.dtype == torch.long
    assert out.visual_mask.tolist() == [[False, False, True, True, True, False]]
    assert out.attention_mask is None
    # Embeddings: the same rows are gathered, trailing dimensions untouched.
    embeds = torch.randn(1, 9, 5)
    out_e = apply_retention(embeds, visual, retention)
    assert torch.equal(out_e.inputs, embeds[:, [0, 1, 2, 4, 7, 8]])


def test_apply_retention_left_padded_batch():
    ids = torch.tensor(
        [
            [0, 0, 100, 10, 11, 12, 13, 101],  # two left pads, visual at 3..6
            [100, 101, 20, 21, 22, 23, 102, 103],  # no pads, visual at 2..5
        ]
    )
    attn = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1, 1]])
    visual = torch.zeros(2, 8, dtype=torch.bool)
    visual[0, 3:7] = True
    visual[1, 2:6] = True
    retention = torch.tensor([[True, False, False, True], [False, True, True, False]])
    out = apply_retention(ids, visual, retention, attention_mask=attn)
    assert out.kept_index.tolist() == [[0, 1, 2, 3, 6, 7], [0, 1, 3, 4, 6, 7]]
    assert out.inputs.tolist() == [[0, 0, 100, 10, 13, 101], [100, 101, 21, 22, 102, 103]]
    # Row 0 counts positions over real tokens (pads get 1, as in generate): 100→0, 10→1, 13→4, 101→5.
    assert out.position_ids.tolist() == [[1, 1, 0, 1, 4, 5], [0, 1, 3, 4, 6, 7]]
    assert out.attention_mask.tolist() == [[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]]
    assert out.visual_mask.tolist() == [
        [False, False, False, True, True, False],
        [False, False, True, True, False, False],
    ]
    # A (V,) retention is shared by both samples.
    shared = apply_retention(ids, visual, torch.tensor([False, True, False, True]), attention_mask=attn)
    assert shared.inputs.tolist() == [[0, 0, 100, 11, 13, 101], [100, 101, 21, 23, 102, 103]]
    assert shared.position_ids.tolist() == [[1, 1, 0, 2, 4, 5], [0, 1, 3, 5, 6, 7]]


def test_evs_end_to_end_positions():
    """Video tokens of a prompt pruned by EVS keep the positions they had in the full prompt."""
    n_frames, H, W, C = 4, 3, 3, 8
    video = make_video("mostly_static", n_frames, H, W, C, seed=5)
    retention = evs_retention_mask(video, 0.5)
    prefix, suffix = 3, 2
    T = prefix + n_frames * H * W + suffix
    embeds = torch.randn(1, T, C)
    embeds[0, prefix : prefix + n_frames * H * W] = video.reshape(-1, C)
    visual = torch.zeros(1, T, dtype=torch.bool)
    visual[0, prefix : prefix + n_frames * H * W] = True
    out = apply_retention(embeds, visual, retention)
    kept_visual_pos = out.position_ids[out.visual_mask]
    assert torch.equal(kept_visual_pos, prefix + retained_indices(retention))
    assert out.inputs.shape == (1, prefix + num_tokens_to_keep(n_frames, H * W, 0.5) + suffix, C)
    assert torch.equal(out.inputs[0, out.visual_mask[0]], video.reshape(-1, C)[retention])
    assert out.position_ids[0, :prefix].tolist() == [0, 1, 2] and out.position_ids[0, -suffix:].tolist() == [
        T - 2,
        T - 1,
    ]


# --- errors -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5, math.nan])
def test_invalid_rate(rate):
    with pytest.raises(InputError, match=r"0 <= rate < 1"):
        num_tokens_to_keep(4, 16, rate)
    with pytest.raises(InputError, match=r"0 <= rate < 1"):
        evs_retention_mask(torch.randn(2, 2, 2, 4), rate)


@pytest.mark.parametrize("rate", [True, "0.5", None])
def test_rate_wrong_type(rate):
    with pytest.raises(InputError, match="real number"):
        retention_mask(torch.rand(2, 2, 2), rate)


def test_bad_shapes():
    with pytest.raises(InputError, match=r"\(F, H, W, C\)"):
        dissimilarity_from_embeddings(torch.randn(4, 9, 8))
    with pytest.raises(InputError, match="floating point"):
        dissimilarity_from_embeddings(torch.ones(2, 2, 2, 3, dtype=torch.long))
    with pytest.raises(InputError, match="NaN or inf"):
        dissimilarity_from_embeddings(torch.full((2, 2, 2, 3), math.nan))
    with pytest.raises(InputError, match="not a square"):
        evs_retention_mask(torch.randn(4, 10, 8), 0.5)
    with pytest.raises(InputError, match=r"\(F, H\*W, C\) or \(F, H, W, C\)"):
        evs_retention_mask(torch.randn(4, 8), 0.5)
    with pytest.raises(InputError, match="not divisible by spatial_merge_size 2"):
        evs_retention_mask(torch.randn(2, 3, 4, 8), 0.5, spatial_merge_size=2)
    with pytest.raises(InputError, match=r"\(F, 3, Himg, Wimg\)"):
        dissimilarity_from_pixels(torch.rand(2, 32, 32, 3), 4)
    with pytest.raises(InputError, match="image size 30x32 is not divisible by patch_size 4"):
        dissimilarity_from_pixels(torch.rand(2, 3, 30, 32), 4)
    with pytest.raises(InputError, match="patch_size must be a positive integer"):
        dissimilarity_from_pixels(torch.rand(2, 3, 32, 32), 0)
    with pytest.raises(InputError, match="needs patch_size"):
        evs_retention_mask(torch.rand(2, 3, 32, 32), 0.5, mode="pixel")
    with pytest.raises(InputError, match="only applies to mode='pixel'"):
        evs_retention_mask(torch.randn(2, 2, 2, 4), 0.5, patch_size=14)
    with pytest.raises(InputError, match="not one of"):
        evs_retention_mask(torch.randn(2, 2, 2, 4), 0.5, mode="optical_flow")
    with pytest.raises(InputError, match=r"\(F, H, W\)"):
        retention_mask(torch.rand(4, 4), 0.5)


def test_apply_retention_errors():
    ids = torch.arange(12).reshape(2, 6)
    visual = torch.zeros(2, 6, dtype=torch.bool)
    visual[:, 1:4] = True
    with pytest.raises(InputError, match=r"unsqueeze\(0\)"):
        apply_retention(torch.arange(6), visual[0], torch.ones(3, dtype=torch.bool))
    with pytest.raises(InputError, match="bool tensor, e.g. input_ids == video_token_id"):
        apply_retention(ids, visual.long(), torch.ones(3, dtype=torch.bool))
    with pytest.raises(InputError, match=r"visual_mask must have shape \(b, T\) = \(2, 6\)"):
        apply_retention(ids, visual[:, :5], torch.ones(3, dtype=torch.bool))
    with pytest.raises(InputError, match="one entry per visual token"):
        apply_retention(ids, visual, torch.ones(4, dtype=torch.bool))
    with pytest.raises(InputError, match="retention must be a bool tensor"):
        apply_retention(ids, visual, torch.ones(3))
    with pytest.raises(InputError, match="keep different numbers of visual tokens"):
        apply_retention(ids, visual, torch.tensor([[True, True, False], [True, False, False]]))
    uneven = visual.clone()
    uneven[1, 4] = True
    with pytest.raises(InputError, match=r"different numbers of visual tokens \(\[3, 4\]\).*once per sample"):
        apply_retention(ids, uneven, torch.ones(3, dtype=torch.bool))
    with pytest.raises(InputError, match=r"attention_mask must have shape \(b, T\)"):
        apply_retention(ids, visual, torch.ones(3, dtype=torch.bool), attention_mask=torch.ones(2, 5))
    pads = torch.ones(2, 6, dtype=torch.long)
    pads[0, :2] = 0  # a visual token (index 1) marked as padding
    with pytest.raises(InputError, match="visual tokens are marked as padding"):
        apply_retention(ids, visual, torch.ones(3, dtype=torch.bool), attention_mask=pads)
