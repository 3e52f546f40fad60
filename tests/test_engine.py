"""The reduction engine: what it keeps, how it chooses, its state in decode, and its errors.

The equalities against hand-built references (pruning, generate, batching, keep-everything) run
for every architecture in ``test_invariants.py`` through ``hybridreduce verify``; here the checks are
shown to fail when the engine is broken, and the engine's bookkeeping is tested directly.
"""

from __future__ import annotations

import pytest
import torch

from hybridreduce import InputError, Schedule, cache_nbytes, reduce
from hybridreduce import engine as engine_mod
from hybridreduce.adapters import get_adapter
from hybridreduce.checks import reduction
from hybridreduce.compat import cache_kwarg, output_cache
from hybridreduce.engine import scoring_blocks

from .conftest import prompt


def _padded(batch=2):
    ids, vm = prompt(batch=batch)
    am = torch.ones_like(ids)
    am[-1, :3] = 0
    return ids, am, vm


def _logits(model, ids, am, **kw):
    pos = (am.cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad():
        return model(ids, attention_mask=am, position_ids=pos, use_cache=False, **kw).logits


PROGRESSIVE = Schedule.preset("progressive", keep=0.5, first_prune=1, stages=2)  # fits 3-block models too


# --------------------------------------------------------------------------------------------------
# The checks fail on a broken engine
# --------------------------------------------------------------------------------------------------
def test_the_pruning_check_catches_renumbered_positions(monkeypatch, tiny_models):
    """Give RoPE the positions 0..T'-1 of the reduced sequence instead of the original ones."""
    real = engine_mod.slice_argument

    def renumbered(value, index, T):
        if value.dim() == 3 and value.is_floating_point():  # RoPE's cos/sin tables, (b, T, d)
            return value[:, : index.shape[1]]  # those of the first n positions
        return real(value, index, T)

    monkeypatch.setattr(engine_mod, "slice_argument", renumbered)
    result = reduction.check_prune_reference("bamba", tiny_models("bamba"))
    assert not result.passed and result.max_err > 1e-4


def test_the_generate_check_catches_a_decode_mask_without_padding(monkeypatch, tiny_models):
    """Forget the prompt's padding in the decode-step masks: generated logits drift."""
    real = engine_mod.decode_mask

    def forget_padding(keys, q, padding, dtype, device):
        return real(keys, q, None, dtype, device)

    monkeypatch.setattr(engine_mod, "decode_mask", forget_padding)
    result = reduction.check_generate_reference("llama", tiny_models("llama"))
    assert not result.passed


# --------------------------------------------------------------------------------------------------
# Bookkeeping
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["nemotron_h", "zamba2", "falcon_h1"])
def test_counts_and_positions(arch, tiny_models):
    model = tiny_models(arch)
    ids, am, vm = _padded()
    with reduce(model, PROGRESSIVE, visual_mask=vm) as red:
        logits = _logits(model, ids, am)
    plan = red.plan
    assert red.block_visual == plan.block_counts(24)
    assert abs(red.average_keep - plan.average_keep(24)) < 1e-12
    assert logits.shape[1] == red.output_positions.shape[1] == ids.shape[1] - 24 + red.block_visual[-1]
    text = (~vm).nonzero()
    for b, t in text.tolist():  # every text token reaches the output
        assert t in red.output_positions[b].tolist()
    previous = [set(row.nonzero().flatten().tolist()) for row in vm]
    for point, kept in red.kept_positions.items():
        assert kept.shape == (2, red.block_visual[point])
        for b in range(2):
            row = kept[b].tolist()
            assert row == sorted(row) and set(row) <= previous[b]
            previous[b] = set(row)


def test_cut_keeps_the_top_scores_of_the_last_scoring_block(tiny_models):
    model = tiny_models("nemotron_h")  # blocks: ssm mlp attn moe ssm attn
    ids, vm = prompt(batch=2)
    sched = Schedule(keep=None, shape="explicit", ratios=(0.25,), stages=(4,))
    assert scoring_blocks(get_adapter(model), sched, sched.resolve(6)) == {2}
    with reduce(model, sched, visual_mask=vm) as red:
        _logits(model, ids, torch.ones_like(ids))
    scores, where = red.scores[2], red.scores.positions(2)
    top = scores.topk(6, dim=1).indices
    assert torch.equal(red.kept_positions[4], where.gather(1, top).sort(dim=1).values)


