"""Falcon-H1: every layer runs attention (RoPE) and a Mamba-2 mixer side by side.

The mixer multiplies its ``in_proj`` output by a muP vector (``mixer.mup_vector``); the Mamba
scorer applies it too (see :mod:`hybridreduce.scoring.mamba`).
"""

from __future__ import annotations

from .base import COMMON_SEQUENCE_ARGS, FamilyAdapter


class FalconH1Adapter(FamilyAdapter):
    model_types = ("falcon_h1",)
    rope = True
    # The Mamba mixer gets its own 2-D padding mask beside the attention mask.
    sequence_args = {**COMMON_SEQUENCE_ARGS, "mamba_attention_mask": "mask"}
