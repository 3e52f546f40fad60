"""Efficient Video Sampling (EVS, Bagrov et al. 2025): drop temporally static patches before the LLM.

For a video of ``F`` frames on an ``H × W`` token grid, the token of frame ``f``, row ``i``, column ``j`` gets a
dissimilarity to the token at the same position in the previous frame::

    embedding space:  d[f, i, j] = 1 − cos(e[f, i, j], e[f−1, i, j])                  (e: encoder output)
    pixel space:      d[f, i, j] = mean |x[f, :, patch(i, j)] − x[f−1, :, patch(i, j)]|  (RGB, L1)
    first frame:      d[0, i, j] = a value above every real one (255 for embeddings, as transformers does;
                      +inf for pixels), so the first frame is always kept

and one global top-k over the whole video keeps::

    k = max(H·W, int(F · H·W · (1 − rate)))        for a pruning rate 0 ≤ rate < 1

tokens, ties going to the earlier token (a stable descending sort). The kept tokens keep their ORIGINAL
position ids: :func:`retention_mask` returns a boolean mask in the original ``(F, H, W)`` order,
:func:`retained_indices` / :func:`retained_grid_positions` give the kept tokens' original indices and
``(frame, row, column)`` coordinates, and :func:`apply_retention` removes the dropped visual tokens from a prompt
while returning the original sequence positions of what is left.

The embedding path is bit-for-bit the one of transformers' ``compute_retention_mask``
(``models/nemotron_h_omni``): same cosine, same dtype, same sentinel, same budget, same stable sort. Its
signature changed in transformers 5.24, from ``(*, video_embeds, thw, spatial_merge_size, q)`` to
``(video_embeds, num_tubelets, q)`` (its ``q`` is this module's ``rate``), without changing the mask: both take
one row per language-model token (``F·(H/s)·(W/s)`` rows; 5.23's ``thw`` and ``spatial_merge_size`` only reshape
them to ``(F, H/s, W/s)``, 5.24 reshapes them to ``(num_tubelets, rows per tubelet)``), so both rank the same
positions of consecutive frames (tubelets, for that model) with the same budget.
:func:`hybridreduce.compat.retention_mask_reference` calls whichever is installed; the tests hold this module
equal to it on every tested release.

Shapes use the letters of :mod:`hybridreduce.glossary`. ``H``, ``W`` is the grid a function receives: where it
applies a spatial merge ``s``, the encoder's patch grid before the merge (``H/s × W/s`` tokens after it); elsewhere
the grid EVS ranks. ``C`` may be the hidden size of the encoder's output.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import InputError
from .prune import keep_index

#: Dissimilarity given to every first-frame token on the embedding path (1 − cos never exceeds 2).
EMBEDDING_FIRST_FRAME = 255.0
#: Dissimilarity given to every first-frame token on the pixel path (real ones are finite).
PIXEL_FIRST_FRAME = math.inf

MODES = ("embedding", "pixel")


def _check_rate(rate: float) -> float:
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real):
        raise InputError(f"pruning rate must be a real number in [0, 1), got {rate!r} ({type(rate).__name__})")
    if not (0.0 <= float(rate) < 1.0):  # also rejects NaN
        raise InputError(
            f"pruning rate must satisfy 0 <= rate < 1 (the fraction of video tokens to drop), got {rate!r}; "
            "use rate=0 to keep every token"
        )
    return float(rate)


def _check_positive_int(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 1:
        raise InputError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def num_tokens_to_keep(n_frames: int, tokens_per_frame: int, rate: float) -> int:
    """How many tokens EVS keeps: ``max(tokens_per_frame, int(n_frames * tokens_per_frame * (1 - rate)))``.

    Args:
        n_frames: number of frames ``F``, ``≥ 1``.
        tokens_per_frame: tokens in one frame (``H * W`` after any spatial merge), ``≥ 1``.
        rate: pruning rate, ``0 ≤ rate < 1``.
    Returns:
        The token budget ``k``, between ``tokens_per_frame`` (one frame) and ``n_frames * tokens_per_frame``.
    Raises:
        InputError: ``rate`` outside ``[0, 1)`` or a non-positive count.
    """
    n_frames = _check_positive_int(n_frames, "n_frames (the number of frames)")
    tokens_per_frame = _check_positive_int(tokens_per_frame, "tokens_per_frame")
    rate = _check_rate(rate)
    # Same evaluation order as transformers (int * int first, then the float factor), so the same rounding.
    return max(tokens_per_frame, int(n_frames * tokens_per_frame * (1 - rate)))


def dissimilarity_from_embeddings(embeds: torch.Tensor) -> torch.Tensor:
    """``1 − cos`` between each token's embedding and the same position in the previous frame.

    Args:
        embeds: ``(F, H, W, C)`` floating vision-encoder embeddings, ``F ≥ 1``.
    Returns:
        ``(F, H, W)`` dissimilarity in ``[0, 2]`` for frames ``1..F-1``; frame 0 is
        :data:`EMBEDDING_FIRST_FRAME` (255). The cosine is computed in the embeddings' own dtype (exactly as
        transformers does, so ties and rounding match) and the result is returned as float32 (float64 for
        float64 input, so distinct values are never merged).
    Raises:
        InputError: wrong rank, empty, non-floating or non-finite embeddings.
    """
    if not isinstance(embeds, torch.Tensor) or embeds.dim() != 4:
        shape = tuple(embeds.shape) if isinstance(embeds, torch.Tensor) else type(embeds).__name__
        raise InputError(
            f"embeds must be a (F, H, W, C) tensor, got {shape}; reshape (F, H*W, C) embeddings with "
            ".reshape(F, H, W, C) or use evs_retention_mask, which accepts both"
        )
    if not embeds.is_floating_point():
        raise InputError(f"embeds must be floating point, got {embeds.dtype}; cast with .float()")
    if embeds.numel() == 0:
        raise InputError(f"embeds is empty, shape {tuple(embeds.shape)}; need F, H, W, C ≥ 1")
    if not bool(torch.isfinite(embeds).all()):
        raise InputError("embeds contain NaN or inf; EVS cannot rank tokens with non-finite embeddings")
    out_dtype = torch.promote_types(embeds.dtype, torch.float32)
    embeds = embeds.contiguous()
    # In the input dtype, like transformers: casting before the subtraction would round differently.
    moving = 1 - F.cosine_similarity(embeds[1:], embeds[:-1], dim=-1)  # (F-1, H, W)
    first = torch.full_like(embeds[:1, :, :, 0], EMBEDDING_FIRST_FRAME)  # (1, H, W)
    return torch.cat([first, moving], dim=0).to(out_dtype)


def dissimilarity_from_pixels(frames: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Mean absolute RGB difference of each ``P × P`` patch to the same patch in the previous frame.

    Args:
        frames: ``(F, 3, Himg, Wimg)`` video, float (any range) or uint8; ``Himg`` and ``Wimg`` must be
            multiples of ``patch_size``.
        patch_size: ``P``, the side of a square patch in pixels.
    Returns:
        ``(F, Himg/P, Wimg/P)`` float32 (float64 for float64 input): the L1 difference averaged over the
        ``3·P·P`` values of the patch for frames ``1..F-1``; frame 0 is :data:`PIXEL_FIRST_FRAME` (+inf).
        Integer frames are converted before subtracting (no uint8 wrap-around).
    Raises:
        InputError: wrong shape, a size not divisible by ``P``, a bad dtype or non-finite values.
    """
    patch = _check_positive_int(patch_size, "patch_size")
    if not isinstance(frames, torch.Tensor) or frames.dim() != 4 or frames.shape[1] != 3:
        shape = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
        raise InputError(
            f"frames must be a (F, 3, Himg, Wimg) RGB video, got {shape}; "
            "permute channels-last video with .permute(0, 3, 1, 2)"
        )
    n_frames, _, Himg, Wimg = frames.shape
    if n_frames == 0 or Himg == 0 or Wimg == 0:
        raise InputError(f"frames is empty, shape {tuple(frames.shape)}")
    if Himg % patch or Wimg % patch:
        raise InputError(
            f"image size {Himg}x{Wimg} is not divisible by patch_size {patch}; "
            f"resize or crop the frames to a multiple of {patch} (e.g. {Himg // patch * patch}x{Wimg // patch * patch})"
        )
    if frames.dtype == torch.bool or frames.is_complex():
        raise InputError(f"frames must be float or uint8, got {frames.dtype}")
    out_dtype = torch.float64 if frames.dtype == torch.float64 else torch.float32
    x = frames.to(out_dtype)
    if not bool(torch.isfinite(x).all()):
        raise InputError("frames contain NaN or inf")
    H, W = Himg // patch, Wimg // patch
    diff = (x[1:] - x[:-1]).abs()  # (F-1, 3, Himg, Wimg)
    moving = diff.reshape(n_frames - 1, 3, H, patch, W, patch).mean(dim=(1, 3, 5))  # (F-1, H, W)
    first = torch.full((1, H, W), PIXEL_FIRST_FRAME, dtype=out_dtype, device=frames.device)
    return torch.cat([first, moving], dim=0)


