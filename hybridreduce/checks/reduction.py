"""The reduction engine's invariants: :func:`~hybridreduce.engine.reduce` against references built without it.

Each check is registered with :func:`~hybridreduce.checks.common.invariant` and says in its docstring what it
asserts; ``hybridreduce verify`` runs them in the order of this file, after :mod:`hybridreduce.checks.scoring`.
:func:`pruned_reference` is the hand-built reference forward (the tests also run it with ``grad=True``): for
cuts ``p_1 < … < p_S``, run ``i`` feeds the model the tokens kept at stage ``i`` (original position ids, padding
mask gathered, so the model builds its own masks for the shorter sequence) and replaces the input of block
``p_i`` with run ``i − 1``'s output of block ``p_i − 1`` at the kept rows.
"""

from __future__ import annotations

import torch

from ..adapters import get_adapter
from ..engine import reduce
from ..schedule import Schedule
from ..tiny_models import SyntheticPrompt, left_pad, make_prompt
from .common import TARGET, CheckResult, _forward, _vocab, invariant

# Tolerances: TARGET.tol("logits") and TARGET.tol("tie"), by the dtype the checks run in (in float32
# hybridreduce.checks.common.ATOL_LOGITS and TIE; the others in hybridreduce.checks.common.TOLERANCES).
N_NEW = 16

# Every forward here passes its padding mask, even when nothing is padded: position ids with gaps
# (the reference runs' original positions) and no mask would be read as packed sequences.


#: The schedule settings of the merging checks (DESIGN decision 14).
MERGE = {"combine": "merge", "size_aware": True}


def _progressive(model, keep: float = 0.5, **settings) -> Schedule:
    """Three cuts from block 1 on (two for the three-block models)."""
    n = get_adapter(model).num_blocks
    return Schedule.preset("progressive", keep=keep, first_prune=1, stages=min(3, n - 1), **settings)


def merged_rows_reference(carried: torch.Tensor, prev: torch.Tensor, stage, sizes: torch.Tensor) -> torch.Tensor:
    """The rows a merging cut carries on, by a float64 loop: each kept row the size-weighted mean of itself and the
    rows :attr:`Stage.merged <hybridreduce.engine.Stage.merged>` says were merged into it.

    Args:
        carried: ``(b, T_prev, d)`` the stream entering the cut, over the previous stage's tokens ``prev``.
        prev: ``(b, T_prev)`` original positions of those tokens; ``stage``: the stage the cut starts.
        sizes: ``(b, T_prev)`` sizes of the previous stage's tokens.
    """
    b, _, d = carried.shape
    out = torch.empty(b, stage.index.shape[1], d, dtype=torch.float64)
    removed, into = stage.merged
    for i in range(b):
        where = {int(p): r for r, p in enumerate(prev[i].tolist())}
        for t, p in enumerate(stage.index[i].tolist()):
            r = where[p]
            total, weight = carried[i, r].double() * float(sizes[i, r]), float(sizes[i, r])
            for gone, target in zip(removed[i].tolist(), into[i].tolist(), strict=True):
                if target == p:
                    total = total + carried[i, where[gone]].double() * float(sizes[i, where[gone]])
                    weight += float(sizes[i, where[gone]])
            out[i, t] = total / weight
    return out.to(carried.dtype)


def _batch(model) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[SyntheticPrompt]]:
    vocab = _vocab(model)
    prompts = [
        make_prompt(vocab, 3, 24, 9, seed=1, device=TARGET.device),
        make_prompt(vocab, 6, 24, 3, seed=2, device=TARGET.device),
    ]
    ids, am, vm = left_pad(prompts, device=TARGET.device)
    return ids, am, vm, prompts