def test_ema_averages_the_blocks_since_the_last_cut(tiny_models):
    model = tiny_models("nemotron_h")
    ids, vm = prompt(batch=2)
    sched = Schedule(keep=None, shape="explicit", ratios=(0.5, 0.25), stages=(1, 5), ema=0.3)
    assert scoring_blocks(get_adapter(model), sched, sched.resolve(6)) == {0, 2, 4}
    with reduce(model, sched, visual_mask=vm) as red:
        _logits(model, ids, torch.ones_like(ids))
    ema = red.scores[2]
    ema = 0.3 * red.scores[4] + 0.7 * ema
    top = ema.topk(6, dim=1).indices
    assert torch.equal(red.kept_positions[5], red.scores.positions(4).gather(1, top).sort(dim=1).values)


def test_attention_score_source_needs_an_attention_block_before_the_cut(tiny_models):
    model = tiny_models("nemotron_h")
    ids, vm = prompt(batch=1)
    sched = Schedule.preset("fastv", keep=0.5, first_prune=1)
    with pytest.raises(InputError, match="no attention block before it"):
        with reduce(model, sched, visual_mask=vm):
            pass
    ok = Schedule.preset("fastv", keep=0.6, first_prune=3)
    assert scoring_blocks(get_adapter(model), ok, ok.resolve(6)) == {2}


def test_random_is_seeded_and_uniform_is_even(tiny_models):
    model = tiny_models("bamba")
    ids, vm = prompt(batch=2)
    kept = {}
    for name, sched in {
        "r0": Schedule.preset("random", keep=0.5, first_prune=1, stages=1, seed=0),
        "r0b": Schedule.preset("random", keep=0.5, first_prune=1, stages=1, seed=0),
        "r1": Schedule.preset("random", keep=0.5, first_prune=1, stages=1, seed=1),
        "u": Schedule.preset("uniform", keep=0.5, first_prune=1, stages=1),
    }.items():
        with reduce(model, sched, visual_mask=vm) as red:
            _logits(model, ids, torch.ones_like(ids))
        assert red.scoring_seconds == 0.0  # no scorer is installed for score-free methods
        kept[name] = red.kept_positions[1]
    assert torch.equal(kept["r0"], kept["r0b"]) and not torch.equal(kept["r0"], kept["r1"])
    stride = kept["u"][0].diff()
    assert int(stride.max() - stride.min()) <= 1


def test_generate_keeps_a_smaller_kv_cache_and_original_positions_without_position_ids(tiny_models):
    """A manual decode loop that passes no position_ids (RoPE family) matches the frozen reference."""
    model = tiny_models("llama")
    ids, vm = prompt(batch=1)
    with torch.no_grad():
        full = model(ids, use_cache=True)
    context = reduce(model, PROGRESSIVE, visual_mask=vm)
    with context as red, torch.no_grad():
        out = model(ids, use_cache=True)
        assert cache_nbytes(output_cache(out))["kv"] < cache_nbytes(output_cache(full))["kv"]
        cache, token, seq, steps = output_cache(out), out.logits[:, -1:].argmax(-1), ids, []
        for _ in range(4):
            seq = torch.cat([seq, token], dim=1)
            step = model(token, **{cache_kwarg(model): cache}, use_cache=True).logits[:, -1]
            steps.append(step)
            token = step.argmax(-1, keepdim=True)
        with context.frozen():
            for i in range(4):
                ref = _logits(model, seq[:, : ids.shape[1] + i + 1], torch.ones_like(seq[:, : ids.shape[1] + i + 1]))
                assert (ref[:, -1] - steps[i]).abs().max() < 1e-5
    assert red.decode_steps == 4 and red.prefills == 1


def test_the_bare_decoder_can_be_reduced(tiny_models):
    model = tiny_models("nemotron_h")
    ids, vm = prompt(batch=1)
    with reduce(model.model, PROGRESSIVE, visual_mask=vm) as red, torch.no_grad():
        hidden = model.model(ids).last_hidden_state
    assert hidden.shape[1] == red.output_positions.shape[1] < ids.shape[1]


# --------------------------------------------------------------------------------------------------
# Decode steps: what each one rebuilds
# --------------------------------------------------------------------------------------------------
def _record(monkeypatch, owner, name: str) -> list:
    """Record the return value of every call of ``owner.<name>`` (a method of the engine or a function of the
    engine module) from now on."""
    returned = []
    real = getattr(owner, name)

    def recorded(*args, **kwargs):
        out = real(*args, **kwargs)
        returned.append(out)
        return out

    monkeypatch.setattr(owner, name, recorded)
    return returned


