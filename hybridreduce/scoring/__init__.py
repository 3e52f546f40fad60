"""Importance scorers: attention rows, Mamba hidden attention (exact and decay-free), references."""

from .attention import attention_importance, attention_rows
from .config import ScorerConfig
from .mamba import (
    Mamba1Primitives,
    Mamba2Primitives,
    mamba1_hidden_attention,
    mamba1_importance,
    mamba1_log_scores,
    mamba1_primitives,
    mamba2_hidden_attention,
    mamba2_importance,
    mamba2_log_scores,
    mamba2_primitives,
)

__all__ = [
    "Mamba1Primitives",
    "Mamba2Primitives",
    "ScorerConfig",
    "attention_importance",
    "attention_rows",
    "mamba1_hidden_attention",
    "mamba1_importance",
    "mamba1_log_scores",
    "mamba1_primitives",
    "mamba2_hidden_attention",
    "mamba2_importance",
    "mamba2_log_scores",
    "mamba2_primitives",
]