def pruned_reference(model, ids, am, stages, grad: bool = False) -> torch.Tensor:
    """Logits of the hand-built reference for the selection ``stages`` (see the module docstring).

    Args:
        ids, am: ``(b, T)`` prompt and padding mask.
        stages: the :class:`~hybridreduce.engine.Stage` list of a prefill (stage 0 = every token); a stage whose
            cut merged (``Stage.merged``) carries :func:`merged_rows_reference` instead of the gathered rows (the
            reference of merging without size-aware blocks).
        grad: keep the autograd graph (the reference of training under reduction): the carried hidden
            states link the runs, so a loss on the logits reaches every block that shaped them.
    """
    adapted = get_adapter(model)
    blocks = adapted.blocks
    pos = (am.long().cumsum(-1) - 1).clamp_min(0)  # the position ids a full-length forward gets
    carried: torch.Tensor | None = None  # output of block p_i - 1 over stage i-1's tokens
    out = None
    for i, stage in enumerate(stages):
        idx = stage.index
        handles = []
        if i > 0:
            prev = stages[i - 1].index
            if stage.merged is not None:
                sizes = stages[i - 1].sizes if stages[i - 1].sizes is not None else torch.ones(prev.shape)
                injected = merged_rows_reference(carried, prev, stage, sizes)
            else:
                rel = torch.searchsorted(prev.contiguous(), idx)
                injected = carried.gather(1, rel[..., None].expand(*rel.shape, carried.shape[-1]))

            def replace(module, args, kwargs, h=injected):
                if "hidden_states" in kwargs:
                    kwargs = {**kwargs, "hidden_states": h}
                    return args, kwargs
                return (h, *args[1:]), kwargs

            handles.append(blocks[stage.point].module.register_forward_pre_hook(replace, with_kwargs=True))
        if i + 1 < len(stages):
            grab = {}

            def keep(module, args, output, g=grab):
                g["h"] = output[0] if isinstance(output, tuple) else output

            handles.append(blocks[stages[i + 1].point - 1].module.register_forward_hook(keep))
        try:
            run_ids, run_am, run_pos = ids.gather(1, idx), am.gather(1, idx), pos.gather(1, idx)
            if grad:
                out = model(input_ids=run_ids, attention_mask=run_am, position_ids=run_pos, use_cache=False)[0]
            else:
                out = _forward(model, run_ids, run_am, position_ids=run_pos)
        finally:
            for h in handles:
                h.remove()
        if i + 1 < len(stages):
            carried = grab["h"]
    return out


def _keep1(arch: str, model, prompt: SyntheticPrompt, name: str, **settings) -> CheckResult:
    ids = prompt.input_ids.repeat(2, 1)
    vm = prompt.visual_mask.repeat(2, 1)
    am = torch.ones_like(ids)
    ref = _forward(model, ids, am)
    sched = _progressive(model, keep=1.0, **settings)
    with reduce(model, sched, visual_mask=vm) as red:
        out = _forward(model, ids, am)
    cut = len(red.stages) > 1 and all(s.n_visual == red.stages[0].n_visual for s in red.stages)
    return CheckResult(
        arch,
        name,
        cut and torch.equal(ref, out),
        float((ref - out).abs().max()),
        f"keep-everything schedule with {len(red.stages) - 1} cuts: logits bit-identical",
    )


@invariant("reduce_keep1_exact", needs=("model", "prompt"))
def check_reduce_keep1_exact(arch: str, model, prompt: SyntheticPrompt) -> CheckResult:
    """A schedule that keeps every token (cuts at every stage, nothing dropped) leaves the logits bit-identical."""
    return _keep1(arch, model, prompt, "reduce_keep1_exact")


@invariant("merge_keep1_exact", needs=("model", "prompt"))
def check_merge_keep1_exact(arch: str, model, prompt: SyntheticPrompt) -> CheckResult:
    """A merging, size-aware schedule that keeps every token (nothing merged, every size 1) leaves the logits
    bit-identical: the size-aware blocks change nothing while no token stands for more than itself."""
    return _keep1(arch, model, prompt, "merge_keep1_exact", **MERGE)


@invariant("prune_reference", needs=("model",))
def check_prune_reference(arch: str, model) -> CheckResult:
    """Logits under :func:`~hybridreduce.engine.reduce` equal the reference :func:`pruned_reference` built
    without the engine.

    Checked for a single cut before every block and for the default progressive schedule, on a left-padded
    batch.
    """
    return _against_reference(arch, model, "prune_reference")


@invariant("merge_reference", needs=("model",))
def check_merge_reference(arch: str, model) -> CheckResult:
    """Logits under a merging schedule without size-aware blocks equal :func:`pruned_reference`, which carries the
    float64 size-weighted means of :func:`merged_rows_reference` (the merges the engine reports in
    ``Stage.merged``) into each stage.

    Checked for a single cut before every block and for the progressive schedule (whose later cuts merge merged
    tokens again, with sizes above 1), on a left-padded batch.
    """
    return _against_reference(arch, model, "merge_reference", combine="merge", size_aware=False)


def _against_reference(arch: str, model, name: str, **settings) -> CheckResult:
    ids, am, vm, _ = _batch(model)
    n = get_adapter(model).num_blocks
    schedules = [Schedule(keep=None, shape="explicit", ratios=(0.5,), stages=(p,), **settings) for p in range(1, n)]
    schedules.append(_progressive(model, **settings))
    worst = 0.0
    for sched in schedules:
        with reduce(model, sched, visual_mask=vm) as red:
            got = _forward(model, ids, am)
        ref = pruned_reference(model, ids, am, red.stages)
        if got.shape != ref.shape:
            return CheckResult(arch, name, False, None, f"shape {tuple(got.shape)} vs {tuple(ref.shape)}")
        worst = max(worst, float((got - ref).abs().max()))
    return CheckResult(
        arch,
        name,
        worst <= TARGET.tol("logits"),
        worst,
        f"{len(schedules) - 1} single cuts + progressive, left-padded batch of 2, vs per-stage reference runs",
    )


