"""Bamba: Mamba-2 and RoPE attention layers, each followed by an MLP."""

from __future__ import annotations

from .base import FamilyAdapter


class BambaAdapter(FamilyAdapter):
    model_types = ("bamba",)
    ssm_type = "mamba2"

    def uses_rope(self, config) -> bool:
        return True

    def block_spec(self, index, block, config, name):
        return self._from_attrs(index, block, config, name)
