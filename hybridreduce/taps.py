"""Hook taps: record language-aware importance for every scoring block during a forward.

``capture(model, visual_mask)`` is a context manager. Inside it, any forward of ``model`` that
starts from an empty cache and spans the whole masked sequence (a prefill) records one importance
vector over the visual tokens per scoring block into the returned :class:`ScoreCache`. Later
forwards that continue from a cache (decode steps of ``generate``) are left alone.

How the taps see the model, without touching its code (DESIGN decisions 1–4):

* attention blocks: a wrapper is installed in transformers' ``AttentionInterface`` under the
  model's own attention implementation key; it receives ``(module, query, key, value, mask,
  scaling=…)`` after RoPE and the cache update, scores the query rows, and calls the real
  function. The model keeps running SDPA (or flash, or eager).
* Mamba blocks: a forward pre-hook on the mixer keeps its padding mask, and a forward hook on
  ``in_proj`` rebuilds ``x, B, C, Δ`` from its output (kernel-path independent).
* the decoder: a forward pre-hook decides whether this forward is a scoring prefill and resolves
  the query and visual positions; a forward hook closes it.

Every hook is registered in ``__enter__`` and removed in ``finally``.
"""

from __future__ import annotations

import sys
import time
import warnings
import weakref
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from . import compat
from .adapters import AdaptedModel, BlockSpec, get_adapter
from .cache import ScoreCache
from .errors import InputError, ScoreError
from .prune import true_positions
from .scoring.attention import attention_importance, attention_rows
from .scoring.config import ScorerConfig
from .scoring.mamba import SSM_KINDS

QUERY_MODES = ("after_visual", "last", "all_text")


# --------------------------------------------------------------------------------------------------
# AttentionInterface dispatch
# --------------------------------------------------------------------------------------------------
class _AttentionDispatch:
    """Process-wide wrapper on ``ALL_ATTENTION_FUNCTIONS[impl]`` while at least one tap is active.

    Per attention module instance, a scoring tap registers a *callback* (it reads the call) and the reduction
    engine's size-aware merging a *mask transform* (it returns a replacement ``attention_mask``, or ``None`` for
    no change; it runs first, so the callback sees the mask the attention uses). Modules with neither (other
    models, other contexts) pass straight through to the original function.
    """

    def __init__(self) -> None:
        self.callbacks: dict[int, Callable] = {}
        self.transforms: dict[int, Callable] = {}
        self.owners: dict[str, set[tuple[str, int]]] = {}  # impl -> (role, module id) registered under it
        self.saved: dict[str, tuple[bool, Callable | None]] = {}  # impl -> (had local override, value)

    def add(self, impl: str, module: nn.Module, callback: Callable) -> None:
        """Register a scoring ``callback(module, query, key, attention_mask, kwargs)`` on ``module``."""
        self._add(impl, module, callback, self.callbacks, "callback")

    def add_mask_transform(self, impl: str, module: nn.Module, transform: Callable) -> None:
        """Register ``transform(module, query, key, attention_mask) -> mask | None`` on ``module``."""
        self._add(impl, module, transform, self.transforms, "transform")

    def remove(self, impl: str, module: nn.Module) -> None:
        self._remove(impl, module, self.callbacks, "callback")

    def remove_mask_transform(self, impl: str, module: nn.Module) -> None:
        self._remove(impl, module, self.transforms, "transform")

    def _add(self, impl: str, module: nn.Module, fn: Callable, table: dict, role: str) -> None:
        if id(module) in table:
            raise InputError(
                f"a capture or reduction is already active on this model ({type(module).__name__} is tapped); "
                "one context per model at a time: collect everything inside a single context"
            )
        fns = compat.attention_functions()
        if impl not in self.saved:
            original = fns[impl] if impl in fns else None  # None: eager, resolved per module
            self.saved[impl] = compat.local_attention_override(impl)
            fns[impl] = self._make_wrapper(original)
            self.owners[impl] = set()
        table[id(module)] = fn
        self.owners[impl].add((role, id(module)))

    def _remove(self, impl: str, module: nn.Module, table: dict, role: str) -> None:
        table.pop(id(module), None)
        owners = self.owners.get(impl)
        if owners is None:
            return
        owners.discard((role, id(module)))
        if not owners:
            fns = compat.attention_functions()
            had_local, value = self.saved.pop(impl)
            del self.owners[impl]
            if had_local:
                fns[impl] = value
            else:
                del fns[impl]

    def _make_wrapper(self, original: Callable | None) -> Callable:
        callbacks, transforms = self.callbacks, self.transforms

        def hybridreduce_attention_tap(module, query, key, value, attention_mask, *args, **kwargs):
            transform = transforms.get(id(module))
            if transform is not None:
                changed = transform(module, query, key, attention_mask)
                if changed is not None:
                    attention_mask = changed
            callback = callbacks.get(id(module))
            if callback is not None:
                callback(module, query, key, attention_mask, kwargs)
            fn = original if original is not None else _eager_function(module)
            return fn(module, query, key, value, attention_mask, *args, **kwargs)

        return hybridreduce_attention_tap

    def active(self) -> bool:
        return bool(self.callbacks) or bool(self.transforms) or bool(self.saved)


