"""Bamba: Mamba-2 and RoPE attention layers, each followed by an MLP."""

from __future__ import annotations

from .base import FamilyAdapter


class BambaAdapter(FamilyAdapter):
    model_types = ("bamba",)
    rope = True
