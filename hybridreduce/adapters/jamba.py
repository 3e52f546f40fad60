"""Jamba: Mamba-1 mixers and RoPE-free attention, each followed by an MLP or MoE in the same layer."""

from __future__ import annotations

from .base import FamilyAdapter


class JambaAdapter(FamilyAdapter):
    model_types = ("jamba",)
    ssm_type = "mamba1"