def _greedy_steps(model, ids, am, steps: int) -> None:
    """A prefill, then ``steps`` greedy steps that pass the growing padding mask (as ``generate`` does)."""
    pos = (am.cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad():
        out = model(ids, attention_mask=am, position_ids=pos, use_cache=True)
        cache, token = output_cache(out), out.logits[:, -1:].argmax(-1)
        for _ in range(steps):
            am, pos = torch.cat([am, torch.ones_like(am[:, :1])], dim=1), pos[:, -1:] + 1
            step = model(token, attention_mask=am, position_ids=pos, **{cache_kwarg(model): cache}, use_cache=True)
            token = step.logits[:, -1:].argmax(-1)


def test_decode_masks_and_keys_are_built_once_per_stage_and_step(monkeypatch, tiny_models):
    """With padding every reduced attention block gets a 4-D mask: one per stage and step, shared by its blocks."""
    model = tiny_models("llama")  # three attention blocks
    ids, am, vm = _padded()
    one_cut = Schedule(keep=None, shape="explicit", ratios=(0.5,), stages=(1,))  # blocks 1 and 2 share a stage
    with reduce(model, one_cut, visual_mask=vm) as red:
        _greedy_steps(model, ids, am, steps=0)  # the prefill alone
        blocks, masks = (
            _record(monkeypatch, engine_mod._Engine, "_decode_block"),
            _record(monkeypatch, engine_mod, "decode_mask"),
        )
        tails = _record(monkeypatch, engine_mod, "with_tail")
        _greedy_steps(model, ids, am, steps=3)
    assert red.decode_steps == 3 and len(blocks) == 3 * 2
    assert len(masks) == len(tails) == 3  # one per step (before: the keys once per block and step)
    kept = red.block_tokens[1]
    for step, mask in enumerate(masks):
        assert mask.shape == (2, 1, 1, kept + step + 1)  # the stage's own keys: kept prompt, then generated
    for i, (_, kwargs) in enumerate(blocks):  # both blocks of a step got the same tensor
        assert kwargs["attention_mask"] is masks[i // 2]


def test_a_decode_step_without_masks_leaves_the_blocks_untouched(monkeypatch, tiny_models):
    """SDPA without padding hands the blocks no mask: the engine's hooks change nothing and build nothing."""
    model = tiny_models("nemotron_h")
    ids, vm = prompt(batch=1)
    with reduce(model, PROGRESSIVE, visual_mask=vm) as red:
        blocks = _record(monkeypatch, engine_mod._Engine, "_decode_block")
        tails = _record(monkeypatch, engine_mod, "with_tail")
        _greedy_steps(model, ids, torch.ones_like(ids), steps=3)
    assert red.decode_steps == 3 and len(blocks) > 0
    assert all(result is None for result in blocks) and not tails


@pytest.mark.parametrize("arch", ["nemotron_h", "falcon_h1"])
def test_decode_steps_pass_the_blocks_without_attention_by(monkeypatch, tiny_models, arch):
    """A Mamba, MLP or MoE block holds no keys: in a decode step its hook returns before any work, and only the
    blocks with attention (``attn``; ``parallel``: Falcon-H1's side-by-side mixers) reach the decode path."""
    model = tiny_models(arch)
    kinds = get_adapter(model).kinds
    ids, vm = prompt(batch=1)
    with reduce(model, PROGRESSIVE, visual_mask=vm) as red:
        calls = _record(monkeypatch, engine_mod._Engine, "_decode_block")
        _greedy_steps(model, ids, torch.ones_like(ids), steps=3)
    hooked = kinds[red.plan.prune_points[0] :]  # the engine hooks the blocks from the first cut on
    with_attention = sum(k in ("attn", "parallel") for k in hooked)
    assert with_attention > 0 and (arch == "falcon_h1" or len(hooked) > with_attention)  # Nemotron-H: both kinds
    assert len(calls) == 3 * with_attention


# --------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------
def test_generate_with_another_batch_is_refused(tiny_models):
    model = tiny_models("nemotron_h")
    ids, vm = prompt(batch=2)
    with reduce(model, PROGRESSIVE, visual_mask=vm), torch.no_grad():
        out = model(ids, use_cache=True)
        with pytest.raises(InputError, match="batch size 2, this decode step has 1"):
            model(ids[:1, -1:], **{cache_kwarg(model): output_cache(out)}, use_cache=True)
        with pytest.raises(InputError, match="num_beams"):  # beams repeat each prompt before the prefill
            model.generate(ids, max_new_tokens=2, num_beams=2, do_sample=False)


def test_a_cache_filled_outside_the_context_is_refused(tiny_models):
    model = tiny_models("nemotron_h")
    ids, vm = prompt(batch=1)
    with torch.no_grad():
        out = model(ids, use_cache=True)
        with reduce(model, PROGRESSIVE, visual_mask=vm):
            with pytest.raises(InputError, match="not filled under this reduction"):
                model(ids[:, -1:], **{cache_kwarg(model): output_cache(out)}, use_cache=True)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"visual_mask": None}, "needs visual_mask"),
        ({"visual_mask": torch.zeros(1, 36, dtype=torch.bool)}, "no visual tokens"),
        ({"query_mask": torch.ones(1, 36, dtype=torch.bool)}, "query tokens must be text tokens"),
        ({"schedule": {"method": "progressive", "keep": 1.5}}, r"keep must lie in \(0, 1\]"),
        ({"schedule": {"method": "progressive", "keep": None, "shape": "explicit", "ratios": [0.5, 0.7]}}, "non-inc"),
        ({"schedule": {"method": "progressive", "keep": 0.5, "stages": [2, 9]}}, "outside the model"),
    ],
)
def test_bad_arguments(kwargs, message, tiny_models):
    model = tiny_models("nemotron_h")
    _, vm = prompt(batch=1)
    args = {"schedule": PROGRESSIVE, "visual_mask": vm, **kwargs}
    with pytest.raises(InputError, match=message):
        with reduce(model, **args):
            pass