def retention_mask(dissimilarity: torch.Tensor, rate: float) -> torch.Tensor:
    """Keep the ``k = num_tokens_to_keep(F, H*W, rate)`` most dissimilar tokens of the whole video.

    Args:
        dissimilarity: ``(F, H, W)`` real scores (from :func:`dissimilarity_from_embeddings` or
            :func:`dissimilarity_from_pixels`); frame 0 should carry the sentinel so it is always kept.
        rate: pruning rate, ``0 ≤ rate < 1``.
    Returns:
        ``(F*H*W,)`` bool, True for kept tokens, flattened in the original ``(F, H, W)`` order. Ties go to
        the earlier token (a stable descending sort).
    Raises:
        InputError: wrong rank, empty, NaN scores or ``rate`` outside ``[0, 1)``.
    """
    if not isinstance(dissimilarity, torch.Tensor) or dissimilarity.dim() != 3:
        shape = tuple(dissimilarity.shape) if isinstance(dissimilarity, torch.Tensor) else type(dissimilarity)
        raise InputError(f"dissimilarity must be a (F, H, W) tensor, got {shape}")
    n_frames, H, W = dissimilarity.shape
    if dissimilarity.numel() == 0:
        raise InputError(f"dissimilarity is empty, shape {(n_frames, H, W)}")
    if not dissimilarity.is_floating_point():
        dissimilarity = dissimilarity.float()
    if bool(torch.isnan(dissimilarity).any()):
        raise InputError("dissimilarity contains NaN; EVS cannot rank those tokens")
    k = num_tokens_to_keep(n_frames, H * W, rate)
    flat = dissimilarity.reshape(-1)
    top = torch.argsort(flat, descending=True, stable=True)[:k]
    keep = torch.zeros(flat.shape, dtype=torch.bool, device=flat.device)
    keep[top] = True
    return keep


