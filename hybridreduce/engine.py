"""The reduction engine: drop visual tokens between blocks while ``model(...)``/``generate`` run.

``reduce(model, schedule, visual_mask)`` is a context manager (DESIGN decisions 1, 2, 6–8). It
never edits the model; it installs

* a forward pre-hook on the decoder, which tells a *prefill* (a forward from an empty cache over
  the masked sequence: tokens are selected and dropped), a *decode step* (a forward that continues
  from a cache: nothing is selected, each layer sees its own kept prompt tokens) and a *frozen*
  forward (no cache, the prompt plus a continuation, under the selection of the last prefill: the
  no-cache reference of ``generate``) apart;
* a forward pre-hook on every block from the first prune point on. At a prune point it chooses the
  keep set and gathers the residual stream; in every such block it slices the sequence-shaped
  arguments the decoder built for the whole sequence (attention masks on both axes, Mamba padding
  masks, position ids, RoPE cos/sin, Zamba2's embedding stream) to the tokens the block carries.
  In a decode step it rebuilds each reduced attention layer's mask over its own cached keys;
* scoring taps (:class:`hybridreduce.taps.ScoringSession`) on the blocks whose scores drive a cut:
  the most recent scoring block before each prune point, or all scoring blocks since the previous
  cut when ``schedule.ema`` is set.

What follows from running the stock layers on the shorter sequence: attention KV caches hold only
the kept tokens of each layer, Mamba conv and SSM states are those of the reduced sequence, RoPE
families see original position ids, and the model's output covers the kept tokens
(:attr:`Reduction.output_positions` maps its rows back to the input). Text tokens are never
dropped, so the last row (the next-token logits) is always there.

Glossary: ``b`` batch, ``T`` prompt length, ``V`` visual tokens in the prompt, ``k`` visual tokens
a stage keeps, ``L`` prompt plus generated tokens, ``q`` tokens in a decode step.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from . import compat
from .adapters import AdaptedModel, get_adapter
from .cache import ScoreCache
from .errors import CompatibilityError, InputError
from .prune import gather_seq, keep_index, select_visual, true_positions
from .schedule import Plan, Schedule
from .scoring.config import ScorerConfig
from .taps import Positions, ScoringSession, as_bool_mask, resolve_positions


@dataclass
class Stage:
    """The tokens carried from one prune point on (the last prefill).

    Attributes:
        point: first block of the stage (``0`` for the stage before any cut).
        n_visual: visual tokens carried.
        index: ``(b, T_s)`` original positions of the prompt tokens carried, increasing.
    """

    point: int
    n_visual: int
    index: torch.Tensor


@dataclass
class Reduction:
    """What a reduction context did; filled by every prefill that runs inside it.

    Attributes:
        schedule, plan: the schedule and its resolution for this model's depth.
        adapted: the model seen through its adapter.
        scorer: the scorer settings of the scoring blocks.
        stages: one :class:`Stage` per prune point of the last prefill (after the full-sequence
            stage 0); empty before the first prefill.
        scores: block → ``(b, V_block)`` importance recorded in the last prefill, over the visual
            tokens that block carried (:attr:`score_positions` gives their original positions).
        scoring_seconds: wall time spent in the scorers, summed over the prefills (on CUDA the
            kernels run asynchronously, so this is a lower bound unless the caller synchronises).
        prefills, decode_steps: how many forwards of each kind ran.
    """

    schedule: Schedule
    plan: Plan
    adapted: AdaptedModel = field(repr=False)
    scorer: ScorerConfig
    stages: list[Stage] = field(default_factory=list)
    scores: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)
    score_positions: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)
    scoring_seconds: float = 0.0
    prefills: int = 0
    decode_steps: int = 0
    _frozen: bool = field(default=False, repr=False)
    _visual_mask: torch.Tensor | None = field(default=None, repr=False)  # (b, T) of the last prefill

    # -- what happened ------------------------------------------------------------------------
    def _stage_of(self, block: int) -> Stage:
        if not self.stages:
            raise InputError("no prefill has run under this reduction yet: run model(...) or generate inside it")
        if not 0 <= block < self.plan.num_blocks:
            raise InputError(f"block {block} is outside the model (0..{self.plan.num_blocks - 1})")
        stage = self.stages[0]
        for s in self.stages[1:]:
            if block >= s.point:
                stage = s
        return stage

    def block_index(self, block: int) -> torch.Tensor:
        """``(b, T_block)`` original positions of the prompt tokens that ``block`` carries."""
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
        if not self.stages:
            return {}
        visual = self._visual_mask
        out = {}
        for s in self.stages[1:]:
            is_visual = visual.to(s.index.device).gather(1, s.index)
            out[s.point] = s.index[is_visual].view(s.index.shape[0], s.n_visual)
        return out

    @property
    def output_positions(self) -> torch.Tensor:
        """``(b, T_out)`` original positions of the rows of the model's output in the last prefill."""
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
            "prefills": self.prefills,
            "decode_steps": self.decode_steps,
        }

    @contextmanager
    def frozen(self):
        """Run no-cache forwards over ``prompt + continuation`` under the last prefill's selection.

        Inside, a forward without a cache may be longer than the prompt: its first ``T`` tokens
        must be the prompt of the last prefill, the rest (generated tokens) are never dropped, and
        every block carries exactly the prompt tokens it carried in the prefill. This is the
        reference that ``generate`` under reduction must equal (DESIGN decision 7).
        """
        if not self.stages:
            raise InputError("frozen() needs a selection: run a prefill (model(...) or generate) first")
        self._frozen = True
        try:
            yield self
        finally:
            self._frozen = False


