"""Mamba-2 (SSM-only control model): every block is a Mamba-2 mixer."""

from __future__ import annotations

from .base import FamilyAdapter


class Mamba2Adapter(FamilyAdapter):
    model_types = ("mamba2",)
    attn_attr = None
    ssm_attr = "mixer"
