"""Nemotron-H: one mixer per block (Mamba-2, attention without RoPE, MLP or MoE)."""

from __future__ import annotations

from ..errors import UnsupportedModelError
from .base import BlockSpec, FamilyAdapter

# Nemotron-H's ``block_type`` names → our block kinds.
_KINDS = {
    "linear_attention": "ssm",
    "mamba": "ssm",
    "full_attention": "attn",
    "attention": "attn",
    "mlp": "mlp",
    "moe": "moe",
}


class NemotronHAdapter(FamilyAdapter):
    model_types = ("nemotron_h",)
    ssm_type = "mamba2"

    def block_spec(self, index, block, config, name):
        kind = _KINDS.get(block.block_type)
        if kind is None:
            raise UnsupportedModelError(
                f"block {index} of this Nemotron-H model is of type {block.block_type!r}, which the adapter does not "
                f"know (it knows {sorted(_KINDS)}); a newer transformers release may have added it: add it to "
                "hybridreduce/adapters/nemotron_h.py (docs/guides/adding-an-architecture.md)"
            )
        return BlockSpec(
            index=index,
            kind=kind,
            name=name,
            module=block,
            attn=block.mixer if kind == "attn" else None,
            ssm=block.mixer if kind == "ssm" else None,
            ssm_type="mamba2" if kind == "ssm" else None,
            rope=False,  # Nemotron-H attention has no positional encoding of its own.
        )
