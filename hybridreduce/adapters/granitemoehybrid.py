"""Granite 4 hybrids (``granitemoehybrid``): Mamba-2 or attention layers, each followed by MoE/MLP.

Attention uses RoPE only when ``config.position_embedding_type == "rope"`` (the released
checkpoints use no positional encoding).
"""

from __future__ import annotations

from .base import FamilyAdapter


class GraniteMoeHybridAdapter(FamilyAdapter):
    model_types = ("granitemoehybrid",)

    def uses_rope(self, config) -> bool:
        return getattr(config, "position_embedding_type", None) == "rope"