# --------------------------------------------------------------------------------------------------
# One context per model
# --------------------------------------------------------------------------------------------------
#: The language model (decoder) of every model a capture or reduction is active on → what holds it.
_ACTIVE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def claim(adapted: AdaptedModel, what: str) -> None:
    """Mark ``adapted``'s model as held by ``what`` (``"a capture"`` | ``"a reduction"``), or refuse if a context
    already holds it: two contexts on one model would tap and cut its blocks twice.

    Raises:
        InputError: a context is already active on the model.
    """
    holder = _ACTIVE.get(adapted.decoder)
    if holder is not None:
        raise InputError(
            f"{holder} is already active on this model, so {what} cannot start inside it: one capture() or reduce() "
            "per model at a time. A reduction records the scores that chose its cuts (Reduction.scores); to capture "
            "full-token scores, run capture() outside the reduce() context"
        )
    _ACTIVE[adapted.decoder] = what


def release(adapted: AdaptedModel) -> None:
    """Undo :func:`claim` (a no-op when the model is not held)."""
    _ACTIVE.pop(adapted.decoder, None)


def _eager_function(module: nn.Module) -> Callable:
    """The eager attention function of the module's own modeling file."""
    fn = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if fn is None:
        raise RuntimeError(f"{type(module).__name__}'s module defines no eager_attention_forward")
    return fn


ATTENTION_DISPATCH = _AttentionDispatch()


