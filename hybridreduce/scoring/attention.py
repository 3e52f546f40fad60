"""Language-aware importance from attention blocks.

Only the query rows are computed: ``a[i, :] = softmax(q_i · k · scale + mask_i)`` over *all* keys,
from the post-RoPE ``q`` and ``k`` that the model hands its attention function (after the KV-cache
update and with the model's own mask), so the model itself keeps running SDPA or flash attention.
"""

from __future__ import annotations

import torch

from .config import ScorerConfig, normalise, reduce_heads, reduce_rows


def _row_mask(
    attention_mask: torch.Tensor | None, q_index: torch.Tensor, T: int, S: int, device
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Return ``(bool_allowed, additive)`` masks for the selected rows, shape ``(b, 1|h, Q, S)``.

    ``attention_mask`` comes in the forms transformers hands attention functions: ``None`` (plain
    causal; SDPA's ``is_causal`` shortcut), a 4-D boolean mask (``True`` = attend), a 4-D additive
    float mask (eager), or a 2-D ``(b, S)`` padding mask (flash attention, causal implied).
    """
    b, Q = q_index.shape
    if attention_mask is None or attention_mask.dim() == 2:
        # Causal, aligned bottom-right: query row i of T sees keys up to S - T + i.
        key_pos = torch.arange(S, device=device)
        allowed = key_pos[None, None, None, :] <= (S - T + q_index)[:, None, :, None]
        if attention_mask is not None:
            allowed = allowed & attention_mask[:, None, None, :].to(device=device, dtype=torch.bool)
        return allowed, None
    mask = attention_mask.to(device)
    mb, mh = mask.shape[0], mask.shape[1]
    idx = q_index if mb == b else q_index[:1]
    idx = idx[:, None, :, None].expand(mb, mh, Q, mask.shape[-1])
    rows = mask.gather(2, idx)  # [b|1, 1|h, Q, S]
    if rows.dtype == torch.bool:
        return rows, None
    return None, rows.float()


def attention_rows(
    query: torch.Tensor,
    key: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    q_index: torch.Tensor,
    softcap: float | None = None,
) -> torch.Tensor:
    """Attention probabilities of the selected query rows over all keys, in float32.

    Args:
        query: ``(b, h, T, p)`` post-RoPE queries of the current forward.
        key: ``(b, h_kv, S, p)`` post-RoPE keys (cache included), ``h`` a multiple of ``h_kv``.
        attention_mask: as handed to the attention function (see :func:`_row_mask`).
        scaling: the softmax scale the module uses.
        q_index: ``(b, Q)`` long, row positions in ``[0, T)``.
        softcap: optional logit soft-capping (``tanh(x / cap) * cap``).
    Returns:
        ``(b, h, Q, S)`` float32, each row sums to one.
    """
    b, h, T, p = query.shape
    h_kv, S = key.shape[1], key.shape[2]
    Q = q_index.shape[1]
    # float32 whatever the model dtype: these scores are compared and accumulated across layers.
    q = query.gather(2, q_index[:, None, :, None].expand(b, h, Q, p)).float()
    k = key.float()
    if h != h_kv:
        k = k.repeat_interleave(h // h_kv, dim=1)
    logits = torch.matmul(q, k.transpose(-1, -2)) * scaling  # [b, h, Q, S]
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    allowed, additive = _row_mask(attention_mask, q_index, T, S, query.device)
    if additive is not None:
        logits = logits + additive
    if allowed is not None:
        logits = logits.masked_fill(~allowed, float("-inf"))
    return torch.softmax(logits, dim=-1)


def attention_importance(
    rows: torch.Tensor, q_valid: torch.Tensor, v_index: torch.Tensor, cfg: ScorerConfig
) -> torch.Tensor:
    """Importance of the visual tokens from attention rows.

    Args:
        rows: ``(b, h, Q, S)`` attention probabilities (:func:`attention_rows`).
        q_valid: ``(b, Q)`` bool, real query slots.
        v_index: ``(b, V)`` long, key positions of the visual tokens.
        cfg: aggregation settings.
    Returns:
        ``(b, V)`` float32, sums to one per sample.
    """
    b, h, Q, _ = rows.shape
    w = rows.gather(3, v_index[:, None, None, :].expand(b, h, Q, v_index.shape[1]))  # [b, h, Q, V]
    return normalise(reduce_heads(reduce_rows(w, q_valid, cfg.query_reduce), cfg.head_reduce))
