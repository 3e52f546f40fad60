"""The reduction engine: drop visual tokens between blocks while ``model(...)``/``generate`` run.

``reduce(model, schedule, visual_mask)`` is a context manager (DESIGN decisions 1, 2, 6–8). It
never edits the model; it installs

* a forward pre-hook on the decoder, which tells a *prefill* (a forward from an empty cache over
  the masked sequence: tokens are selected and dropped or merged), a *decode step* (a forward that continues
  from a cache: nothing is selected, each layer sees its own kept prompt tokens) and a *replay*
  (``context.frozen()``: no cache, the prompt plus a continuation, under the selection the cache holds: the
  no-cache reference of ``generate``) apart;
* a forward pre-hook on every block from the first prune point on. At a prune point it chooses the
  keep set and gathers the residual stream; in every such block it slices the sequence-shaped
  arguments the decoder built for the whole sequence (attention masks on both axes, Mamba padding
  masks, position ids, RoPE cos/sin, Zamba2's embedding stream) to the tokens the block carries.
  In a decode step it rebuilds each reduced attention layer's mask over its own cached keys;
* scoring taps (:class:`hybridreduce.taps.ScoringSession`) on the blocks whose scores drive a cut:
  the most recent scoring block before each prune point, or all scoring blocks since the previous
  cut when ``schedule.ema`` is set (:meth:`Plan.choosers <hybridreduce.schedule.Plan.choosers>`);
* with ``combine: merge`` and ``size_aware`` (DESIGN decision 14, :mod:`hybridreduce.merge`): a mask transform on
  every attention module after the first cut (``+log(size_j)`` on the logits of key ``j``) and a forward hook on
  the module that emits each Mamba mixer's raw steps (``Δ_j · size_j``).

What follows from running the stock layers on the shorter sequence: attention KV caches hold only
the kept tokens of each layer, Mamba conv and SSM states are those of the reduced sequence, RoPE
families see original position ids, and the model's output covers the kept tokens
(:attr:`Reduction.output_positions` maps its rows back to the input). Text tokens are never
dropped, so the last row (the next-token logits) is always there.

The pieces: :class:`Reduction` is the record the user reads (what each prefill kept and scored; the hooks write
it and never read it back); :class:`_Prefill`, :class:`_Replay`, :class:`_Cached` (with one :class:`_Kept` per
stage) and :class:`_Step` are the hooks' state (a prefill or a replay in flight; what the cache holds, each stage's
selection included; a decode step in flight); :func:`check_layout`, :func:`slice_argument`, :func:`decode_mask`,
:func:`decode_argument` and :func:`with_tail` are the pure tensor steps; :class:`_Engine` holds the hooks;
:class:`ReductionContext` installs and removes them and owns :meth:`~ReductionContext.frozen`.

Shapes use the letters of :mod:`hybridreduce.glossary`; in a decode step a block reduced by the cuts holds
``S'`` keys of the ``S`` (prompt plus generated tokens) an unreduced block holds.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from . import compat
from .adapters import AdaptedModel, get_adapter
from .cache import ScoreCache
from .compat import cache_nbytes  # noqa: F401  (public: hybridreduce.cache_nbytes)
from .errors import CompatibilityError, InputError
from .merge import add_key_bias, assign_merges, merge_rows
from .prune import gather_seq, keep_index, select_visual, true_positions
from .schedule import Plan, Schedule
from .scoring.config import ScorerConfig
from .scoring.mamba import SSM_KINDS
from .taps import ATTENTION_DISPATCH, Positions, ScoringSession, as_bool_mask, claim, release, resolve_positions


# --------------------------------------------------------------------------------------------------
# What a reduction did: a record the hooks write and the user reads (the hooks never read it back: DESIGN 16)
# --------------------------------------------------------------------------------------------------
@dataclass
class Stage:
    """The tokens carried from one prune point on (the last prefill).

    Attributes:
        point: first block of the stage (``0`` for the stage before any cut).
        n_visual: visual tokens carried.
        index: ``(b, T')`` original positions of the prompt tokens carried, increasing.
        sizes: ``(b, T')`` float, original tokens each carried token stands for (``combine: merge``), or ``None``
            (every size 1: nothing merged).
        merged: ``(removed, into)``, each ``(b, R)``: the original positions of the visual tokens the cut that starts
            the stage removed, and of the kept token each was merged into (``combine: merge``); ``None`` otherwise.
    """

    point: int
    n_visual: int
    index: torch.Tensor
    sizes: torch.Tensor | None = None
    merged: tuple[torch.Tensor, torch.Tensor] | None = None


@dataclass
class Reduction:
    """What a reduction context did; filled by every prefill that runs inside it.

    Attributes:
        schedule, plan: the schedule and its resolution for this model's depth.
        adapted: the model seen through its adapter.
        scorer: the scorer settings of the scoring blocks.
        stages: one :class:`Stage` per prune point of the last prefill (after the full-sequence
            stage 0); empty before the first prefill.
        scores: the importance that chose the keep sets in the last prefill, as a
            :class:`~hybridreduce.cache.ScoreCache` like :func:`~hybridreduce.capture` yields: ``scores[block]`` is
            ``(b, V_block)`` over the visual tokens that block carried, ``scores.positions(block)`` their original
            positions, ``scores.parts[block]`` the per-mixer vectors.
        visual_mask: ``(b, T)`` bool, the visual tokens of the last prefill's prompt.
        scoring_seconds: wall time spent in the scorers, summed over the prefills (on CUDA the
            kernels run asynchronously, so this is a lower bound unless the caller synchronises).
        merging_seconds: wall time spent merging at the cuts (``combine: merge``: choosing where each removed token
            goes and forming the size-weighted rows), summed over the prefills; 0 when dropping. The size-aware
            work inside the blocks (the attention bias, the Mamba step rewrite) is not in it. A lower bound on
            CUDA, like ``scoring_seconds``.
        prefills, decode_steps: how many forwards of each kind ran.
    """

    schedule: Schedule
    plan: Plan
    adapted: AdaptedModel = field(repr=False)
    scorer: ScorerConfig
    scores: ScoreCache = field(repr=False)
    stages: list[Stage] = field(default_factory=list)
    visual_mask: torch.Tensor | None = field(default=None, repr=False)
    scoring_seconds: float = 0.0
    merging_seconds: float = 0.0
    prefills: int = 0
    decode_steps: int = 0

    def _stage_of(self, block: int) -> Stage:
        if not self.stages:
            raise InputError("no prefill has run under this reduction yet: run model(...) or generate inside it")
        if not 0 <= block < self.plan.num_blocks:
            raise InputError(f"block {block} is outside the model (0..{self.plan.num_blocks - 1})")
        return self.stages[self.plan.stage_of(block)]

    def block_index(self, block: int) -> torch.Tensor:
        """``(b, T')`` original positions of the prompt tokens that ``block`` carries."""
        return self._stage_of(block).index

    @property
    def block_tokens(self) -> list[int]:
        """Prompt tokens each block carried in the last prefill."""
        return [self._stage_of(i).index.shape[1] for i in range(self.plan.num_blocks)]

    @property
    def block_visual(self) -> list[int]:
        """Visual tokens each block carried in the last prefill."""
        return [self._stage_of(i).n_visual for i in range(self.plan.num_blocks)]

    @property
    def kept_positions(self) -> dict[int, torch.Tensor]:
        """Prune point → ``(b, k)`` original positions of the visual tokens kept from there on."""
        out = {}
        for s in self.stages[1:]:
            is_visual = self.visual_mask.to(s.index.device).gather(1, s.index)
            out[s.point] = s.index[is_visual].view(s.index.shape[0], s.n_visual)
        return out

    @property
    def output_positions(self) -> torch.Tensor:
        """``(b, T')`` original positions of the rows of the model's output (the last block's tokens) in the last
        prefill."""
        return self._stage_of(self.plan.num_blocks - 1).index

    @property
    def average_keep(self) -> float:
        """Achieved mean fraction of visual tokens carried per block in the last prefill."""
        counts = self.block_visual
        return sum(counts) / (len(counts) * max(1, self.stages[0].n_visual))

    def summary(self) -> dict:
        """A JSON-ready description of the last prefill."""
        return {
            "schedule": self.schedule.to_dict(),
            "prune_points": list(self.plan.prune_points),
            "ratios": list(self.plan.ratios),
            "n_visual": self.stages[0].n_visual if self.stages else None,
            "block_visual": self.block_visual if self.stages else None,
            "average_keep": self.average_keep if self.stages else None,
            "scoring_seconds": self.scoring_seconds,
            "merging_seconds": self.merging_seconds,
            "prefills": self.prefills,
            "decode_steps": self.decode_steps,
        }


# --------------------------------------------------------------------------------------------------
# The hooks' state: one record per forward in flight, and the cache's own record of each stage's selection
# --------------------------------------------------------------------------------------------------
@dataclass
class _Kept:
    """One stage's selection as the cache holds it: written by the prefill's cut, read by replay and decode.

    Attributes:
        index: ``(b, T')`` original positions of the prompt tokens the stage carries, increasing.
        n_visual: visual tokens among them.
        sizes: ``(b, T')`` float32, original tokens each carried token stands for, or ``None`` (all 1).
        removed, target: ``(b, R)`` the merges of the cut that starts the stage (indices into the previous stage's
            tokens, and into this stage's; :func:`~hybridreduce.merge.assign_merges`), or ``None`` (dropped).
    """

    index: torch.Tensor
    n_visual: int
    sizes: torch.Tensor | None = None
    removed: torch.Tensor | None = None
    target: torch.Tensor | None = None


@dataclass
class _Forward:
    """A forward over a whole sequence (no cache) in flight: built by the decoder's pre-hook, dropped by its
    post-hook.

    Attributes:
        T: tokens the decoder received.
        index: ``(b, T')`` positions in this forward's sequence of the tokens the current block carries, increasing.
        sizes: ``(b, T')`` float32 sizes of those tokens, or ``None`` (all 1).
        bias: ``(b, T')`` ``log(sizes)`` for size-aware attention, or ``None`` (no token has a size above 1, or the
            schedule is not size-aware).
        memo: ``(id(argument), stage)`` → the argument sliced to the stage's tokens (``id`` stays unique because
            the memo also holds the argument).
    """

    T: int
    index: torch.Tensor
    sizes: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    memo: dict = field(default_factory=dict)


@dataclass
class _Prefill(_Forward):
    """A forward from an empty cache over the prompt: it chooses each cut's keep set.

    Attributes:
        visual: ``(b, T')`` bool, which carried tokens are visual.
        frames: ``(b, T')`` long frame of each carried token, or ``None`` (merge scopes ``frame``/``window``).
        positions: query and visual positions of the whole prompt.
        counts: visual tokens kept at each cut.
        generator: the random method's generator, seeded from the schedule at every prefill.
        latest: ``(b, n_visual)`` importance of the most recent scored block, over the carried visual tokens.
        ema: the running average of the scores since the last cut (``schedule.ema``).
        kept: the selection of every stage so far (stage 0: the whole prompt); the cache's once the prefill ends.
    """

    visual: torch.Tensor | None = None
    frames: torch.Tensor | None = None
    positions: Positions | None = None
    counts: list[int] = field(default_factory=list)
    generator: torch.Generator | None = None
    latest: torch.Tensor | None = None
    ema: torch.Tensor | None = None
    kept: list[_Kept] = field(default_factory=list)


@dataclass
class _Replay(_Forward):
    """A no-cache forward over the last prefill's prompt plus a continuation (``ReductionContext.frozen``): it
    replays the cached selection (keep sets, merges, sizes) and records nothing.

    Attributes:
        prompt: length ``T0`` of the prefill's prompt (the tokens after it are never dropped).
        kept: the cached selection of every stage.
    """

    prompt: int = 0
    kept: list[_Kept] = field(default_factory=list)


@dataclass
class _Cached:
    """What the cache holds after a prefill under this context: set when the prefill ends, advanced by every step.

    Attributes:
        batch: the prefill's batch size.
        seen: prompt + generated tokens in the cache.
        prompt: the prefill's prompt length ``T0``.
        kept: the selection of every stage (stage 0: the whole prompt). Replay and decode read this, never the
            user-facing :class:`Reduction` record.
    """

    batch: int
    seen: int
    prompt: int
    kept: list[_Kept]


@dataclass
class _Step:
    """A decode step in flight (``q`` new tokens over ``S = seen + q`` keys).

    Attributes:
        padding: ``(b, S)`` bool key padding passed by the caller, or ``None``.
        memo: per stage, the block's keys, its rebuilt mask and its key bias (shared by the blocks of a stage).
    """

    q: int
    S: int
    padding: torch.Tensor | None
    memo: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# Slicing the sequence-shaped block arguments the adapter declares (FamilyAdapter.sequence_args)
# --------------------------------------------------------------------------------------------------
def check_layout(name: str, value, kind: str, T: int, block: nn.Module, model_type: str) -> None:
    """Raise :class:`CompatibilityError` unless the declared argument ``name`` is laid out over the ``T`` tokens.

    ``kind="mask"``: ``(b, T)`` or ``(b|1, h|1, T, T)``; ``kind="tokens"``: ``(b|1, T, ...)``."""
    shape = tuple(value.shape) if isinstance(value, torch.Tensor) else None
    if kind == "mask":
        fits = shape is not None and ((len(shape) == 2 and shape[1] == T) or (len(shape) == 4 and shape[-2:] == (T, T)))
        expected = f"(b, {T}) or (b|1, h|1, {T}, {T})"
    else:
        fits = shape is not None and len(shape) >= 2 and shape[1] == T
        expected = f"(b|1, {T}, ...)"
    if not fits:
        raise CompatibilityError(
            f"{type(block).__name__} received {name!r} with shape {shape or type(value).__name__}; the "
            f"{model_type} adapter declares it a {kind} argument of shape {expected} over the "
            f"{T}-token sequence. transformers {compat.VERSION} lays it out differently from the tested releases "
            f"({', '.join(compat.TESTED_VERSIONS)}): run scripts/check_transformers.sh {compat.VERSION}"
        )


def slice_argument(value: torch.Tensor, index: torch.Tensor, T: int) -> torch.Tensor:
    """A declared argument over ``T`` tokens, restricted to the carried tokens ``index`` (``(b, T')``): every axis
    of length ``T`` from axis 1 on (both axes of a 4-D mask) is gathered (:func:`~hybridreduce.prune.gather_seq`)."""
    return gather_seq(value, index, T)


def decode_mask(keys: torch.Tensor, q: int, padding: torch.Tensor | None, dtype: torch.dtype, device) -> torch.Tensor:
    """``(b, 1, q, S')`` mask of a decode step over a block's own ``S'`` keys: key padding, causal among the new
    tokens.

    Args:
        keys: ``(b, S')`` original positions of the keys the block's cache holds (kept prompt tokens, then the
            generated ones); the last ``q`` are this step's tokens.
        q: tokens in the step.
        padding: ``(b, S)`` bool padding over all original positions, or ``None`` (no padding).
        dtype: ``torch.bool`` (``True`` = attend) or a float dtype (0 / the dtype's minimum).
    """
    b, K = keys.shape
    keys = keys.to(device)
    pad = (
        padding.to(device).gather(1, keys) if padding is not None else torch.ones(b, K, dtype=torch.bool, device=device)
    )
    causal = torch.arange(K, device=device)[None, :] <= (K - q + torch.arange(q, device=device))[:, None]
    allowed = pad[:, None, None, :] & causal[None, None]
    if dtype == torch.bool:
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)


def decode_argument(
    name: str,
    value,
    kind: str,
    keys: torch.Tensor,
    q: int,
    S: int,
    padding: torch.Tensor | None,
    block: nn.Module,
):
    """A declared block argument of a decode step, for a block whose cache holds the keys ``keys``.

    A mask over all ``S`` keys (or built over the cache's reduced length) becomes one over the block's own ``S'``
    keys; the rest (positions and RoPE tables of the new tokens, a Mamba mixer's padding of the new tokens, no
    mask) is the new tokens' and comes back as it is.

    Args:
        name, kind: the argument's name and its declared kind (``"tokens"`` | ``"mask"``).
        value: what the decoder passed.
        keys: ``(b, S')`` original positions of the keys the block's cache holds (:func:`with_tail`).
        q, S: tokens in the step, and keys an unreduced block holds (prompt plus generated).
        padding: ``(b, S)`` bool key padding, or ``None``.
        block: for the error of an unknown layout.

    Raises:
        CompatibilityError: a mask of a layout the tested transformers releases do not build.
    """
    if kind != "mask" or not isinstance(value, torch.Tensor):
        return value
    if value.dim() == 4 and value.shape[-2] == q:  # built over the cache's (reduced) length: rebuilt here
        return decode_mask(keys, q, padding, value.dtype, value.device)
    if value.dim() == 2 and value.shape[1] == S:  # 2-D key padding (flash attention)
        return value.gather(1, keys.to(value.device))
    if value.dim() == 2 and value.shape[1] == q:  # a Mamba mixer's padding of the new tokens
        return value
    raise CompatibilityError(
        f"{type(block).__name__} received the mask {name!r} with shape {tuple(value.shape)} in a decode step of "
        f"{q} token(s) over {S} keys; expected (b|1, h|1, {q}, keys), (b, {S}) or (b, {q}). transformers "
        f"{compat.VERSION} may build decode masks differently from the tested releases "
        f"({', '.join(compat.TESTED_VERSIONS)}): run scripts/check_transformers.sh {compat.VERSION}"
    )


def with_tail(prompt_index: torch.Tensor, T0: int, T: int) -> torch.Tensor:
    """``(b, T' + T - T0)``: the carried prompt positions ``prompt_index`` (``(b, T')``) followed by the positions
    ``T0 .. T-1`` of the tokens after the ``T0``-token prompt (generated tokens are never dropped)."""
    if T == T0:
        return prompt_index
    tail = torch.arange(T0, T, device=prompt_index.device).expand(prompt_index.shape[0], T - T0)
    return torch.cat([prompt_index, tail], dim=1)


#: Block kinds without an attention mixer (:data:`~hybridreduce.adapters.base.BLOCK_KINDS`): their decode steps
#: need nothing from the engine.
KEYLESS_KINDS = ("ssm", "mlp", "moe")


# --------------------------------------------------------------------------------------------------
# The hooks
# --------------------------------------------------------------------------------------------------
class _Engine:
    """Hooks of one reduction context (see the module docstring); their state is :attr:`forward` (a prefill or a
    replay in flight), :attr:`step` (a decode step in flight) and :attr:`cached` (what the cache holds, each stage's
    selection included). They write what happened into the :class:`Reduction` record and never read it back."""

    def __init__(
        self,
        adapted: AdaptedModel,
        result: Reduction,
        visual_mask: torch.Tensor | None,
        query_mask: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        visual_mask_of: Callable[[torch.Tensor], torch.Tensor] | None = None,
        visual_frames: torch.Tensor | None = None,
        visual_frames_of: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.adapted = adapted
        self.result = result
        self.schedule = result.schedule
        self.plan = result.plan
        self.combination = result.schedule.combination
        self.visual_mask = visual_mask  # (b, T); read from the model at each prefill when visual_mask_of is set
        self.visual_mask_of = visual_mask_of
        self.visual_frames = visual_frames  # (b, T) long, for the merge scopes frame / window
        self.visual_frames_of = visual_frames_of
        self.query_mask = query_mask
        self.attention_mask = attention_mask
        self.cuts = set(self.plan.prune_points)
        self.first = self.plan.prune_points[0] if self.plan.prune_points else None
        self.rope = any(spec.rope for spec in adapted.blocks)
        self.sequence_args = adapted.family.sequence_args  # name -> "tokens" | "mask"
        # Size-aware blocks (DESIGN decision 14) need hooks only when cuts merge.
        self.size_aware = self.combination.merges and self.combination.size_aware and self.first is not None
        self.handles: list = []
        self.transformed: list[nn.Module] = []  # attention modules given the size bias
        self.session: ScoringSession | None = None
        self.freeze = False  # set by ReductionContext.frozen(): cacheless forwards replay the last selection
        self.forward: _Forward | None = None
        self.step: _Step | None = None
        self.cached: _Cached | None = None
        self.block_stage = 0  # stage of the block running now (its hook sets it; 0 before the first cut)

    # -- install / remove ------------------------------------------------------------------------
    def install(self) -> None:
        claim(self.adapted, "a reduction")
        try:
            decoder = self.adapted.decoder
            if self.visual_mask_of is not None:
                root = self.adapted.model
                self.handles.append(root.register_forward_pre_hook(self._read_visual_mask, with_kwargs=True))
            self.handles.append(decoder.register_forward_pre_hook(self._begin, with_kwargs=True))
            self.handles.append(decoder.register_forward_hook(self._end, always_call=True))
            if self.first is None:
                return
            for spec in self.adapted.blocks[self.first :]:
                self.handles.append(
                    spec.module.register_forward_pre_hook(self._block_hook(spec.index), with_kwargs=True)
                )
            if self.size_aware:
                self._install_size_aware()
            blocks = scoring_blocks(self.adapted, self.schedule, self.plan)
            if blocks:
                self.session = ScoringSession(
                    self.adapted,
                    self.visual_mask,
                    self.result.scores,
                    self.result.scorer,
                    on_block_scored=self._on_scored,
                    blocks=blocks,
                    mixers=_mixers(self.schedule),
                    drive=False,
                )
                self.session.install()
        except BaseException:
            self.remove()
            raise

    def _install_size_aware(self) -> None:
        """The size bias of the attention blocks and the step scaling of the Mamba blocks after the first cut.

        The step hooks go in before the scoring taps: a Mamba-2 block's importance is read from the ``in_proj``
        output after its steps are scaled, so a merged token scores as its copies would."""
        impl = self.adapted.attn_implementation
        if impl.startswith("flash"):
            raise InputError(
                f"size-aware merging adds log(size) to the attention logits, which {impl} cannot take; load the "
                "model with attn_implementation='sdpa' or 'eager', or set size_aware: false in the schedule"
            )
        seen: set[int] = set()
        unscaled: list[int] = []
        for spec in self.adapted.blocks[self.first :]:
            if spec.attn is not None and id(spec.attn) not in seen:  # Zamba2 shares one attention module
                seen.add(id(spec.attn))
                ATTENTION_DISPATCH.add_mask_transform(impl, spec.attn, self._key_bias_mask)
                self.transformed.append(spec.attn)
            if spec.ssm is not None:
                ssm_kind = SSM_KINDS[spec.ssm_type]
                if ssm_kind.step_module is None:
                    unscaled.append(spec.index)
                    continue
                hook = self._step_hook(spec.ssm, ssm_kind)
                self.handles.append(ssm_kind.step_module(spec.ssm).register_forward_hook(hook))
        if unscaled:
            warnings.warn(
                f"size-aware merging cannot scale the steps of the {self.adapted.model_type} Mamba blocks "
                f"{unscaled} (their kind emits no step channels to rewrite: hybridreduce.scoring.mamba.SsmKind); "
                "their merged tokens act with size 1, the attention blocks see the sizes",
                stacklevel=4,
            )

    def remove(self) -> None:
        try:
            while self.handles:
                self.handles.pop().remove()
            impl = self.adapted.attn_implementation
            while self.transformed:
                ATTENTION_DISPATCH.remove_mask_transform(impl, self.transformed.pop())
            if self.session is not None:
                self.session.remove()
                self.session = None
            self._end_forward()
        finally:
            release(self.adapted)

    def _end_forward(self) -> None:
        self.forward = self.step = None
        if self.session is not None:
            self.session.stop()

    # -- root hook (visual mask from the model) -----------------------------------------------
    def _read_visual_mask(self, module, args, kwargs):
        """Before a prefill of the whole model: the visual mask (and frames) of its input ids, by the model's
        own rule."""
        if compat.cache_state(kwargs)[1] or self.freeze:
            return None  # decode steps and replays reuse the prefill's selection
        ids = args[0] if args and isinstance(args[0], torch.Tensor) else kwargs.get("input_ids")
        if ids is None:
            raise InputError(
                "reduce() was not given visual_mask and this forward has no input_ids to read it from "
                "(inputs_embeds only): pass visual_mask=... to reduce()"
            )
        self.visual_mask = as_bool_mask(self.visual_mask_of(ids), "the model's visual_mask(input_ids)")
        if self.visual_frames_of is not None:
            self.visual_frames = self.visual_frames_of(ids)
        return None

    # -- decoder hooks: which kind of forward this is ------------------------------------------
    def _begin(self, module, args, kwargs):
        x = compat.first_input(args, kwargs)
        if x is None:
            return None
        b, T = x.shape[0], x.shape[1]
        self.block_stage = 0
        am = kwargs.get(compat.MASK_ARG)
        if isinstance(am, dict):
            raise InputError(
                "the model received precomputed per-layer masks (a compiled/static cache): reduction needs the "
                "dynamic cache of plain generate; drop cache_implementation='static'"
            )
        if compat.cache_state(kwargs)[1]:
            return self._begin_step(b, T, am, args, kwargs)
        self.forward = self._begin_replay(b, T) if self.freeze else self._begin_prefill(x, b, T, am, kwargs)
        return None

    def _begin_prefill(self, x, b: int, T: int, am, kwargs: dict) -> _Prefill:
        if self.visual_mask is None:
            raise InputError(
                "reduce() was not given visual_mask and the language model ran without the wrapper's forward (which "
                "reads it from input_ids): call the model itself, or pass visual_mask=... to reduce()"
            )
        vb, vT = self.visual_mask.shape
        if T != vT:
            raise InputError(
                f"visual_mask covers {vT} positions but the language model received {T} tokens without a cache. "
                "Build the mask over the exact prompt the language model sees; to run the prompt plus a continuation "
                "under the last selection (the no-cache reference of generate), use `with context.frozen():` on the "
                "context reduce() returned. " + compat.unclassified_forward_hint(kwargs)
            )
        if b != vb:
            raise InputError(
                f"visual_mask has batch size {vb} but the forward has batch size {b} (generate's num_beams and "
                "num_return_sequences repeat each prompt; reduction supports neither: use greedy or sampled decoding "
                "with one sequence per prompt)"
            )
        padding = self.attention_mask
        if padding is None and isinstance(am, torch.Tensor) and am.dim() == 2:
            padding = am
        vm = self.visual_mask.to(x.device)
        positions = resolve_positions(vm, padding, self.query_mask, self.schedule.query)
        n_visual = positions.v_index.shape[1]
        index = torch.arange(T, device=x.device).expand(b, T)
        state = _Prefill(
            T=T,
            index=index,
            visual=vm,
            frames=self._frames(b, T, x.device),
            positions=positions,
            counts=self.plan.stage_counts(n_visual),
            generator=torch.Generator().manual_seed(self.schedule.seed),
            kept=[_Kept(index, n_visual)],
        )
        self.cached = None  # a new prompt: the previous prefill's cache is not continued under this selection
        result = self.result
        result.stages = [Stage(0, n_visual, index)]
        result.visual_mask = vm
        result.scores.reset(positions.v_index)
        if self.session is not None:
            self.session.start(positions, T)
        return state

    def _frames(self, b: int, T: int, device) -> torch.Tensor | None:
        """``(b, T)`` long frame of every token, when the merge scope needs it (checked here, before any block)."""
        if not self.combination.merges or self.combination.merge_scope == "all":
            return None
        frames = self.visual_frames
        if frames is None:
            raise InputError(
                f"merge_scope {self.combination.merge_scope!r} needs the frame of every visual token: pass "
                "visual_frames=(batch, seq_len) frame indices to reduce(), or use merge_scope: all"
            )
        if not isinstance(frames, torch.Tensor) or tuple(frames.shape) != (b, T) or frames.is_floating_point():
            shown = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
            raise InputError(f"visual_frames must be an integer tensor of shape ({b}, {T}), got {shown}")
        return frames.to(device)

    def _begin_replay(self, b: int, T: int) -> _Replay:
        cached = self.cached  # ReductionContext.frozen() refuses to replay before a prefill
        if cached is None:
            raise InputError("no selection to replay: the last prefill under this context did not finish")
        T0 = cached.prompt
        if b != cached.batch:
            raise InputError(f"the frozen selection was made for batch size {cached.batch}, this forward has {b}")
        if T < T0:
            raise InputError(f"a frozen forward must start with the {T0}-token prompt of the prefill, got {T} tokens")
        index = with_tail(cached.kept[0].index, T0, T)
        return _Replay(T=T, index=index, prompt=T0, kept=cached.kept)

    def _begin_step(self, b: int, T: int, am, args, kwargs):
        if self.cached is None:
            raise InputError(
                "a forward continued from a cache that was not filled under this reduction; start generate (or the "
                "prefill) inside the `reduce` context"
            )
        if b != self.cached.batch:
            raise InputError(
                f"the prefill under this reduction had batch size {self.cached.batch}, this decode step has {b}: "
                "generate must keep the prefill's batch (num_beams and num_return_sequences > 1 expand it; not "
                "supported)"
            )
        S = self.cached.seen + T
        padding = None
        if isinstance(am, torch.Tensor) and am.dim() == 2:
            if am.shape[1] != S:
                raise InputError(
                    f"attention_mask covers {am.shape[1]} tokens, but the cache holds {self.cached.seen} prompt and "
                    f"generated tokens and this step adds {T}"
                )
            padding = am.bool()
        self.step = _Step(q=T, S=S, padding=padding)
        if self.rope and kwargs.get(compat.POSITION_ARG) is None:
            # The decoder would count positions from its cache's length, which is the reduced one.
            kwargs = dict(kwargs)
            kwargs[compat.POSITION_ARG] = (torch.arange(T, device=_device(args, kwargs)) + self.cached.seen)[None]
            return args, kwargs
        return None

    def _end(self, module, args, output):
        forward, step = self.forward, self.step
        if isinstance(forward, _Prefill):
            self.cached = _Cached(batch=forward.index.shape[0], seen=forward.T, prompt=forward.T, kept=forward.kept)
            self.result.prefills += 1
            if self.session is not None:
                self.result.scoring_seconds = self.session.seconds
        elif step is not None:
            self.cached.seen = step.S
            self.result.decode_steps += 1
        self._end_forward()

    # -- block hooks -----------------------------------------------------------------------------
    def _block_hook(self, block: int):
        stage = self.plan.stage_of(block)
        # A block without attention holds no keys in the cache: a decode step gives it the stock arguments of the new
        # tokens (its Mamba state or its MLP input does not depend on what was dropped), so its hook returns at once.
        # It runs for every block and step, and at 2k tokens it cost about as much as the smaller KV saved.
        keyless = self.adapted.kinds[block] in KEYLESS_KINDS

        def hook(module, args, kwargs):
            self.block_stage = stage
            if self.step is not None:
                return None if keyless else self._decode_block(self.step, stage, module, args, kwargs)
            forward = self.forward
            if forward is None:
                return None
            names = compat.positional_names(module, len(args))
            args = list(args)
            if block in self.cuts:
                self._cut(forward, block, stage, args, kwargs)
            args[1:] = [
                self._slice(forward, name, a, stage, module) for name, a in zip(names[1:], args[1:], strict=True)
            ]
            kwargs = {
                k: (v if k == "hidden_states" else self._slice(forward, k, v, stage, module)) for k, v in kwargs.items()
            }
            return tuple(args), kwargs

        return hook

    def _slice(self, forward: _Forward, name: str, value, stage: int, block: nn.Module):
        """Block argument ``name`` restricted to the tokens of ``stage`` (memoised per tensor and stage).

        Only the arguments the adapter declares (:attr:`FamilyAdapter.sequence_args`) are sliced; an undeclared
        tensor of sequence length raises (:func:`compat.check_undeclared`)."""
        kind = self.sequence_args.get(name)
        if kind is None:
            mode = "frozen" if isinstance(forward, _Replay) else "prefill"
            compat.check_undeclared(name, value, forward.T, block, self.adapted.model_type, mode)
            return value
        if value is None:
            return None
        if isinstance(value, tuple):
            return tuple(self._slice(forward, name, v, stage, block) for v in value)
        check_layout(name, value, kind, forward.T, block, self.adapted.model_type)
        memo_key = (id(value), stage)
        hit = forward.memo.get(memo_key)
        if hit is None:
            hit = forward.memo[memo_key] = (value, slice_argument(value, forward.index, forward.T))
        return hit[1]

    def _cut(self, forward: _Forward, block: int, stage: int, args: list, kwargs: dict) -> None:
        """Choose the keep set at prune point ``block`` (prefill) or replay the cached one; gather, or merge, the
        stream."""
        key = "hidden_states" if "hidden_states" in kwargs else None
        h = kwargs[key] if key else args[0]
        if isinstance(forward, _Replay):
            kept = forward.kept[stage]
            new = with_tail(kept.index, forward.prompt, forward.T)
            keep = torch.searchsorted(forward.index.contiguous(), new.to(forward.index.device))
        else:
            kept, keep = self._choose(forward, block, stage, h)
            new = kept.index
        if kept.removed is not None:  # tail tokens (a replay's continuation) never merge
            start = time.perf_counter()
            h, sizes = merge_rows(h, keep, kept.removed, kept.target, forward.sizes)
            if isinstance(forward, _Prefill):
                self.result.merging_seconds += time.perf_counter() - start
        else:
            h = gather_seq(h, keep.to(h.device), h.shape[1])
            sizes = None if forward.sizes is None else forward.sizes.gather(1, keep.to(forward.sizes.device))
        if key:
            kwargs[key] = h
        else:
            args[0] = h
        if isinstance(forward, _Prefill):
            kept.sizes = sizes
            merged = None
            if kept.removed is not None:
                merged = (forward.index.gather(1, kept.removed), new.gather(1, kept.target))
            self.result.stages.append(Stage(block, kept.n_visual, new, sizes, merged))
        forward.index = new
        forward.sizes = sizes
        forward.bias = sizes.log() if self.size_aware and sizes is not None and bool((sizes > 1).any()) else None

    def _choose(self, forward: _Prefill, block: int, stage: int, hidden: torch.Tensor) -> tuple[_Kept, torch.Tensor]:
        """The stage that starts at prune point ``block``: every text token and the ``k`` visual tokens the
        schedule's selector picks (top-k of the scores, or the random / uniform rule), and with ``combine: merge``
        where each removed visual token goes. Returns it and ``(b, T')`` the kept tokens' indices into the current
        ones."""
        k = forward.counts[stage - 1]
        b, V = forward.visual.shape[0], int(forward.visual[0].sum())
        how = self.schedule.selector.pick  # "topk" | "random" | "uniform"
        if how == "topk":
            scores = forward.ema if (self.schedule.ema is not None and forward.ema is not None) else forward.latest
            if scores is None:  # excluded by scoring_blocks(); a guard against future edits
                raise InputError(f"no score is available for the cut before block {block}")
            chosen = select_visual(scores, k, "topk")
        else:
            chosen = select_visual(None, k, how, n_visual=V, generator=forward.generator, batch=b)
        chosen = chosen.to(forward.index.device)
        keep = keep_index(forward.visual, chosen)  # (b, T') into the current tokens
        removed = target = None
        if self.combination.merges:
            c = self.combination
            start = time.perf_counter()
            removed, target = assign_merges(hidden, forward.visual, keep, forward.frames, c.merge_scope, c.merge_window)
            self.result.merging_seconds += time.perf_counter() - start
        new = forward.index.gather(1, keep)
        forward.visual = forward.visual.gather(1, keep)
        if forward.frames is not None:
            forward.frames = forward.frames.gather(1, keep)
        if forward.latest is not None:
            forward.latest = forward.latest.gather(1, chosen.to(forward.latest.device))
        forward.ema = None
        if self.session is not None:
            self.session.start(self._positions(forward, new), new.shape[1])
        kept = _Kept(new, k, removed=removed, target=target)
        forward.kept.append(kept)
        return kept, keep

    def _positions(self, forward: _Prefill, index: torch.Tensor) -> Positions:
        """Query and visual positions of the prompt, moved to the reduced sequence ``index``."""
        full = forward.positions.to(index.device)
        q_index = torch.searchsorted(index.contiguous(), full.q_index)
        v_index = true_positions(forward.visual, int(forward.visual[0].sum()))
        return Positions(q_index=q_index, q_valid=full.q_valid, v_index=v_index)

    def _on_scored(self, block: int, scores: torch.Tensor) -> None:
        """A scoring block's ``(b, n_visual)`` importance (the session wrote it into ``result.scores``)."""
        forward = self.forward
        if not isinstance(forward, _Prefill):
            return
        if forward.index.shape[1] < forward.T:  # after a cut: the columns are a subset of the prompt's visual tokens
            self.result.scores.record_positions(block, forward.index[forward.visual].view(forward.index.shape[0], -1))
        forward.latest = scores
        w = self.schedule.ema
        if w is not None:
            forward.ema = scores if forward.ema is None else w * scores + (1 - w) * forward.ema

    # -- size-aware blocks (merging) -------------------------------------------------------------
    def _key_bias_mask(self, module, query, key, mask):
        """The attention mask of a call with ``log(size_j)`` added to key ``j`` (proportional attention), or
        ``None`` where every key has size 1 (the call goes through untouched)."""
        bias = self._key_bias(key.shape[2])
        if bias is None:
            return None
        return add_key_bias(mask, bias, query.shape[2], query.dtype, causal=getattr(module, "is_causal", True))

    def _key_bias(self, S: int) -> torch.Tensor | None:
        """``(b, S)`` log sizes of the keys the running attention block holds, or ``None`` (all size 1)."""
        forward, step = self.forward, self.step
        if forward is not None:
            bias = forward.bias  # the current stage's (the block running now is in it)
        elif step is not None and self.cached is not None:
            stage = self.block_stage
            memo_key = ("bias", stage)
            if memo_key not in step.memo:
                sizes = self.cached.kept[stage].sizes
                bias = None
                if sizes is not None and bool((sizes > 1).any()):
                    tail = torch.zeros(sizes.shape[0], step.S - self.cached.prompt, device=sizes.device)
                    bias = torch.cat([sizes.log(), tail], dim=1)
                step.memo[memo_key] = bias
            bias = step.memo[memo_key]
        else:
            return None
        if bias is None:
            return None
        if bias.shape[1] != S:
            raise CompatibilityError(
                f"an attention call over {S} keys ran where the reduction carries {bias.shape[1]} tokens; "
                f"transformers {compat.VERSION} may lay out its cache differently from the tested releases "
                f"({', '.join(compat.TESTED_VERSIONS)}): run scripts/check_transformers.sh {compat.VERSION}"
            )
        return bias

    def _step_hook(self, mixer: nn.Module, ssm_kind):
        """Forward hook on the module that emits a Mamba mixer's raw steps: each token's ``Δ`` times its size."""

        def hook(module, args, output):
            forward = self.forward
            if forward is None or forward.bias is None:  # decode steps: the new tokens have size 1
                return None
            return ssm_kind.scale_steps(mixer, output, forward.sizes)

        return hook

    # -- decode steps ----------------------------------------------------------------------------
    def _decode_block(self, step: _Step, stage: int, module: nn.Module, args, kwargs):
        """Give a reduced block masks over its own cache: kept prompt tokens, then generated ones.

        Returns ``None`` (the call goes through untouched) when no argument had to change: no mask, or
        none built over the keys (the common case of SDPA without padding, whose mask is ``None``).
        """
        names = compat.positional_names(module, len(args))
        new_args = [args[0]] + [
            self._decode_value(step, name, a, stage, module) for name, a in zip(names[1:], args[1:], strict=True)
        ]
        new_kwargs = {
            k: (v if k == "hidden_states" else self._decode_value(step, k, v, stage, module)) for k, v in kwargs.items()
        }
        unchanged = all(a is b for a, b in zip(new_args, args, strict=True))
        if unchanged and all(new_kwargs[k] is v for k, v in kwargs.items()):
            return None
        return tuple(new_args), new_kwargs

    def _decode_keys(self, step: _Step, stage: int) -> torch.Tensor:
        """``(b, S')`` original positions of the keys a block of ``stage`` holds in this step (memoised per stage)."""
        memo_key = ("keys", stage)
        if memo_key not in step.memo:
            step.memo[memo_key] = with_tail(self.cached.kept[stage].index, self.cached.prompt, step.S)
        return step.memo[memo_key]

    def _decode_value(self, step: _Step, name: str, value, stage: int, block: nn.Module):
        """:func:`decode_argument` for a declared argument (memoised per tensor and stage); an undeclared tensor of
        sequence length raises."""
        kind = self.sequence_args.get(name)
        if kind is None:
            compat.check_undeclared(name, value, step.S, block, self.adapted.model_type, "decode step")
            return value
        if kind != "mask" or not isinstance(value, torch.Tensor):
            return value
        memo_key = ("arg", id(value), stage)
        if memo_key not in step.memo:
            keys = self._decode_keys(step, stage)
            step.memo[memo_key] = (value, decode_argument(name, value, kind, keys, step.q, step.S, step.padding, block))
        return step.memo[memo_key][1]


class ReductionContext:
    """The context :func:`reduce` returns: entering installs the hooks and gives the :class:`Reduction` record,
    leaving removes them. :meth:`frozen` belongs to the context, not to the record."""

    def __init__(self, engine: _Engine) -> None:
        self._engine = engine
        self.result = engine.result

    def __enter__(self) -> Reduction:
        self._engine.install()
        return self.result

    def __exit__(self, *exc) -> None:
        self._engine.remove()

    @contextmanager
    def frozen(self):
        """Run no-cache forwards over ``prompt + continuation`` under the last prefill's selection.

        Inside, a forward without a cache may be longer than the prompt: its first ``T`` tokens
        must be the prompt of the last prefill, the rest (generated tokens) are never dropped, and
        every block carries exactly the prompt tokens it carried in the prefill (merged as they were, with
        the same sizes). This is the reference that ``generate`` under reduction must equal (DESIGN decision 7).
        The selection replayed is the one the cache holds, not the :class:`Reduction` record.
        """
        if self._engine.cached is None:
            raise InputError("frozen() needs a selection: run a prefill (model(...) or generate) first")
        self._engine.freeze = True
        try:
            yield self.result
        finally:
            self._engine.freeze = False


def _device(args, kwargs):
    x = compat.first_input(args, kwargs)
    return x.device if x is not None else "cpu"


def _mixers(schedule: Schedule) -> tuple[str, ...]:
    return ("attn",) if schedule.score == "attention" else ("attn", "ssm")


def scoring_blocks(adapted: AdaptedModel, schedule: Schedule, plan: Plan) -> set[int]:
    """The blocks whose scores choose a keep set (:meth:`Plan.choosers <hybridreduce.schedule.Plan.choosers>` over
    the blocks that can score: for each cut, the most recent one before it, or with ``ema`` every one since the
    previous cut).

    Raises:
        InputError: a cut comes before any block that can score it.
    """
    if schedule.score == "none" or not plan.prune_points:
        return set()
    mixers = _mixers(schedule)
    able = [
        s.index
        for s in adapted.blocks
        if (s.attn is not None and "attn" in mixers) or (s.ssm is not None and "ssm" in mixers)
    ]
    what = "attention block" if mixers == ("attn",) else "attention or Mamba block"
    return {b for chooser in plan.choosers(able, schedule.ema is not None, what) for b in chooser}


def reduce(
    model: nn.Module,
    schedule: Schedule | str | dict = "progressive",
    visual_mask: torch.Tensor | None = None,
    scorer: ScorerConfig | str | dict | None = None,
    query_mask: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    visual_frames: torch.Tensor | None = None,
) -> ReductionContext:
    """Drop (or merge) visual tokens between the blocks of ``model`` for the forwards run inside the context.

    Args:
        model: a supported causal LM, decoder, or vision-language wrapper.
        schedule: a :class:`~hybridreduce.schedule.Schedule`, a preset name (``"progressive"``,
            ``"fastv"``, ...), a dict, or a YAML path.
        visual_mask: ``(b, T)`` bool, ``True`` at the visual tokens of the prompt the language
            model receives (after any pre-LLM pruning such as EVS). ``None``: read at every prefill from the
            model's own ``visual_mask(input_ids)`` method (the embedded :class:`~hybridreduce.toy.ToyVLM` has
            one), so one context serves prompts of any layout.
        scorer: Mamba scorer settings (``"decay_free"`` by default, or ``"exact"``).
        query_mask: ``(b, T)`` bool explicit query tokens (overrides ``schedule.query``).
        attention_mask: ``(b, T)`` padding mask of the prompt; by default the one passed to the
            forward (``generate`` passes it).
        visual_frames: ``(b, T)`` long, the frame of every visual token (read at the visual positions), for
            ``merge_scope: frame`` or ``window``; ``None``: read from the model's ``visual_frames(input_ids)``
            method where it has one (the embedded :class:`~hybridreduce.toy.ToyVLM` does).

    Returns:
        A :class:`ReductionContext`; entering it yields the :class:`Reduction` that records what each prefill kept.
        Arguments are checked here, before any hook is installed or any forward runs.

    Example::

        with hybridreduce.reduce(model, "progressive", visual_mask=vm) as red:
            out = model.generate(input_ids, max_new_tokens=16, do_sample=False)
        red.block_visual      # visual tokens carried by each block
        red.kept_positions    # prune point -> (b, k) original positions kept
        red.scores[7]         # (b, V_7) the importance that chose a keep set; red.scores.positions(7) its columns

        context = hybridreduce.reduce(model, "progressive", visual_mask=vm)
        with context as red:
            model(input_ids)                          # the prefill chooses
            with context.frozen():                    # cacheless forwards of prompt + continuation, same selection
                model(torch.cat([input_ids, continuation], dim=1))
    """
    adapted = get_adapter(model)
    sched = Schedule.load(schedule)
    plan = sched.resolve(adapted.num_blocks)
    if query_mask is not None:
        query_mask = as_bool_mask(query_mask, "query_mask")
    if attention_mask is not None:
        attention_mask = as_bool_mask(attention_mask, "attention_mask")
    from_model = None
    if visual_mask is None:
        from_model = getattr(adapted.model, "visual_mask", None)
        if not callable(from_model):
            raise InputError(
                "reduce() needs visual_mask: (batch, seq_len) bool, True at the visual tokens (this model has no "
                "visual_mask(input_ids) method to read it from)"
            )
        vm = None
    else:
        vm = as_bool_mask(visual_mask, "visual_mask")
        positions = resolve_positions(vm, attention_mask, query_mask, sched.query)  # validates before any forward
        if plan.prune_points and positions.v_index.shape[1] == 0:
            raise InputError("visual_mask marks no visual tokens: there is nothing to reduce")
    frames_of = None
    if visual_frames is None and sched.combination.merges and sched.combination.merge_scope != "all":
        frames_of = getattr(adapted.model, "visual_frames", None)
        if not callable(frames_of):
            raise InputError(
                f"merge_scope {sched.combination.merge_scope!r} needs visual_frames: (batch, seq_len) frame indices "
                "of the visual tokens (this model has no visual_frames(input_ids) method to read them from); or use "
                "merge_scope: all"
            )
    cfg = ScorerConfig.parse(scorer)
    result = Reduction(
        schedule=sched, plan=plan, adapted=adapted, scorer=cfg, scores=ScoreCache(adapted.kinds, None, cfg.to_dict())
    )
    engine = _Engine(adapted, result, vm, query_mask, attention_mask, from_model, visual_frames, frames_of)
    return ReductionContext(engine)
