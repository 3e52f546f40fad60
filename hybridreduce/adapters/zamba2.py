"""Zamba2: Mamba-2 layers; every "hybrid" layer also runs a shared attention block.

A hybrid layer feeds ``concat(hidden, embeddings)`` through the shared transformer block and adds its
(linearly projected) output to the input of the layer's own Mamba block. Both mixers see every token
of the block's input, so the layer is of kind ``parallel``. Each hybrid layer holds its own
attention module instance (weights are tied across them), so the tap can tell them apart.
"""

from __future__ import annotations

from .base import COMMON_SEQUENCE_ARGS, BlockSpec, FamilyAdapter


class Zamba2Adapter(FamilyAdapter):
    model_types = ("zamba2",)
    ssm_type = "mamba2"
    # Every layer also receives the embedding stream (the shared block's second input), a 2-D padding mask for
    # the Mamba mixer (``attention_mask``) and the 4-D mask of the shared attention (``causal_mask``).
    sequence_args = {**COMMON_SEQUENCE_ARGS, "original_hidden_states": "tokens", "causal_mask": "mask"}

    def uses_rope(self, config) -> bool:
        return bool(getattr(config, "use_mem_rope", False))

    def block_spec(self, index, block, config, name):
        shared = getattr(block, "shared_transformer", None)
        mamba_layer = getattr(block, "mamba_decoder", block)
        attn = shared.self_attn if shared is not None else None
        return BlockSpec(
            index=index,
            kind="parallel" if attn is not None else "ssm",
            name=name,
            module=block,
            attn=attn,
            ssm=mamba_layer.mamba,
            ssm_type="mamba2",
            rope=attn is not None and self.uses_rope(config),
        )