@invariant("generate_reference", needs=("model",))
def check_generate_reference(arch: str, model) -> CheckResult:
    """Greedy ``generate`` under reduction (KV and Mamba caches, 16 new tokens) equals the no-cache loop under
    the same frozen selection, token by token, and its logits match.
    """
    return _generate(arch, model, "generate_reference")


@invariant("merge_generate_reference", needs=("model",))
def check_merge_generate_reference(arch: str, model) -> CheckResult:
    """Greedy ``generate`` under a merging, size-aware schedule equals the no-cache loop under the same frozen
    selection (merges and sizes replayed), token by token: decode steps give the merged keys the same
    ``log(size)`` bias the prefill did.
    """
    return _generate(arch, model, "merge_generate_reference", **MERGE)


def _generate(arch: str, model, name: str, **settings) -> CheckResult:
    from transformers import GenerationConfig

    ids, am, vm, _ = _batch(model)
    sched = _progressive(model, **settings)
    config = GenerationConfig(max_new_tokens=N_NEW, do_sample=False, pad_token_id=0)
    context = reduce(model, sched, visual_mask=vm)
    with context as red, torch.no_grad():
        # No end-of-sequence stop, so that every step is compared (generate falls back on the
        # model's own eos_token_id when the config passed leaves it unset).
        saved_eos = model.generation_config.eos_token_id
        model.generation_config.eos_token_id = None
        try:
            out = model.generate(
                ids, attention_mask=am, generation_config=config, output_logits=True, return_dict_in_generate=True
            )
        finally:
            model.generation_config.eos_token_id = saved_eos
        new = out.sequences[:, ids.shape[1] :]
        seq, mask = ids, am
        worst, mismatched, ties = 0.0, 0, 0
        with context.frozen():
            for step in range(N_NEW):
                logits = _forward(model, seq, mask)[:, -1]
                worst = max(worst, float((logits - out.logits[step]).abs().max()))
                top2 = logits.topk(2, dim=-1).values
                differs = logits.argmax(-1) != new[:, step]
                tie = (top2[:, 0] - top2[:, 1]) < TARGET.tol("tie")
                mismatched += int((differs & ~tie).sum())
                ties += int((differs & tie).sum())
                seq = torch.cat([seq, new[:, step : step + 1]], dim=1)
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    passed = mismatched == 0 and worst <= TARGET.tol("logits") and red.decode_steps == N_NEW - 1
    detail = (
        f"{N_NEW} greedy tokens × batch 2 (left-padded) vs frozen no-cache loop; {mismatched} mismatched, "
        f"{ties} float ties; visual per block {red.block_visual}"
    )
    return CheckResult(arch, name, passed, worst, detail)


@invariant("batch_reduce", needs=("model",))
def check_batch_reduce(arch: str, model) -> CheckResult:
    """A left-padded batch of two prompts under reduction keeps the same tokens and gives the same next-token
    logits as each prompt alone.
    """
    return _batch_alone(arch, model, "batch_reduce")


@invariant("merge_batch_reduce", needs=("model",))
def check_merge_batch_reduce(arch: str, model) -> CheckResult:
    """A left-padded batch of two prompts under a merging, size-aware schedule keeps and merges the same tokens
    and gives the same next-token logits as each prompt alone.
    """
    return _batch_alone(arch, model, "merge_batch_reduce", **MERGE)


def _batch_alone(arch: str, model, name: str, **settings) -> CheckResult:
    ids, am, vm, prompts = _batch(model)
    sched = _progressive(model, **settings)
    with reduce(model, sched, visual_mask=vm) as red:
        batched = _forward(model, ids, am)[:, -1]
    kept_batch = red.kept_positions
    worst, same_sets = 0.0, True
    for i, p in enumerate(prompts):
        offset = ids.shape[1] - p.input_ids.shape[1]
        with reduce(model, sched, visual_mask=p.visual_mask) as alone:
            logits = _forward(model, p.input_ids, torch.ones_like(p.input_ids))[:, -1]
        worst = max(worst, float((batched[i] - logits[0]).abs().max()))
        for point, kept in alone.kept_positions.items():
            same_sets &= torch.equal(kept_batch[point][i] - offset, kept[0])
        for together, own in zip(red.stages[1:], alone.stages[1:], strict=True):
            if own.merged is not None:  # the same merges: removed tokens and where each went
                same_sets &= all(
                    torch.equal(t[i] - offset, o[0]) for t, o in zip(together.merged, own.merged, strict=True)
                )
    return CheckResult(
        arch,
        name,
        same_sets and worst <= TARGET.tol("logits"),
        worst,
        f"left-padded batch of 2 vs each alone: same kept tokens at {len(kept_batch)} cuts = {same_sets}",
    )