class _Engine:
    """Hooks of one reduction context (see the module docstring)."""

    def __init__(
        self,
        adapted: AdaptedModel,
        result: Reduction,
        visual_mask: torch.Tensor | None,
        query_mask: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        visual_mask_of: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.adapted = adapted
        self.visual_mask_of = visual_mask_of  # the model's own input_ids → visual mask, used when no mask is given
        self.result = result
        self.schedule = result.schedule
        self.plan = result.plan
        self.visual_mask = visual_mask
        self.query_mask = query_mask
        self.attention_mask = attention_mask
        self.cuts = set(self.plan.prune_points)
        self.first = self.plan.prune_points[0] if self.plan.prune_points else None
        # Stage number of every block (0 before the first cut; stage s starts at prune point s).
        self.stage_of = [sum(block >= p for p in self.plan.prune_points) for block in range(self.plan.num_blocks)]
        self.handles: list = []
        self.session: ScoringSession | None = None
        self.rope = any(spec.rope for spec in adapted.blocks)
        self.sequence_args = adapted.family.sequence_args  # name -> "tokens" | "mask"
        # Per-forward state.
        self.mode: str | None = None  # "prefill" | "frozen" | "decode" | None (untouched)
        self.T = 0  # sequence length the decoder received in this forward
        self.cur: torch.Tensor | None = None  # (b, n) indices into this forward's sequence
        self.cur_visual: torch.Tensor | None = None  # (b, n) bool, prefill only
        self.orig: Positions | None = None
        self.latest: torch.Tensor | None = None
        self.ema: torch.Tensor | None = None
        self.memo: dict = {}
        self.pad2d: torch.Tensor | None = None
        self.seen = 0  # prompt + generated tokens already in the cache
        self.batch: int | None = None
        self.q = 0  # tokens in the current decode step
        self.counts: list[int] = []  # visual tokens kept at each cut, for this prefill's visual count
        self.generator: torch.Generator | None = None  # random selection, re-seeded every prefill

    # -- install / remove ------------------------------------------------------------------------
    def install(self) -> None:
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
                hook = self._block_hook(spec.index)
                self.handles.append(spec.module.register_forward_pre_hook(hook, with_kwargs=True))
            blocks = scoring_blocks(self.adapted, self.schedule, self.plan)
            if blocks:
                self.session = ScoringSession(
                    self.adapted,
                    self.visual_mask,
                    ScoreCache(self.adapted.kinds, None, self.result.scorer.to_dict()),
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

    def remove(self) -> None:
        while self.handles:
            self.handles.pop().remove()
        if self.session is not None:
            self.session.remove()
            self.session = None
        self._reset()

    def _reset(self) -> None:
        self.mode = None
        self.memo.clear()
        self.latest = self.ema = None
        self.cur = self.cur_visual = None
        if self.session is not None:
            self.session.stop()

    # -- root hook (visual mask from the model) -----------------------------------------------
    def _read_visual_mask(self, module, args, kwargs):
        """Before a prefill of the whole model: the visual mask of its input ids, by the model's own rule."""
        if compat.cache_state(kwargs)[1] or self.result._frozen:
            return None  # decode steps and frozen forwards reuse the prefill's selection
        ids = args[0] if args and isinstance(args[0], torch.Tensor) else kwargs.get("input_ids")
        if ids is None:
            raise InputError(
                "reduce() was not given visual_mask and this forward has no input_ids to read it from "
                "(inputs_embeds only): pass visual_mask=... to reduce()"
            )
        self.visual_mask = as_bool_mask(self.visual_mask_of(ids), "the model's visual_mask(input_ids)")
        return None

    # -- decoder hooks -------------------------------------------------------------------------
    def _begin(self, module, args, kwargs):
        x = compat.first_input(args, kwargs)
        if x is None:
            return None
        b, T = x.shape[0], x.shape[1]
        am = kwargs.get(compat.MASK_ARG)
        if isinstance(am, dict):
            raise InputError(
                "the model received precomputed per-layer masks (a compiled/static cache): reduction needs the "
                "dynamic cache of plain generate; drop cache_implementation='static'"
            )
        _, cached = compat.cache_state(kwargs)
        self.memo.clear()
        self.T = T
        if not cached:
            if self.result._frozen:
                return self._begin_frozen(b, T)
            self._begin_prefill(x, b, T, am, kwargs)
            return None
        return self._begin_decode(b, T, am, args, kwargs)

    def _begin_prefill(self, x, b: int, T: int, am, kwargs: dict) -> None:
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
                "under the last selection (the no-cache reference of generate), use `with reduction.frozen():`. "
                + compat.unclassified_forward_hint(kwargs)
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
        device = x.device
        vm = self.visual_mask.to(device)
        self.orig = resolve_positions(vm, padding, self.query_mask, self.schedule.query)
        n_visual = self.orig.v_index.shape[1]
        self.mode = "prefill"
        self.batch = b
        self.cur = torch.arange(T, device=device).expand(b, T)
        self.cur_visual = vm
        self.latest = self.ema = None
        self.result.stages = [Stage(0, n_visual, self.cur)]
        self.result.scores.clear()
        self.result.score_positions.clear()
        self.result._visual_mask = vm
        self.counts = self.plan.stage_counts(n_visual)
        self.generator = torch.Generator().manual_seed(self.schedule.seed)
        if self.session is not None:
            self.session.start(self.orig, T)

    def _begin_frozen(self, b: int, T: int) -> None:
        T0 = self.result.stages[0].index.shape[1]
        if b != self.batch:
            raise InputError(f"the frozen selection was made for batch size {self.batch}, this forward has {b}")
        if T < T0:
            raise InputError(f"a frozen forward must start with the {T0}-token prompt of the prefill, got {T} tokens")
        self.mode = "frozen"
        self.cur = self._with_tail(self.result.stages[0].index, T)
        return None

    def _begin_decode(self, b: int, T: int, am, args, kwargs):
        if not self.result.stages:
            raise InputError(
                "a forward continued from a cache that was not filled under this reduction; start generate (or the "
                "prefill) inside the `reduce` context"
            )
        if b != self.batch:
            raise InputError(
                f"the prefill under this reduction had batch size {self.batch}, this decode step has {b}: generate "
                "must keep the prefill's batch (num_beams and num_return_sequences > 1 expand it; not supported)"
            )
        self.mode = "decode"
        L = self.seen + T
        if isinstance(am, torch.Tensor) and am.dim() == 2:
            if am.shape[1] != L:
                raise InputError(
                    f"attention_mask covers {am.shape[1]} tokens, but the cache holds {self.seen} prompt and generated "
                    f"tokens and this step adds {T}"
                )
            self.pad2d = am.bool()
        else:
            self.pad2d = None
        self.q = T
        if self.rope and kwargs.get(compat.POSITION_ARG) is None:
            # The decoder would count positions from its cache's length, which is the reduced one.
            kwargs = dict(kwargs)
            kwargs[compat.POSITION_ARG] = (torch.arange(T, device=_device(args, kwargs)) + self.seen)[None]
            return args, kwargs
        return None

    def _end(self, module, args, output):
        if self.mode == "prefill":
            self.seen = self.T
            self.result.prefills += 1
            if self.session is not None:
                self.result.scoring_seconds = self.session.seconds
        elif self.mode == "decode":
            self.seen += self.q
            self.result.decode_steps += 1
        self._reset()

    # -- block hooks -----------------------------------------------------------------------------
    def _block_hook(self, block: int):
        def hook(module, args, kwargs):
            if self.mode is None:
                return None
            names = compat.positional_names(module, len(args))
            if self.mode == "decode":
                return self._decode_block(block, module, names, args, kwargs)
            args = list(args)
            if block in self.cuts:
                self._cut(block, args, kwargs)
            key = self.stage_of[block]
            args[1:] = [self._slice(name, a, key, module) for name, a in zip(names[1:], args[1:], strict=True)]
            kwargs = {k: (v if k == "hidden_states" else self._slice(k, v, key, module)) for k, v in kwargs.items()}
            return tuple(args), kwargs

        return hook

    def _slice(self, name: str, value, key: int, block: nn.Module):
        """Block argument ``name`` restricted to the tokens of the current stage (memoised per tensor and stage).

        Only the arguments the adapter declares (:attr:`FamilyAdapter.sequence_args`) are sliced; an undeclared
        tensor of sequence length raises (:func:`compat.check_undeclared`)."""
        kind = self.sequence_args.get(name)
        if kind is None:
            compat.check_undeclared(name, value, self.T, block, self.adapted.model_type, self.mode)
            return value
        if value is None:
            return None
        if isinstance(value, tuple):
            return tuple(self._slice_tensor(name, v, kind, key, block) for v in value)
        return self._slice_tensor(name, value, kind, key, block)

    def _slice_tensor(self, name: str, value, kind: str, key: int, block: nn.Module) -> torch.Tensor:
        T = self.T
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else None
        if kind == "mask":
            fits = shape is not None and (
                (len(shape) == 2 and shape[1] == T) or (len(shape) == 4 and shape[-2:] == (T, T))
            )
            expected = f"(b, {T}) or (b|1, h|1, {T}, {T})"
        else:
            fits = shape is not None and len(shape) >= 2 and shape[1] == T
            expected = f"(b|1, {T}, ...)"
        if not fits:
            raise CompatibilityError(
                f"{type(block).__name__} received {name!r} with shape {shape or type(value).__name__}; the "
                f"{self.adapted.model_type} adapter declares it a {kind} argument of shape {expected} over the "
                f"{T}-token sequence. transformers {compat.VERSION} lays it out differently from the tested releases "
                f"({', '.join(compat.TESTED_VERSIONS)}): run scripts/check_transformers.sh {compat.VERSION}"
            )
        memo_key = (id(value), key)
        hit = self.memo.get(memo_key)
        if hit is None:
            hit = (value, gather_seq(value, self.cur, T))  # keep `value` alive so its id stays unique
            self.memo[memo_key] = hit
        return hit[1]

    def _cut(self, block: int, args: list, kwargs: dict) -> None:
        """Choose the keep set at prune point ``block`` (prefill) or reuse it (frozen); gather the stream."""
        stage = self.stage_of[block]
        if self.mode == "prefill":
            new = self._choose(block, stage)
        else:
            new = self._with_tail(self.result.stages[stage].index, self.T)
        rel = torch.searchsorted(self.cur.contiguous(), new.to(self.cur.device))
        if "hidden_states" in kwargs:
            h = kwargs["hidden_states"]
            kwargs["hidden_states"] = gather_seq(h, rel.to(h.device), h.shape[1])
        else:
            h = args[0]
            args[0] = gather_seq(h, rel.to(h.device), h.shape[1])
        self.cur = new

    def _choose(self, block: int, stage: int) -> torch.Tensor:
        k = self.counts[stage - 1]
        b, V = self.cur_visual.shape[0], int(self.cur_visual[0].sum())
        how = {"random": "random", "uniform": "uniform"}.get(self.schedule.method, "topk")
        if how == "topk":
            scores = self.ema if (self.schedule.ema is not None and self.ema is not None) else self.latest
            if scores is None:  # excluded by scoring_blocks(); a guard against future edits
                raise InputError(f"no score is available for the cut before block {block}")
            chosen = select_visual(scores, k, "topk")
        else:
            chosen = select_visual(None, k, how, n_visual=V, generator=self.generator, batch=b)
        chosen = chosen.to(self.cur.device)
        keep = keep_index(self.cur_visual, chosen)  # (b, n') into the current tokens
        new = self.cur.gather(1, keep)
        self.cur_visual = self.cur_visual.gather(1, keep)
        if self.latest is not None:
            self.latest = self.latest.gather(1, chosen.to(self.latest.device))
        self.ema = None
        self.result.stages.append(Stage(block, k, new))
        if self.session is not None:
            self.session.start(self._positions(new), new.shape[1])
        return new

    def _positions(self, idx: torch.Tensor) -> Positions:
        """Query and visual positions of the original prompt, moved to the reduced sequence ``idx``."""
        orig = self.orig.to(idx.device)
        q_index = torch.searchsorted(idx.contiguous(), orig.q_index)
        v_index = true_positions(self.cur_visual, int(self.cur_visual[0].sum()))
        return Positions(q_index=q_index, q_valid=orig.q_valid, v_index=v_index)

    def _on_scored(self, block: int, scores: torch.Tensor) -> None:
        if self.mode != "prefill":
            return
        self.result.scores[block] = scores
        visual = self.cur[self.cur_visual].view(self.cur.shape[0], -1)
        self.result.score_positions[block] = visual
        self.latest = scores
        w = self.schedule.ema
        if w is not None:
            self.ema = scores if self.ema is None else w * scores + (1 - w) * self.ema

    def _with_tail(self, prompt_idx: torch.Tensor, T: int) -> torch.Tensor:
        """``prompt_idx`` followed by the positions of the generated tokens ``T0 .. T-1``."""
        T0 = self.result.stages[0].index.shape[1]
        if T == T0:
            return prompt_idx
        tail = torch.arange(T0, T, device=prompt_idx.device).expand(prompt_idx.shape[0], T - T0)
        return torch.cat([prompt_idx, tail], dim=1)

    # -- decode steps ----------------------------------------------------------------------------
    def _decode_block(self, block: int, module: nn.Module, names: tuple[str, ...], args, kwargs):
        """Give a reduced block masks over its own cache: kept prompt tokens, then generated ones.

        Returns ``None`` (the call goes through untouched) when no argument had to change: no mask, or
        none built over the keys (the common case of SDPA without padding, whose mask is ``None``).
        """
        stage = self.stage_of[block]
        L = self.seen + self.q
        new_args = [args[0]] + [
            self._decode_value(name, a, stage, L, module) for name, a in zip(names[1:], args[1:], strict=True)
        ]
        new_kwargs = {
            k: (v if k == "hidden_states" else self._decode_value(k, v, stage, L, module)) for k, v in kwargs.items()
        }
        unchanged = all(a is b for a, b in zip(new_args, args, strict=True))
        if unchanged and all(new_kwargs[k] is v for k, v in kwargs.items()):
            return None
        return tuple(new_args), new_kwargs

    def _decode_keys(self, stage: int, L: int) -> torch.Tensor:
        """``(b, K)`` original positions of the keys a block of ``stage`` holds in this step (memoised per stage)."""
        memo_key = ("keys", stage)
        if memo_key not in self.memo:
            self.memo[memo_key] = self._with_tail(self.result.stages[stage].index, L)
        return self.memo[memo_key]

    def _decode_value(self, name: str, value, stage: int, L: int, block: nn.Module):
        """A declared mask over all ``L`` keys becomes one over the block's own keys; the rest is the new tokens'."""
        kind = self.sequence_args.get(name)
        if kind is None:
            compat.check_undeclared(name, value, L, block, self.adapted.model_type, "decode step")
            return value
        if kind != "mask" or not isinstance(value, torch.Tensor):
            return value  # positions and RoPE tables of the new tokens, or no mask
        if value.dim() == 4 and value.shape[-2] == self.q:  # built over the cache's (reduced) length: rebuilt here
            memo_key = ("mask", stage, value.dtype)
            if memo_key not in self.memo:
                self.memo[memo_key] = self._decode_mask(self._decode_keys(stage, L), value.dtype, value.device)
            return self.memo[memo_key]
        if value.dim() == 2 and value.shape[1] == L:  # 2-D key padding (flash attention)
            return value.gather(1, self._decode_keys(stage, L).to(value.device))
        if value.dim() == 2 and value.shape[1] == self.q:  # a Mamba mixer's padding of the new tokens
            return value
        raise CompatibilityError(
            f"{type(block).__name__} received the mask {name!r} with shape {tuple(value.shape)} in a decode step of "
            f"{self.q} token(s) over {L} keys; expected (b|1, h|1, {self.q}, keys), (b, {L}) or (b, {self.q}). "
            f"transformers {compat.VERSION} may build decode masks differently from the tested releases "
            f"({', '.join(compat.TESTED_VERSIONS)}): run scripts/check_transformers.sh {compat.VERSION}"
        )

    def _decode_mask(self, keys: torch.Tensor, dtype: torch.dtype, device) -> torch.Tensor:
        """``(b, 1, q, K)`` mask of a decode step: padding of the kept keys, causal among the new tokens."""
        b, K = keys.shape
        q = self.q
        keys = keys.to(device)
        if self.pad2d is not None:
            pad = self.pad2d.to(device).gather(1, keys)
        else:
            pad = torch.ones(b, K, dtype=torch.bool, device=device)
        causal = torch.arange(K, device=device)[None, :] <= (K - q + torch.arange(q, device=device))[:, None]
        allowed = pad[:, None, None, :] & causal[None, None]
        if dtype == torch.bool:
            return allowed
        return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)


def _device(args, kwargs):
    x = compat.first_input(args, kwargs)
    return x.device if x is not None else "cpu"


def _mixers(schedule: Schedule) -> tuple[str, ...]:
    return ("attn",) if schedule.score == "attention" else ("attn", "ssm")


def scoring_blocks(adapted: AdaptedModel, schedule: Schedule, plan: Plan) -> set[int]:
    """The blocks whose scores choose a keep set: for each cut, the most recent scoring block before
    it (with ``ema``: every scoring block since the previous cut, or the most recent if none).

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
    needed: set[int] = set()
    previous = 0
    for point in plan.prune_points:
        before = [i for i in able if i < point]
        if not before:
            first = f"the first is block {able[0]}" if able else "the model has none"
            raise InputError(
                f"the cut before block {point} has no {what} before it to score the tokens ({first}); "
                f"move first_prune after block {able[0] if able else '?'} or use score: unified"
            )
        since = [i for i in before if i >= previous]
        needed |= set(since) if (schedule.ema is not None and since) else {before[-1]}
        previous = point
    return needed


@contextmanager
def reduce(
    model: nn.Module,
    schedule: Schedule | str | dict = "progressive",
    visual_mask: torch.Tensor | None = None,
    scorer: ScorerConfig | str | dict | None = None,
    query_mask: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
):
    """Drop visual tokens between the blocks of ``model`` for the forwards run inside the context.

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

    Yields:
        A :class:`Reduction` that records what each prefill kept.

    Example::

        with hybridreduce.reduce(model, "progressive", visual_mask=vm) as red:
            out = model.generate(input_ids, max_new_tokens=16, do_sample=False)
        red.block_visual      # visual tokens carried by each block
        red.kept_positions    # prune point -> (b, k) original positions kept
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
    cfg = ScorerConfig.parse(scorer)
    result = Reduction(schedule=sched, plan=plan, adapted=adapted, scorer=cfg)
    engine = _Engine(adapted, result, vm, query_mask, attention_mask, from_model)
    engine.install()
    try:
        yield result
    finally:
        engine.remove()


def cache_nbytes(cache) -> dict[str, int]:
    """Bytes held by a transformers cache: ``{"kv": attention keys+values, "state": Mamba conv+SSM states}``."""
    kv = state = 0
    for layer in getattr(cache, "layers", []):
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if isinstance(t, torch.Tensor):
                kv += t.numel() * t.element_size()
        for name in ("conv_states", "recurrent_states"):
            for t in (getattr(layer, name, None) or {}).values():
                if isinstance(t, torch.Tensor):
                    state += t.numel() * t.element_size()
    return {"kv": kv, "state": state}
