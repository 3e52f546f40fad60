"""What an adapter knows about one architecture family.

An adapter maps a stock transformers model onto a flat list of :class:`BlockSpec` entries, one per
element of the decoder's ``layers`` list. Nothing here changes the model: the specs only hold
references to the stock submodules that the taps hook (an attention module whose
``AttentionInterface`` call is wrapped, a Mamba mixer whose ``in_proj`` output is observed).

Block kinds (``BlockSpec.kind``):

=========  ======================================================================================
``attn``   self-attention mixer (possibly followed by an MLP/MoE inside the same layer)
``ssm``    Mamba mixer (Mamba-2 or Mamba-1; possibly followed by an MLP/MoE in the same layer)
``mlp``    dense feed-forward block only (Nemotron-H); does not score
``moe``    mixture-of-experts block only (Nemotron-H); does not score
``parallel`` a block holding both an attention and a Mamba mixer on the same input stream:
           Falcon-H1 (the two run side by side) and Zamba2 hybrid layers (the shared attention
           block's output is added to the Mamba block's input). Its unified score is the mean of
           the attention and the Mamba importance vectors.
=========  ======================================================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import ClassVar

from torch import nn

BLOCK_KINDS = ("attn", "ssm", "mlp", "moe", "parallel")
SSM_TYPES = ("mamba2", "mamba1")

#: How a declared sequence-shaped block argument is sliced to the tokens a block carries:
#: ``"tokens"``: a tensor ``(b|1, T, ...)`` (or a tuple of them, like RoPE's ``(cos, sin)``) on axis 1;
#: ``"mask"``: a ``(b, T)`` padding mask on axis 1, or a ``(b|1, h|1, T, T)`` attention mask on its last two axes.
SEQUENCE_ARG_KINDS = ("tokens", "mask")

#: The sequence-shaped arguments that transformers' decoders pass to the blocks of most families.
COMMON_SEQUENCE_ARGS = MappingProxyType(
    {"attention_mask": "mask", "position_ids": "tokens", "position_embeddings": "tokens"}
)


@dataclass(frozen=True)
class BlockSpec:
    """One decoder block as the taps see it.

    Attributes:
        index: position of the block in the decoder's ``layers`` list.
        kind: one of :data:`BLOCK_KINDS`.
        name: dotted name of the block inside the root model (``model.layers.3``).
        module: the block itself.
        attn: the attention module whose ``AttentionInterface`` call is tapped, or ``None``.
        ssm: the Mamba mixer (it owns ``in_proj``), or ``None``.
        ssm_type: ``"mamba2"`` (scalar ``A`` per head) or ``"mamba1"`` (diagonal ``A[c, n]``).
        rope: whether the block's attention applies rotary position embeddings (so that pruned
            sequences must keep their original position ids).
    """

    index: int
    kind: str
    name: str
    module: nn.Module = field(repr=False)
    attn: nn.Module | None = field(default=None, repr=False)
    ssm: nn.Module | None = field(default=None, repr=False)
    ssm_type: str | None = None
    rope: bool = False

    def __post_init__(self) -> None:
        if self.kind not in BLOCK_KINDS:
            raise ValueError(f"block kind {self.kind!r} is not one of {BLOCK_KINDS}")
        if self.ssm is not None and self.ssm_type not in SSM_TYPES:
            raise ValueError(f"ssm_type {self.ssm_type!r} is not one of {SSM_TYPES}")
        expected = {"attn": (True, False), "ssm": (False, True), "parallel": (True, True)}
        has = (self.attn is not None, self.ssm is not None)
        if expected.get(self.kind, (False, False)) != has:
            raise ValueError(f"block {self.index} of kind {self.kind!r} has attn={has[0]}, ssm={has[1]}")

    @property
    def scores(self) -> bool:
        """Whether the block yields an importance vector (it holds attention or a Mamba mixer)."""
        return self.attn is not None or self.ssm is not None


class FamilyAdapter:
    """Base class of the per-family adapters.

    A subclass sets ``model_types`` and either the class attributes below (for layers that expose
    their mixers as attributes: ``self_attn`` and/or ``mamba`` on most families) or overrides
    :meth:`block_spec`. The registry calls :meth:`block_spec` once per element of the decoder's
    ``layers``.
    """

    model_types: ClassVar[tuple[str, ...]] = ()
    #: Mamba flavour of the family's mixers.
    ssm_type: ClassVar[str] = "mamba2"
    #: Attribute names of the attention module and the Mamba mixer on a layer (absent → not there).
    attn_attr: ClassVar[str | None] = "self_attn"
    ssm_attr: ClassVar[str | None] = "mamba"
    #: Whether the family's attention applies RoPE (override :meth:`uses_rope` when config-dependent).
    rope: ClassVar[bool] = False
    #: The sequence-shaped arguments the family's blocks receive besides the residual stream
    #: (``hidden_states``), by name → kind (:data:`SEQUENCE_ARG_KINDS`). The reduction engine slices exactly
    #: these; a tensor argument of sequence length that is not declared here raises (never guessed).
    sequence_args: ClassVar[Mapping[str, str]] = COMMON_SEQUENCE_ARGS

    def uses_rope(self, config) -> bool:
        """Whether the family's attention blocks apply RoPE for this config."""
        return self.rope

    def block_spec(self, index: int, block: nn.Module, config, name: str) -> BlockSpec:
        attn = getattr(block, self.attn_attr, None) if self.attn_attr else None
        ssm = getattr(block, self.ssm_attr, None) if self.ssm_attr else None
        if attn is not None and ssm is not None:
            kind = "parallel"
        elif attn is not None:
            kind = "attn"
        elif ssm is not None:
            kind = "ssm"
        else:
            raise ValueError(
                f"block {index} ({type(block).__name__}) has neither {self.attn_attr!r} nor {self.ssm_attr!r}"
            )
        return BlockSpec(
            index=index,
            kind=kind,
            name=name,
            module=block,
            attn=attn,
            ssm=ssm,
            ssm_type=self.ssm_type if ssm is not None else None,
            rope=attn is not None and self.uses_rope(config),
        )
