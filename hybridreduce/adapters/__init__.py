"""Adapter registry: ``config.model_type`` → the family adapter that lays out its blocks.

:func:`get_adapter` is the single entry point. It accepts a causal LM, a bare decoder, or a
vision-language wrapper whose language model is one of the supported families (transformers'
``nemotron_h_omni``, or any LLaVA-style model with a ``language_model`` submodule), and returns an
:class:`AdaptedModel`: the blocks in order, each with its kind and the submodules the taps hook.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from ..errors import UnsupportedModelError
from .bamba import BambaAdapter
from .base import BLOCK_KINDS, BlockSpec, FamilyAdapter
from .dense import DenseAttentionAdapter
from .falcon_h1 import FalconH1Adapter
from .granitemoehybrid import GraniteMoeHybridAdapter
from .jamba import JambaAdapter
from .mamba2 import Mamba2Adapter
from .nemotron_h import NemotronHAdapter
from .zamba2 import Zamba2Adapter

__all__ = [
    "AdaptedModel",
    "BLOCK_KINDS",
    "BlockSpec",
    "FamilyAdapter",
    "get_adapter",
    "register_adapter",
    "supported_model_types",
]

_REGISTRY: dict[str, FamilyAdapter] = {}

#: Vision-language wrappers we look inside (any model with a ``language_model`` also works).
KNOWN_WRAPPERS = ("nemotron_h_omni", "llava", "llava_next", "llava_next_video", "llava_onevision")


def register_adapter(adapter: FamilyAdapter, replace: bool = False) -> FamilyAdapter:
    """Register ``adapter`` for each of its ``model_types``.

    Args:
        replace: replace the adapter already registered for one of them; without it a model type registered twice
            is an error (as a method or an invariant registered twice is), never a silent replacement.

    Raises:
        ValueError: a model type already has an adapter and ``replace`` is false.
    """
    taken = [t for t in adapter.model_types if t in _REGISTRY and _REGISTRY[t] is not adapter]
    if taken and not replace:
        raise ValueError(
            f"model types {taken} already have an adapter ({', '.join(type(_REGISTRY[t]).__name__ for t in taken)}); "
            "pass replace=True to register_adapter to replace it"
        )
    for model_type in adapter.model_types:
        _REGISTRY[model_type] = adapter
    return adapter


for _adapter in (
    NemotronHAdapter(),
    JambaAdapter(),
    Zamba2Adapter(),
    BambaAdapter(),
    FalconH1Adapter(),
    GraniteMoeHybridAdapter(),
    DenseAttentionAdapter(),
    Mamba2Adapter(),
):
    register_adapter(_adapter)


def supported_model_types() -> list[str]:
    """The ``model_type`` values that have an adapter."""
    return sorted(_REGISTRY)


@dataclass
class AdaptedModel:
    """A model seen through its family adapter.

    Attributes:
        model: the model the user passed (possibly a vision-language wrapper).
        text_model: its language model (the module whose config has a registered ``model_type``).
        decoder: the module that owns the ``layers`` list (e.g. ``NemotronHModel``).
        model_type: the language model's ``config.model_type``.
        family: the family adapter.
        blocks: one :class:`BlockSpec` per decoder layer, in order.
        wrapper: the wrapper's ``model_type`` when the language model sits inside a VLM, else ``None``.
    """

    model: nn.Module
    text_model: nn.Module
    decoder: nn.Module
    model_type: str
    family: FamilyAdapter
    blocks: list[BlockSpec] = field(repr=False)
    wrapper: str | None = None

    @property
    def config(self):
        """The language model's config."""
        return self.text_model.config

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def kinds(self) -> list[str]:
        """Block kinds in order, e.g. ``['ssm', 'mlp', 'attn', ...]``."""
        return [b.kind for b in self.blocks]

    @property
    def scoring_blocks(self) -> list[BlockSpec]:
        """The blocks that yield an importance vector (attention, Mamba or both)."""
        return [b for b in self.blocks if b.scores]

    @property
    def attn_implementation(self) -> str:
        return getattr(self.config, "_attn_implementation", None) or "eager"

    def describe(self) -> str:
        """A one-line-per-block table of the layout (for logs and ``verify``)."""
        lines = [f"{self.model_type} ({len(self.blocks)} blocks, attention: {self.attn_implementation})"]
        for b in self.blocks:
            extra = f" {b.ssm_type}" if b.ssm is not None else ""
            extra += " rope" if b.rope else ""
            lines.append(f"  {b.index:3d} {b.kind:<8}{extra:<14} {b.name}")
        return "\n".join(lines)