def test_a_prompt_of_another_length_is_refused(tiny_models):
    model = tiny_models("nemotron_h")
    ids, vm = prompt(batch=1)
    with reduce(model, PROGRESSIVE, visual_mask=vm), pytest.raises(InputError, match="context.frozen"):
        _logits(model, ids[:, :-2], torch.ones_like(ids[:, :-2]))


def test_evs_then_progressive(tiny_models):
    """EVS drops static tokens before the language model; `reduce` then works on what remains."""
    from hybridreduce.evs import apply_retention, evs_retention_mask

    model = tiny_models("bamba")  # RoPE: EVS's original position ids must survive the engine's slicing
    ids, vm = prompt(batch=1)  # 24 visual tokens = 6 frames of a 2×2 grid
    embeds = torch.randn(6, 4, 8, generator=torch.Generator().manual_seed(0))
    retention = evs_retention_mask(embeds, rate=0.5)
    evs = apply_retention(ids, vm, retention)
    am = torch.ones_like(evs.inputs)  # explicit: position ids with gaps and no mask read as packed sequences
    with torch.no_grad():
        ref = model(evs.inputs, attention_mask=am, position_ids=evs.position_ids).logits
    keep_all = Schedule.preset("progressive", keep=1.0, first_prune=1, stages=2)
    with reduce(model, keep_all, visual_mask=evs.visual_mask) as red, torch.no_grad():
        out = model(evs.inputs, attention_mask=am, position_ids=evs.position_ids).logits
    assert red.block_visual[-1] == int(retention.sum()) and torch.equal(out, ref)
    with reduce(model, PROGRESSIVE, visual_mask=evs.visual_mask) as red, torch.no_grad():
        out = model(evs.inputs, attention_mask=am, position_ids=evs.position_ids).logits
    assert red.block_visual[0] == int(retention.sum()) > red.block_visual[-1]
    assert torch.isfinite(out).all()