def merge_patches(embeds: torch.Tensor, spatial_merge_size: int) -> torch.Tensor:
    """Group each ``s × s`` block of the patch grid into one token by concatenating its embeddings.

    This is the pixel-shuffle / patch-merger grouping: the LLM sees one token per block, and its
    embedding before the merger MLP is the concatenation of the block's ``(s, s, C)`` values in row-major order.

    Args:
        embeds: ``(F, H, W, C)`` (the grid before merging), ``H`` and ``W`` multiples of ``s``.
        spatial_merge_size: ``s ≥ 1``.
    Returns:
        ``(F, H/s, W/s, s*s*C)`` contiguous; ``embeds`` itself (made contiguous) when ``s == 1``.
    Raises:
        InputError: ``H`` or ``W`` not divisible by ``s``.
    """
    s = _check_positive_int(spatial_merge_size, "spatial_merge_size")
    if embeds.dim() != 4:
        raise InputError(f"embeds must be (F, H, W, C), got {tuple(embeds.shape)}")
    n_frames, H, W, C = embeds.shape
    if H % s or W % s:
        raise InputError(
            f"patch grid {H}x{W} is not divisible by spatial_merge_size {s}; "
            "pass the grid the vision encoder produced (before merging) or spatial_merge_size=1"
        )
    if s == 1:
        return embeds.contiguous()
    grouped = embeds.reshape(n_frames, H // s, s, W // s, s, C).permute(0, 1, 3, 2, 4, 5)
    return grouped.reshape(n_frames, H // s, W // s, s * s * C).contiguous()


def evs_retention_mask(
    video: torch.Tensor,
    rate: float,
    mode: str = "embedding",
    patch_size: int | None = None,
    spatial_merge_size: int = 1,
) -> torch.Tensor:
    """EVS retention mask of one video, from embeddings or from pixels.

    Args:
        video: ``mode="embedding"``: vision-encoder embeddings ``(F, H, W, C)`` or ``(F, H*W, C)`` (read as a
            square grid, ``H = W = sqrt(H*W)``, as transformers 5.23's Omni forward did; without a spatial merge
            the mask depends only on the order of each frame's tokens, so any ``(F, H, W, C)`` with the same rows
            gives the same mask).
            ``mode="pixel"``: frames ``(F, 3, Himg, Wimg)``, float or uint8.
        rate: pruning rate, ``0 ≤ rate < 1`` (``q`` in the EVS paper and in transformers).
        mode: ``"embedding"`` (``1 − cos``) or ``"pixel"`` (mean absolute RGB difference).
        patch_size: ``P``, pixels per patch side; required for ``mode="pixel"``, not allowed otherwise.
        spatial_merge_size: ``s``; the LLM sees one token per ``s × s`` block of the patch grid. Embedding
            mode: ``video`` is the encoder grid before merging and each block's embeddings are
            concatenated (:func:`merge_patches`) — the rows transformers' ``compute_retention_mask`` ranks, and
            the result equals its output: with ``thw = (F, H, W)`` and this ``s`` up to transformers 5.23, with
            ``num_tubelets = F`` from 5.24 (:func:`hybridreduce.compat.retention_mask_reference` takes the same
            ``(F, H, W, s)`` on both).
            Pixel mode: the dissimilarity is taken over ``(P·s) × (P·s)`` pixel blocks.
    Returns:
        ``(F * H/s * W/s,)`` bool (pixel mode: ``(F * Himg/(P·s) * Wimg/(P·s),)``), True for kept tokens, in
        the original ``(F, H/s, W/s)`` order.
    Raises:
        InputError: unknown mode, missing/unexpected ``patch_size``, non-square ``(F, H*W, C)``, a grid or
            image not divisible by the merge/patch size, or a bad ``rate``.
    """
    s = _check_positive_int(spatial_merge_size, "spatial_merge_size")
    if mode == "embedding":
        if patch_size is not None:
            raise InputError("patch_size only applies to mode='pixel'; drop it for mode='embedding'")
        if not isinstance(video, torch.Tensor) or video.dim() not in (3, 4):
            shape = tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__
            raise InputError(f"embedding-mode video must be (F, H*W, C) or (F, H, W, C), got {shape}")
        if video.dim() == 3:
            n_frames, per_frame, C = video.shape
            side = math.isqrt(per_frame)
            if side * side != per_frame:
                raise InputError(
                    f"(F, H*W, C) embeddings need a square grid but {per_frame} tokens per frame is not a square; "
                    "pass them as (F, H, W, C)"
                )
            video = video.reshape(n_frames, side, side, C)
        return retention_mask(dissimilarity_from_embeddings(merge_patches(video, s)), rate)
    if mode == "pixel":
        if patch_size is None:
            raise InputError("mode='pixel' needs patch_size (the vision encoder's patch side in pixels)")
        patch = _check_positive_int(patch_size, "patch_size")
        return retention_mask(dissimilarity_from_pixels(video, patch * s), rate)
    raise InputError(f"mode {mode!r} is not one of {MODES}")


def retained_indices(retention: torch.Tensor) -> torch.Tensor:
    """Original flat indices of the kept tokens.

    Args:
        retention: ``(F*H*W,)`` bool mask in the original ``(F, H, W)`` order.
    Returns:
        ``(k,)`` long, increasing, ``k = retention.sum()``.
    """
    if not isinstance(retention, torch.Tensor) or retention.dtype != torch.bool or retention.dim() != 1:
        raise InputError("retention must be a 1-D bool tensor (the output of retention_mask)")
    return retention.nonzero().squeeze(1)


def retained_grid_positions(retention: torch.Tensor, thw: tuple[int, int, int]) -> torch.Tensor:
    """Original ``(frame, row, column)`` grid coordinates of the kept tokens (e.g. for 3-D / M-RoPE position ids).

    Args:
        retention: ``(F*H*W,)`` bool mask in ``(F, H, W)`` order.
        thw: ``(F, H, W)`` the grid the mask covers (after any spatial merge).
    Returns:
        ``(k, 3)`` long, rows ``(frame, row, column)`` in increasing flat order.
    Raises:
        InputError: the mask does not have ``F*H*W`` entries.
    """
    n_frames, H, W = (int(v) for v in thw)
    idx = retained_indices(retention)
    if retention.numel() != n_frames * H * W:
        raise InputError(
            f"retention has {retention.numel()} entries but thw={(n_frames, H, W)} has {n_frames * H * W} tokens"
        )
    return torch.stack([idx // (H * W), (idx // W) % H, idx % W], dim=1)


@dataclass
class EVSResult:
    """A prompt with the dropped visual tokens removed.

    Attributes:
        inputs: ``(b, T', ...)`` the kept rows of the input ids or embeddings.
        visual_mask: ``(b, T')`` bool, which kept rows are visual.
        position_ids: ``(b, T')`` long, the ORIGINAL position ids of the kept rows.
        attention_mask: ``(b, T')`` the kept entries of the attention mask, or None.
        kept_index: ``(b, T')`` long, increasing, the original sequence indices of the kept rows.
    """

    inputs: torch.Tensor
    visual_mask: torch.Tensor
    position_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    kept_index: torch.Tensor


def apply_retention(
    input_ids_or_embeds: torch.Tensor,
    visual_mask: torch.Tensor,
    retention: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
) -> EVSResult:
    """Remove the visual tokens EVS dropped; every non-visual token (text, padding) is kept.

    Position ids are the ORIGINAL ones: ``arange(T)`` without an attention mask, otherwise
    ``cumsum(attention_mask) − 1`` with padding set to 1 (the convention of transformers' ``generate``), so a
    left-padded sample counts positions over its real tokens only.

    Args:
        input_ids_or_embeds: ``(b, T)`` ids or ``(b, T, ...)`` embeddings: the prompt before EVS.
        visual_mask: ``(b, T)`` bool, the video tokens; every sample must have the same count ``V``, in
            the same order as the retention mask (``(F, H, W)``).
        retention: ``(V,)`` bool (the same for every sample) or ``(b, V)`` bool; each sample must keep the
            same number of tokens.
        attention_mask: ``(b, T)`` 1/0 or bool, or None; visual tokens must not be padding.
    Returns:
        :class:`EVSResult` with ``T' = T − V + k`` rows per sample (``k`` kept visual tokens).
    Raises:
        InputError: shapes or dtypes that do not fit, unequal visual counts, or unequal kept counts.
    """
    x = input_ids_or_embeds
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        raise InputError(
            "input_ids_or_embeds must be (b, T) ids or (b, T, ...) embeddings; add a batch dimension with "
            ".unsqueeze(0) for a single sequence"
        )
    b, T = x.shape[:2]
    if b == 0:
        raise InputError("input_ids_or_embeds has an empty batch; pass at least one sequence")
    if not isinstance(visual_mask, torch.Tensor) or visual_mask.dtype != torch.bool:
        raise InputError("visual_mask must be a bool tensor, e.g. input_ids == video_token_id")
    if tuple(visual_mask.shape) != (b, T):
        raise InputError(
            f"visual_mask must have shape (b, T) = {(b, T)} like the inputs, got {tuple(visual_mask.shape)}"
        )
    counts = visual_mask.sum(dim=1)
    if bool((counts != counts[0]).any()):
        raise InputError(
            f"samples have different numbers of visual tokens ({counts.tolist()}); apply_retention needs the same "
            "count in every sample: call it once per sample"
        )
    V = int(counts[0])
    if not isinstance(retention, torch.Tensor) or retention.dtype != torch.bool:
        raise InputError("retention must be a bool tensor (the output of retention_mask / evs_retention_mask)")
    retention = retention.to(visual_mask.device)
    if retention.dim() == 1:
        retention = retention.expand(b, -1)
    if retention.dim() != 2 or tuple(retention.shape) != (b, V):
        raise InputError(
            f"retention must have shape (V,) = ({V},) or (b, V) = {(b, V)}, one entry per visual token, got "
            f"{tuple(retention.shape)}"
        )
    kept_counts = retention.sum(dim=1)
    if bool((kept_counts != kept_counts[0]).any()):
        raise InputError(
            f"samples keep different numbers of visual tokens ({kept_counts.tolist()}); give every sample the "
            "same budget (same F, H, W and rate) or call apply_retention once per sample"
        )
    if attention_mask is not None:
        if not isinstance(attention_mask, torch.Tensor) or tuple(attention_mask.shape) != (b, T):
            shape = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else attention_mask
            raise InputError(f"attention_mask must have shape (b, T) = {(b, T)}, got {shape}")
        attention_mask = attention_mask.to(visual_mask.device)
        if bool((visual_mask & (attention_mask == 0)).any()):
            raise InputError("some visual tokens are marked as padding by attention_mask; fix the mask or the prompt")

    chosen = retention.nonzero()[:, 1].reshape(b, -1)  # (b, k) indices into each sample's visual tokens
    kept_index = keep_index(visual_mask, chosen)  # (b, T'), increasing per row

    if attention_mask is None:
        positions = torch.arange(T, device=visual_mask.device).expand(b, T)
    else:
        positions = attention_mask.long().cumsum(dim=-1) - 1
        positions = positions.masked_fill(attention_mask == 0, 1)

    rows = torch.arange(b, device=visual_mask.device)[:, None]
    idx = kept_index.to(x.device)
    return EVSResult(
        inputs=x[torch.arange(b, device=x.device)[:, None], idx],
        visual_mask=visual_mask[rows, kept_index],
        position_ids=positions[rows, kept_index],
        attention_mask=None if attention_mask is None else attention_mask[rows, kept_index],
        kept_index=kept_index,
    )