def _model_type(module: nn.Module) -> str | None:
    config = getattr(module, "config", None)
    return getattr(config, "model_type", None)


def _find_language_model(model: nn.Module) -> tuple[nn.Module, str | None]:
    """Return ``(language_model, wrapper_model_type)``; the wrapper type is ``None`` for a plain LM."""
    if _model_type(model) in _REGISTRY:
        return model, None
    # Vision-language wrappers: transformers puts the language model at ``model.language_model``
    # (NemotronH-Omni) or ``model.model.language_model`` (LLaVA family).
    for holder in (model, getattr(model, "model", None)):
        lm = getattr(holder, "language_model", None) if holder is not None else None
        if isinstance(lm, nn.Module) and _model_type(lm) in _REGISTRY:
            return lm, _model_type(model)
    return None, None


def _unsupported(model: nn.Module) -> UnsupportedModelError:
    mt = _model_type(model)
    inner = ""
    for holder in (model, getattr(model, "model", None)):
        lm = getattr(holder, "language_model", None) if holder is not None else None
        if isinstance(lm, nn.Module):
            inner = f" (its language model is {_model_type(lm)!r})"
    return UnsupportedModelError(
        f"hybridreduce has no adapter for model_type {mt!r}{inner}. Supported language models: "
        f"{', '.join(supported_model_types())}; vision-language wrappers around them are found through "
        f"their `language_model` ({', '.join(KNOWN_WRAPPERS)}). To add a family, subclass "
        "hybridreduce.adapters.FamilyAdapter and call register_adapter()."
    )


def _find_decoder(text_model: nn.Module) -> tuple[nn.Module, str]:
    """The module that owns the ``layers`` ModuleList, and its dotted prefix inside ``text_model``."""
    for prefix in ("", "model", "backbone", "model.model"):
        module = text_model
        for part in filter(None, prefix.split(".")):
            module = getattr(module, part, None)
        if module is not None and isinstance(getattr(module, "layers", None), nn.ModuleList):
            return module, prefix
    raise UnsupportedModelError(
        f"could not find the decoder layers of {type(text_model).__name__}: expected a `layers` ModuleList on "
        "the model, `model.model` or `model.backbone`."
    )


def get_adapter(model: nn.Module, allow_meta: bool = False) -> AdaptedModel:
    """Resolve ``model`` to its family adapter and lay out its blocks.

    ``allow_meta``: accept a model built on the ``meta`` device (no weights), to read its layout before loading
    (``hybridreduce finetune`` checks its schedule and LoRA targets so); such an adapter cannot score.

    Raises:
        UnsupportedModelError: no adapter for the (language) model's ``model_type``; the message
            lists the supported ones.
        InputError: the model sits on the ``meta`` device (weights not materialised).
    """
    from ..errors import InputError

    if not isinstance(model, nn.Module):
        raise UnsupportedModelError(f"expected a torch.nn.Module (a transformers model), got {type(model).__name__}")
    text_model, wrapper = _find_language_model(model)
    if text_model is None:
        raise _unsupported(model)
    if not allow_meta and any(p.is_meta for p in model.parameters()):
        raise InputError(
            "the model has parameters on the meta device (its weights were never loaded). Load it with "
            "from_pretrained(...) or call model.to_empty(device=...) and load a state dict before scoring."
        )
    model_type = _model_type(text_model)
    family = _REGISTRY[model_type]
    decoder, _ = _find_decoder(text_model)
    names = {id(m): n for n, m in model.named_modules()}
    blocks = [
        family.block_spec(i, block, text_model.config, names.get(id(block), f"layers.{i}"))
        for i, block in enumerate(decoder.layers)
    ]
    return AdaptedModel(
        model=model,
        text_model=text_model,
        decoder=decoder,
        model_type=model_type,
        family=family,
        blocks=blocks,
        wrapper=wrapper,
    )