# --------------------------------------------------------------------------------------------------
# Training under reduction (DESIGN decision 11)
# --------------------------------------------------------------------------------------------------
def _gradient_gap(arch: str) -> tuple[float, float]:
    """``(max |grad − reference grad|, max |reference grad|)`` of a cross-entropy on the reduced logits."""
    from hybridreduce.tiny_models import build_tiny_model, left_pad, make_prompt

    model = build_tiny_model(arch, seed=0).train()
    vocab = model.config.vocab_size
    ids, am, vm = left_pad([make_prompt(vocab, 3, 24, 9, seed=1), make_prompt(vocab, 6, 24, 3, seed=2)])
    target = torch.randint(0, vocab, ids.shape, generator=torch.Generator().manual_seed(0))

    def grads_of(logits, rows):
        model.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), target.gather(1, rows).flatten())
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    with reduce(model, PROGRESSIVE, visual_mask=vm) as red:
        got = model(input_ids=ids, attention_mask=am, use_cache=False).logits
    assert got.requires_grad and red.block_visual[-1] < red.block_visual[0]
    rows = red.output_positions
    got_grads = grads_of(got, rows)
    ref = reduction.pruned_reference(model, ids, am, red.stages, grad=True)
    ref_grads = grads_of(ref, rows)
    assert len(ref_grads) > 10
    zero = torch.zeros(())  # a parameter without a gradient on one side counts as a zero gradient there
    worst = max(float((got_grads.get(n, zero) - ref_grads.get(n, zero)).abs().max()) for n in {*got_grads, *ref_grads})
    scale = max(float(g.abs().max()) for g in ref_grads.values())
    return worst, scale


@pytest.mark.parametrize("arch", ["nemotron_h", "bamba", "jamba", "zamba2"])
def test_training_under_reduce_has_the_gradient_of_the_hand_built_reference(arch):
    """A loss on the logits under reduce() back-propagates exactly as through the per-stage reference runs:
    gathers pass gradients to the kept rows, scores (no gradient) only choose them."""
    worst, scale = _gradient_gap(arch)
    print(f"{arch}: max |grad - reference grad| = {worst:.2e} (max |grad| {scale:.2e})")
    assert worst <= 1e-5 * max(1.0, scale)


def test_the_gradient_check_catches_a_cut_that_stops_the_gradient(monkeypatch):
    """Detach the residual stream at every cut: blocks before the cut get no gradient and the check fails."""
    real = engine_mod.gather_seq
    monkeypatch.setattr(engine_mod, "gather_seq", lambda t, idx, T: real(t, idx, T).detach())
    worst, scale = _gradient_gap("nemotron_h")
    assert worst > 1e-3 * scale


@pytest.mark.parametrize("combine", ["drop", "merge"])
def test_the_engine_never_reads_the_record(tiny_models, combine):
    """DESIGN decision 16: the cache owns each stage's selection. Scrambling the user-facing record after the prefill
    changes neither decoding nor the frozen replay."""
    model = tiny_models("nemotron_h")
    ids, vm = prompt(batch=2)
    am = torch.ones_like(ids)
    am[0, :2] = 0  # padding: decode steps rebuild the masks over each block's own keys
    more = torch.cat([am, torch.ones_like(am[:, :1])], dim=1)
    sched = Schedule(keep=0.4, first_prune=1, stages=3, combine=combine)
    outputs = []
    for scramble in (False, True):
        context = reduce(model, sched, visual_mask=vm)
        with context as red, torch.no_grad():
            out = model(ids, attention_mask=am, use_cache=True)
            if scramble:
                for stage in red.stages:
                    stage.index = stage.index.flip(1)
                    stage.sizes = None
                red.stages = red.stages[:1]
            cache = output_cache(out)
            step = model(ids[:, -1:], attention_mask=more, **{cache_kwarg(model): cache}, use_cache=True).logits
            with context.frozen():
                replay = model(torch.cat([ids, ids[:, -1:]], dim=1), attention_mask=more).logits
        outputs.append((step, replay))
    assert torch.equal(outputs[0][0], outputs[1][0]) and torch.equal(outputs[0][1], outputs[1][1])


def test_nested_contexts_are_refused_at_entry(tiny_models):
    """Issue 26: a second reduce() or capture() on a model already held refuses in __enter__, whatever blocks the two
    tap, and the model is free again after the outer context ends."""
    from hybridreduce import capture

    model = tiny_models("nemotron_h")
    ids, vm = prompt(batch=1)
    outer = Schedule(keep=None, shape="explicit", ratios=(0.5,), stages=(1,))
    inner = Schedule(keep=None, shape="explicit", ratios=(0.5,), stages=(5,))  # taps another block
    with reduce(model, outer, visual_mask=vm):
        with pytest.raises(InputError, match="already active on this model"):
            with reduce(model, inner, visual_mask=vm):
                pass
        with pytest.raises(InputError, match="already active on this model"):
            with capture(model, vm):
                pass
    with capture(model, vm) as cache, torch.no_grad():  # free again
        model(ids)
    assert cache.layers
    with reduce(model, inner, visual_mask=vm), torch.no_grad():
        model(ids)
