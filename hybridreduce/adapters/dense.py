"""Attention-only control models (Llama, Qwen2): every layer is an attention block with RoPE."""

from __future__ import annotations

from .base import FamilyAdapter


class DenseAttentionAdapter(FamilyAdapter):
    model_types = ("llama", "qwen2")
    ssm_attr = None
    rope = True
