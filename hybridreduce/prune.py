"""Pruning as pure functions (DESIGN decision 6): choose visual tokens, gather the kept rows.

Nothing here touches a model. The reduction engine calls :func:`select_visual` with the scores of
the current visual tokens, :func:`keep_index` to merge them with the always-kept text tokens, and
:func:`prune` to gather hidden states, original position ids and masks.

Shapes use the letters of :mod:`hybridreduce.glossary`. Here ``T`` is the sequence a cut receives (already
shortened by any earlier cut) and ``V`` its visual tokens, so a cut that keeps ``k`` leaves ``T' = T − V + k``.
"""

from __future__ import annotations

import torch

from .errors import InputError

SELECTIONS = ("topk", "random", "uniform")


def select_visual(
    scores: torch.Tensor | None,
    k: int,
    how: str = "topk",
    n_visual: int | None = None,
    generator: torch.Generator | None = None,
    batch: int | None = None,
) -> torch.Tensor:
    """Choose ``k`` of the current visual tokens of each sample.

    Args:
        scores: ``(b, V)`` importance (``topk``); may be ``None`` for ``random``/``uniform``.
        k: how many to keep, ``1 ≤ k ≤ V``.
        how: ``"topk"`` (highest scores; ties go to the earlier token), ``"random"`` (uniform
            without replacement, from ``generator``), ``"uniform"`` (an even stride).
        n_visual, batch: ``V`` and ``b`` when ``scores`` is ``None``.
    Returns:
        ``(b, k)`` long, indices into the current visual tokens, increasing.
    """
    if scores is not None:
        batch, n_visual = scores.shape
    if n_visual is None or batch is None:
        raise InputError("select_visual needs scores, or n_visual and batch")
    if not 1 <= k <= n_visual:
        raise InputError(f"cannot keep {k} of {n_visual} visual tokens (need 1 ≤ k ≤ {n_visual})")
    device = scores.device if scores is not None else None
    if how == "topk":
        if scores is None:
            raise InputError("topk selection needs scores")
        chosen = torch.argsort(scores, dim=1, descending=True, stable=True)[:, :k]
    elif how == "random":
        gen_device = generator.device if generator is not None else "cpu"
        chosen = torch.stack(
            [torch.randperm(n_visual, generator=generator, device=gen_device)[:k] for _ in range(batch)]
        )
    elif how == "uniform":
        # Centres of k equal bins over [0, V): distinct for k ≤ V.
        row = ((torch.arange(k, dtype=torch.float64) + 0.5) * n_visual / k).floor().long()
        chosen = row.expand(batch, k)
    else:
        raise InputError(f"selection {how!r} is not one of {SELECTIONS}")
    return chosen.sort(dim=1).values.to(device if device is not None else chosen.device)


def true_positions(mask: torch.Tensor, k: int) -> torch.Tensor:
    """``(b, k)`` long: the increasing indices of the ``k`` True entries of each row of ``mask (b, T)``."""
    T = mask.shape[1]
    pos = torch.arange(T, device=mask.device).expand_as(mask)
    return torch.where(mask, pos, pos + T).sort(dim=1).values[:, :k]


def keep_index(visual_mask: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """Sequence indices to keep: every non-visual token plus the chosen visual ones, in order.

    Args:
        visual_mask: ``(b, T)`` bool, the current visual tokens (the same count ``V`` per sample).
        chosen: ``(b, k)`` indices into each sample's visual tokens (``0 ≤ chosen < V``).
    Returns:
        ``(b, T')`` long, increasing.
    """
    b, T = visual_mask.shape
    counts = visual_mask.sum(dim=1)
    if bool((counts != counts[0]).any()):
        raise InputError(f"samples have different numbers of visual tokens ({counts.tolist()})")
    V = int(counts[0])
    if chosen.numel() and (int(chosen.min()) < 0 or int(chosen.max()) >= V):
        raise InputError(f"chosen visual indices must lie in [0, {V}), got [{int(chosen.min())}, {int(chosen.max())}]")
    visual_pos = true_positions(visual_mask, V)  # (b, V)
    keep = (~visual_mask).scatter(1, visual_pos.gather(1, chosen.to(visual_pos.device)), True)
    return true_positions(keep, int(keep[0].sum()))


def prune(
    hidden: torch.Tensor,
    positions: torch.Tensor,
    masks: dict[str, torch.Tensor | None],
    keep_idx: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor | None]]:
    """Gather the kept rows of the hidden states, their original position ids and the masks.

    Args:
        hidden: ``(b, T, d)``.
        positions: ``(b, T)`` original position ids of the current tokens.
        masks: named masks over the current tokens: ``(b, T)`` padding masks, or ``(b|1, h|1, T, T)``
            attention masks (bool or additive), sliced on both axes; ``None`` entries stay ``None``.
        keep_idx: ``(b, T')`` increasing indices from :func:`keep_index`.
    Returns:
        ``(hidden[b, T', d], positions[b, T'], masks)``.
    """
    b, T, d = hidden.shape
    if keep_idx.shape[0] != b or keep_idx.dim() != 2:
        raise InputError(f"keep_idx must have shape ({b}, T'), got {tuple(keep_idx.shape)}")
    out_masks: dict[str, torch.Tensor | None] = {}
    for name, mask in masks.items():
        if mask is None:
            out_masks[name] = None
        elif mask.dim() == 4 and mask.shape[-1] != T:
            raise InputError(f"mask {name!r} covers {mask.shape[-1]} keys but the sequence has {T} tokens")
        elif mask.dim() in (2, 4):
            out_masks[name] = gather_seq(mask, keep_idx, T)
        else:
            raise InputError(f"mask {name!r} must be 2-D (b, T) or 4-D (b, h, T, T), got {tuple(mask.shape)}")
    return gather_seq(hidden, keep_idx, T), gather_seq(positions.expand(b, T), keep_idx, T), out_masks


def gather_seq(tensor: torch.Tensor, idx: torch.Tensor, T: int) -> torch.Tensor:
    """Keep the rows ``idx`` of a sequence-shaped tensor; other tensors come back unchanged.

    Which axes are sequence axes is read off the shape, as transformers lays them out:
    ``(b|1, h|1, T, T)`` attention masks are gathered on both of their last two axes; any other
    tensor with ``shape[1] == T`` (``(b, T)`` padding masks and position ids, ``(b, T, d)`` hidden
    states, ``(b|1, T, d)`` RoPE cos/sin) on axis 1. A leading axis of size 1 is broadcast to ``b``.

    Args:
        tensor: the tensor to gather.
        idx: ``(b, T')`` long, increasing indices into the length-``T`` sequence.
        T: the current sequence length.
    """
    b, kept = idx.shape
    idx = idx.to(tensor.device)
    if tensor.dim() == 4 and tensor.shape[-1] == T and tensor.shape[-2] == T:
        h = tensor.shape[1]
        m = tensor.expand(b, h, T, T).gather(2, idx[:, None, :, None].expand(b, h, kept, T))
        return m.gather(3, idx[:, None, None, :].expand(b, h, kept, kept))
    if tensor.dim() >= 2 and tensor.shape[1] == T:
        rest = tensor.shape[2:]
        full = tensor.expand(b, T, *rest)
        return full.gather(1, idx.view(b, kept, *([1] * len(rest))).expand(b, kept, *rest))
    return tensor
