"""Mamba-2 (SSM-only control model): every block is a Mamba-2 mixer."""

from __future__ import annotations

from .base import FamilyAdapter


class Mamba2Adapter(FamilyAdapter):
    model_types = ("mamba2",)
    ssm_type = "mamba2"

    def block_spec(self, index, block, config, name):
        return self._from_attrs(index, block, config, name, attn_attr="__none__", ssm_attr="mixer")
