"""Scorer settings and the aggregation shared by every scorer.

Shapes in :mod:`hybridreduce.scoring` use the letters of :mod:`hybridreduce.glossary`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from ..yamlio import read_yaml_section

MAMBA_MODES = ("decay_free", "exact")
REDUCTIONS = ("mean", "max")


@dataclass(frozen=True)
class ScorerConfig:
    """How importance is computed and aggregated.

    Attributes:
        mamba: ``"decay_free"`` (``|C_i·B_j| Δ_j``, the paper's stronger selection signal) or
            ``"exact"`` (the hidden attention that reproduces the scan output).
        head_reduce: aggregation over attention heads, Mamba-2 heads or Mamba-1 channels.
        query_reduce: aggregation over the query rows. Rows are reduced first, then heads.
        chunk_elements: bound on the number of elements of any temporary the Mamba scorers
            materialise; the exact scorers loop over chunks of visual tokens (and, for Mamba-1,
            of query rows and channels) to stay under it.
        record_rows: also keep the raw attention rows ``[b, h, Q, S]`` of attention blocks in the
            cache (``ScoreCache.rows``); meant for tests and per-head analysis of short inputs.
    """

    mamba: str = "decay_free"
    head_reduce: str = "mean"
    query_reduce: str = "mean"
    chunk_elements: int = 1 << 24
    record_rows: bool = False

    def __post_init__(self) -> None:
        if self.mamba not in MAMBA_MODES:
            raise InputError(f"scorer mamba={self.mamba!r} is not one of {MAMBA_MODES}")
        for name in ("head_reduce", "query_reduce"):
            if getattr(self, name) not in REDUCTIONS:
                raise InputError(f"scorer {name}={getattr(self, name)!r} is not one of {REDUCTIONS}")
        if int(self.chunk_elements) < 1024:
            raise InputError(f"scorer chunk_elements={self.chunk_elements} is too small (use at least 1024)")

    @classmethod
    def parse(cls, value: ScorerConfig | str | dict | None) -> ScorerConfig:
        """Accept a config, ``None`` (defaults), a Mamba mode name, a dict, or a YAML file path."""
        if value is None:
            return cls()
        if isinstance(value, ScorerConfig):
            return value
        if isinstance(value, dict):
            unknown = set(value) - {f.name for f in fields(cls)}
            if unknown:
                raise InputError(f"unknown scorer settings {sorted(unknown)}; known: {[f.name for f in fields(cls)]}")
            return cls(**value)
        if isinstance(value, (str, Path)):
            if str(value) in MAMBA_MODES:
                return cls(mamba=str(value))
            path = Path(value)
            if path.suffix in (".yaml", ".yml"):
                return cls.from_yaml(path)
        raise InputError(
            f"cannot make a scorer from {value!r}: pass a ScorerConfig, a dict, one of {MAMBA_MODES}, or a YAML path"
        )

    @classmethod
    def from_yaml(cls, path: str | Path) -> ScorerConfig:
        return cls.parse(read_yaml_section(path, "scorer", "scorer config"))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def reduce_rows(w: torch.Tensor, q_valid: torch.Tensor, how: str) -> torch.Tensor:
    """Aggregate over query rows.

    Args:
        w: ``(b, h, Q, V)`` non-negative weights.
        q_valid: ``(b, Q)`` bool, which query slots are real (samples may have fewer queries).
        how: ``"mean"`` or ``"max"``.
    Returns:
        ``(b, h, V)``.
    """
    valid = q_valid[:, None, :, None]
    if how == "max":
        return w.masked_fill(~valid, float("-inf")).amax(dim=2)
    count = q_valid.sum(dim=1).clamp_min(1).to(w.dtype)[:, None, None]
    return w.masked_fill(~valid, 0.0).sum(dim=2) / count


def reduce_heads(w: torch.Tensor, how: str) -> torch.Tensor:
    """Aggregate ``(b, h, V)`` over heads (or channels) → ``(b, V)``."""
    return w.amax(dim=1) if how == "max" else w.mean(dim=1)


def normalise(scores: torch.Tensor) -> torch.Tensor:
    """Renormalise ``(b, V)`` non-negative scores to sum to one per sample."""
    return scores / scores.sum(dim=-1, keepdim=True)
