"""Granite 4 hybrids (``granitemoehybrid``): Mamba-2 or attention layers, each followed by MoE/MLP.

Attention uses RoPE only when ``config.position_embedding_type == "rope"`` (the released
checkpoints use no positional encoding).
"""

from __future__ import annotations

from .base import FamilyAdapter


class GraniteMoeHybridAdapter(FamilyAdapter):
    model_types = ("granitemoehybrid",)
    ssm_type = "mamba2"

    def uses_rope(self, config) -> bool:
        return getattr(config, "position_embedding_type", None) == "rope"

    def block_spec(self, index, block, config, name):
        return self._from_attrs(index, block, config, name)