# --------------------------------------------------------------------------------------------------
# Input validation and position resolution
# --------------------------------------------------------------------------------------------------
def as_bool_mask(mask, name: str) -> torch.Tensor:
    """Validate a ``(batch, seq)`` mask and return it as a bool tensor (0/1 integers are accepted)."""
    if not isinstance(mask, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor of shape (batch, seq_len), got {type(mask).__name__}")
    if mask.dim() == 1:
        raise InputError(f"{name} has shape {tuple(mask.shape)}; add the batch dimension: {name}[None]")
    if mask.dim() != 2:
        raise InputError(f"{name} must have shape (batch, seq_len), got {tuple(mask.shape)}")
    if mask.dtype == torch.bool:
        return mask
    if mask.dtype.is_floating_point or mask.dtype.is_complex:
        raise InputError(f"{name} must be a bool tensor (True marks a token), got dtype {mask.dtype}; use mask.bool()")
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise InputError(f"{name} holds values other than 0 and 1; pass a bool tensor")
    return mask.bool()


@dataclass
class Positions:
    """Resolved positions of one scoring forward.

    Shapes: ``q_index (b, Q)`` query rows (ragged samples padded by repeating their last row),
    ``q_valid (b, Q)`` bool, ``v_index (b, V)`` visual positions in increasing order.
    """

    q_index: torch.Tensor
    q_valid: torch.Tensor
    v_index: torch.Tensor

    def to(self, device) -> Positions:
        """The positions on ``device`` (blocks may sit on different devices under a device map)."""
        if self.q_index.device == torch.device(device):
            return self
        return Positions(self.q_index.to(device), self.q_valid.to(device), self.v_index.to(device))


def resolve_positions(
    visual_mask: torch.Tensor,
    padding_mask: torch.Tensor | None = None,
    query_mask: torch.Tensor | None = None,
    query: str = "after_visual",
) -> Positions:
    """Query and visual positions for each sample.

    Args:
        visual_mask: ``(b, T)`` bool, the visual tokens.
        padding_mask: ``(b, T)`` the model's 2-D attention mask (1 = real token), or ``None``.
        query_mask: ``(b, T)`` bool explicit query tokens; overrides ``query``.
        query: ``"after_visual"`` (text tokens after the last visual token), ``"last"`` (the last
            real token), or ``"all_text"`` (every real non-visual token).
    """
    b, T = visual_mask.shape
    real = torch.ones_like(visual_mask) if padding_mask is None else padding_mask.to(visual_mask.device).bool()
    if real.shape != visual_mask.shape:
        raise InputError(f"attention_mask has shape {tuple(real.shape)} but visual_mask has {tuple(visual_mask.shape)}")
    if bool((visual_mask & ~real).any()):
        raise InputError("visual_mask marks padding positions (attention_mask == 0) as visual tokens")
    counts = visual_mask.sum(dim=1)
    if bool((counts != counts[0]).any()):
        raise InputError(
            f"samples have different numbers of visual tokens ({counts.tolist()}); a batch must share one "
            "count (pad videos to the same number of frames, or score samples one at a time)"
        )
    text = real & ~visual_mask
    pos = torch.arange(T, device=visual_mask.device).expand(b, T)
    if query_mask is not None:
        is_query = as_bool_mask(query_mask, "query_mask").to(visual_mask.device)
        if is_query.shape != visual_mask.shape:
            raise InputError(
                f"query_mask has shape {tuple(is_query.shape)} but visual_mask has {tuple(visual_mask.shape)}"
            )
        if bool((is_query & visual_mask).any()):
            raise InputError("query_mask overlaps visual_mask: query tokens must be text tokens")
        is_query = is_query & real
        hint = "query_mask marks no real (non-padding) token"
    elif query == "after_visual":
        last_visual = torch.where(visual_mask, pos, torch.full_like(pos, -1)).amax(dim=1, keepdim=True)
        is_query = text & (pos > last_visual)
        hint = "there is no text token after the last visual token; use query='last' or 'all_text', or pass query_mask"
    elif query == "last":
        last_real = torch.where(real, pos, torch.full_like(pos, -1)).amax(dim=1, keepdim=True)
        is_query = pos == last_real
        if bool((is_query & visual_mask).any()):
            raise InputError("query='last' picks a visual token (the sequence ends with one); pass a query_mask")
        hint = "the sample has no real token"
    elif query == "all_text":
        is_query = text
        hint = "there is no text token"
    else:
        raise InputError(f"query={query!r} is not one of {QUERY_MODES}")
    n_q = is_query.sum(dim=1)
    if bool((n_q == 0).any()):
        bad = (n_q == 0).nonzero().flatten().tolist()
        raise InputError(f"no query tokens in sample(s) {bad}: {hint}")
    Qmax = int(n_q.max())
    # Sort positions so that query positions come first in order; pad ragged rows with the last one.
    key = torch.where(is_query, pos, pos + T)
    order = key.sort(dim=1).values[:, :Qmax]
    q_valid = torch.arange(Qmax, device=pos.device)[None, :] < n_q[:, None]
    last = order.gather(1, (n_q - 1)[:, None])
    q_index = torch.where(q_valid, order, last) % T
    v_index = true_positions(visual_mask, int(counts[0]))
    return Positions(q_index=q_index, q_valid=q_valid, v_index=v_index)


# --------------------------------------------------------------------------------------------------
# The capture session
# --------------------------------------------------------------------------------------------------
class ScoringSession:
    """Installs the taps of one model and routes every score into a :class:`ScoreCache`.

    ``on_block_scored(block_index, scores)`` (optional) is called as soon as a block's unified
    vector is complete, inside the forward; the reduction engine builds on it.

    Args beyond the obvious:
        blocks: indices of the blocks to tap (default: every scoring block).
        mixers: which mixers score: ``("attn", "ssm")`` (unified) or ``("attn",)`` (attention only;
            a ``parallel`` block then scores by its attention part alone).
        drive: install the decoder hooks that start and stop a scoring forward. The reduction
            engine passes ``False`` and calls :meth:`start`/:meth:`stop` itself, because it also
            moves the positions as tokens are dropped.
    """

    def __init__(
        self,
        adapted: AdaptedModel,
        visual_mask: torch.Tensor,
        cache: ScoreCache,
        scorer: ScorerConfig,
        query_mask: torch.Tensor | None = None,
        query: str = "after_visual",
        attention_mask: torch.Tensor | None = None,
        on_block_scored: Callable[[int, torch.Tensor], None] | None = None,
        blocks: set[int] | None = None,
        mixers: tuple[str, ...] = ("attn", "ssm"),
        drive: bool = True,
    ) -> None:
        bad = set(mixers) - {"attn", "ssm"}
        if bad or not mixers:
            raise InputError(f"mixers must be a non-empty subset of ('attn', 'ssm'), got {mixers}")
        self.adapted = adapted
        self.visual_mask = visual_mask
        self.cache = cache
        self.scorer = scorer
        self.query_mask = query_mask
        self.query = query
        self.attention_mask = attention_mask
        self.on_block_scored = on_block_scored
        self.blocks = blocks
        self.mixers = tuple(mixers)
        self.drive = drive
        self.positions: Positions | None = None  # set while a scoring forward runs
        self.length: int | None = None  # sequence length the tapped blocks currently see
        self.seconds = 0.0  # wall time spent inside the scorers (for overhead reports)
        self.handles: list = []
        self.attn_modules: list[nn.Module] = []
        self.mixer_masks: dict[int, torch.Tensor | None] = {}
        self.pending: dict[int, dict[str, torch.Tensor]] = {}

    # -- install / remove ------------------------------------------------------------------------
    def install(self) -> None:
        try:
            decoder = self.adapted.decoder
            if self.drive:
                self.handles.append(decoder.register_forward_pre_hook(self._begin, with_kwargs=True))
                self.handles.append(decoder.register_forward_hook(self._end, always_call=True))
            impl = self.adapted.attn_implementation
            for spec in self.adapted.blocks:
                if self.blocks is not None and spec.index not in self.blocks:
                    continue
                if spec.attn is not None and "attn" in self.mixers:
                    ATTENTION_DISPATCH.add(impl, spec.attn, self._attention_callback(spec))
                    self.attn_modules.append(spec.attn)
                if spec.ssm is not None and "ssm" in self.mixers:
                    self.handles.append(spec.ssm.register_forward_pre_hook(self._mixer_pre(spec), with_kwargs=True))
                    self.handles.append(spec.ssm.in_proj.register_forward_hook(self._in_proj_hook(spec)))
        except BaseException:
            self.remove()
            raise

    def remove(self) -> None:
        impl = self.adapted.attn_implementation
        while self.handles:
            self.handles.pop().remove()
        while self.attn_modules:
            ATTENTION_DISPATCH.remove(impl, self.attn_modules.pop())
        self.stop()

    # -- scoring forwards ------------------------------------------------------------------------
    def start(self, positions: Positions, length: int) -> None:
        """Score the blocks that run from now on, over a sequence of ``length`` tokens."""
        self.positions = positions
        self.length = length
        self.pending.clear()

    def stop(self) -> None:
        self.positions = None
        self.length = None
        self.mixer_masks.clear()

    def expected_parts(self, spec: BlockSpec) -> tuple[str, ...]:
        """The mixers whose vectors make up the block's unified score."""
        have = {"attn": spec.attn is not None, "ssm": spec.ssm is not None}
        return tuple(p for p in ("attn", "ssm") if have[p] and p in self.mixers)

    # -- decoder-level hooks -------------------------------------------------------------------
    def _begin(self, module, args, kwargs):
        x = compat.first_input(args, kwargs)
        if x is None:
            return None
        b, T = x.shape[0], x.shape[1]
        has_cache, cached = compat.cache_state(kwargs)
        vb, vT = self.visual_mask.shape
        if T != vT:
            if has_cache:  # a decode step or a continuation: not a scoring forward
                self.positions = None
                return None
            raise InputError(
                f"visual_mask covers {vT} positions but the language model received {T} tokens without a cache; "
                "build the mask over the exact sequence the language model sees (after any pre-LLM token pruning). "
                + compat.unclassified_forward_hint(kwargs)
            )
        if b != vb:
            raise InputError(f"visual_mask has batch size {vb} but the forward has batch size {b}")
        if cached:
            self.stop()
            return None
        padding = self.attention_mask
        if padding is None:
            am = kwargs.get(compat.MASK_ARG)
            padding = am if isinstance(am, torch.Tensor) and am.dim() == 2 else None
        self.start(resolve_positions(self.visual_mask.to(x.device), padding, self.query_mask, self.query), T)
        return None

    def _end(self, module, args, output):
        self.stop()

    # -- per-mixer recording -------------------------------------------------------------------
    def _record(self, spec: BlockSpec, part: str, scores: torch.Tensor) -> None:
        if not bool(torch.isfinite(scores).all()):
            raise ScoreError(
                f"block {spec.index} ({spec.kind}, {part} scorer) produced non-finite importance; the model's "
                "activations overflow or the query rows see no visual token. Check the input for NaN/inf, run "
                "in float32, or use the other Mamba scorer."
            )
        scores = scores.detach()
        self.cache.record(spec.index, part, scores)
        parts = self.pending.setdefault(spec.index, {})
        parts[part] = scores
        expected = self.expected_parts(spec)
        if all(p in parts for p in expected):
            unified = torch.stack([parts[p] for p in expected]).mean(dim=0) if len(expected) > 1 else scores
            self.cache.record_unified(spec.index, unified)
            del self.pending[spec.index]
            if self.on_block_scored is not None:
                self.on_block_scored(spec.index, unified)

    def _attention_callback(self, spec: BlockSpec):
        def callback(module, query, key, attention_mask, kwargs):
            pos = self.positions
            if pos is None or query.shape[2] != self.length:
                return
            start = time.perf_counter()
            pos = pos.to(query.device)
            scaling = kwargs.get("scaling")
            if scaling is None:
                scaling = getattr(module, "scaling", query.shape[-1] ** -0.5)
            with torch.no_grad():
                rows = attention_rows(query, key, attention_mask, scaling, pos.q_index, kwargs.get("softcap"))
                if self.scorer.record_rows:
                    self.cache.record_rows(spec.index, rows.detach())
                scores = attention_importance(rows, pos.q_valid, pos.v_index, self.scorer)
            self.seconds += time.perf_counter() - start
            self._record(spec, "attn", scores)

        return callback

    def _mixer_pre(self, spec: BlockSpec):
        def hook(module, args, kwargs):
            mask = compat.mixer_padding_mask(module, args, kwargs)
            self.mixer_masks[spec.index] = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None
            return None

        return hook

    def _in_proj_hook(self, spec: BlockSpec):
        def hook(module, args, output):
            pos = self.positions
            if pos is None or output.shape[1] != self.length:
                return None
            start = time.perf_counter()
            mask = self.mixer_masks.get(spec.index)
            pos = pos.to(output.device)
            with torch.no_grad():
                scores = SSM_KINDS[spec.ssm_type].score(spec.ssm, output, mask, pos, self.scorer)
            self.seconds += time.perf_counter() - start
            self._record(spec, "ssm", scores)
            return None

        return hook


@contextmanager
def capture(
    model: nn.Module,
    visual_mask: torch.Tensor,
    query_mask: torch.Tensor | None = None,
    scorer: ScorerConfig | str | dict | None = None,
    query: str = "after_visual",
    attention_mask: torch.Tensor | None = None,
):
    """Record per-block importance of the visual tokens during the forwards run inside the context.

    Args:
        model: a supported causal LM, decoder, or vision-language wrapper (see
            :func:`hybridreduce.adapters.supported_model_types`).
        visual_mask: ``(batch, seq_len)`` bool, ``True`` at the visual tokens of the sequence the
            language model receives.
        query_mask: ``(batch, seq_len)`` bool, explicit query tokens (overrides ``query``).
        scorer: a :class:`ScorerConfig`, ``"decay_free"``/``"exact"``, a dict, or a YAML path.
        query: default query rows: ``"after_visual"`` (text after the last visual token), ``"last"``
            (the last real token) or ``"all_text"``.
        attention_mask: ``(batch, seq_len)`` padding mask; by default the one passed to the forward.

    Yields:
        A :class:`ScoreCache`, filled by each scoring forward (a later one overwrites an earlier).

    Example::

        with hybridreduce.capture(model, visual_mask) as scores:
            model(input_ids)
        scores.stack()  # (L, b, V): L scored blocks
    """
    adapted = get_adapter(model)
    cfg = ScorerConfig.parse(scorer)
    vm = as_bool_mask(visual_mask, "visual_mask")
    if query not in QUERY_MODES and query_mask is None:
        raise InputError(f"query={query!r} is not one of {QUERY_MODES}")
    if query_mask is not None:
        query_mask = as_bool_mask(query_mask, "query_mask")
    if attention_mask is not None:
        attention_mask = as_bool_mask(attention_mask, "attention_mask")
    n_visual = int(vm.sum(dim=1).max()) if vm.numel() else 0
    if n_visual == 0:
        warnings.warn("visual_mask marks no visual tokens: nothing to score, the ScoreCache stays empty", stacklevel=3)
        yield ScoreCache(adapted.kinds, torch.zeros(vm.shape[0], 0, dtype=torch.long), cfg.to_dict())
        return
    cache = ScoreCache(adapted.kinds, None, cfg.to_dict())
    # Validate the static parts of the masks now, so errors surface before any forward runs.
    resolved = resolve_positions(vm, attention_mask, query_mask, query)
    cache.reset(resolved.v_index.cpu())
    session = ScoringSession(adapted, vm, cache, cfg, query_mask, query, attention_mask)
    claim(adapted, "a capture")
    try:
        session.install()
        yield cache
    finally:
        session.remove()
        release(adapted)
