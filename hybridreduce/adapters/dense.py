"""Attention-only control models (Llama, Qwen2): every layer is an attention block with RoPE."""

from __future__ import annotations

from .base import FamilyAdapter


class DenseAttentionAdapter(FamilyAdapter):
    model_types = ("llama", "qwen2")

    def uses_rope(self, config) -> bool:
        return True

    def block_spec(self, index, block, config, name):
        return self._from_attrs(index, block, config, name, attn_attr="self_attn", ssm_attr="__none__")
