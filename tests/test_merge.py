"""Merging at a cut and the size-aware blocks (DESIGN decision 14) against float64 references.

The engine-level invariants (merging keeps every token bit for bit at keep 1, equals a hand-built reference,
``generate`` equals the no-cache replay, batch equals per-sample) are registered checks, run on every tiny
architecture by ``tests/test_invariants.py`` (``-k merge``) and by ``hybridreduce verify``. Here: the pure pieces
of :mod:`hybridreduce.merge`, the hooks' effect on a real mixer, and the engine behaviours the checks do not reach.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hybridreduce import InputError, Schedule, reduce
from hybridreduce import engine as engine_mod
from hybridreduce.adapters import get_adapter
from hybridreduce.merge import add_key_bias, assign_merges, merge_rows, scale_steps, softplus_inverse
from hybridreduce.prune import keep_index
from hybridreduce.scoring.mamba import SSM_KINDS, mamba2_primitives

from .conftest import prompt


def _layout(seed: int = 0, b: int = 2, T: int = 14, d: int = 6, k: int = 4):
    """Random float64 hidden states; tokens 2..11 visual; ``k`` visual tokens kept per sample."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(b, T, d, generator=g, dtype=torch.float64)
    visual = torch.zeros(b, T, dtype=torch.bool)
    visual[:, 2:12] = True
    chosen = torch.stack([torch.randperm(10, generator=g)[:k].sort().values for _ in range(b)])
    return hidden, visual, keep_index(visual, chosen)


def test_assignment_matches_a_float64_loop():
    hidden, visual, keep = _layout()
    frames = torch.arange(14).div(3, rounding_mode="floor").expand(2, 14)  # frames of 3 tokens
    for scope, window in (("all", 0), ("frame", 0), ("window", 1)):
        removed, target = assign_merges(hidden, visual, keep, frames, scope, window)
        for i in range(2):
            kept = keep[i].tolist()
            gone = [t for t in range(14) if visual[i, t] and t not in kept]
            assert removed[i].tolist() == gone
            for r, got in zip(gone, target[i].tolist(), strict=True):
                candidates = [t for t in kept if visual[i, t]]
                near = [t for t in candidates if abs(int(frames[i, t]) - int(frames[i, r])) <= window]
                near = candidates if scope == "all" else near
                best, best_cos = None, -math.inf
                for t in near or candidates:  # none in scope: every kept token
                    cos = float(hidden[i, r] @ hidden[i, t] / (hidden[i, r].norm() * hidden[i, t].norm()))
                    if cos > best_cos:
                        best, best_cos = t, cos
                assert kept[got] == best, (scope, i, r)


def test_scope_needs_frames():
    hidden, visual, keep = _layout()
    with pytest.raises(InputError, match="visual_frames"):
        assign_merges(hidden, visual, keep, None, "frame")


def test_merged_rows_and_their_gradient_match_a_float64_loop():
    hidden, visual, keep = _layout()
    hidden.requires_grad_(True)
    sizes = torch.randint(1, 4, (2, 14)).double()
    removed, target = assign_merges(hidden.detach(), visual, keep)
    out, new_sizes = merge_rows(hidden, keep, removed, target, sizes)
    weights = torch.randn_like(out)
    (out * weights).sum().backward()
    for i in range(2):
        into = {}
        for r, t in zip(removed[i].tolist(), target[i].tolist(), strict=True):
            into.setdefault(t, []).append(r)
        for slot, t in enumerate(keep[i].tolist()):
            members = [t] + into.get(slot, [])
            total = sum(float(sizes[i, m]) for m in members)
            expected = sum(hidden[i, m].detach() * float(sizes[i, m]) for m in members) / total
            assert float(new_sizes[i, slot]) == total
            torch.testing.assert_close(out[i, slot], expected, rtol=0, atol=1e-12)
            for m in members:  # d out[slot] / d hidden[m] = s_m / S_slot
                torch.testing.assert_close(hidden.grad[i, m], weights[i, slot] * float(sizes[i, m]) / total)


def test_nothing_merged_is_the_gather_bit_for_bit():
    hidden, visual, keep = _layout()
    hidden = hidden.float()
    none = torch.zeros(2, 0, dtype=torch.long)
    out, sizes = merge_rows(hidden, keep, none, none, None)
    assert torch.equal(out, hidden.gather(1, keep[..., None].expand(-1, -1, 6)))
    assert torch.equal(sizes, torch.ones_like(sizes))


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_proportional_attention_equals_copies_of_the_key(impl):
    """``+log s_j`` on key ``j``'s logits equals ``s_j`` copies of key ``j`` and its value at one position (float64,
    transformers' own attention functions, GQA)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.models.llama.modeling_llama import eager_attention_forward

    g = torch.Generator().manual_seed(1)
    h, kv, d, S, q = 4, 2, 8, 9, 3  # the last q keys are the query tokens (size 1)
    sizes = torch.tensor([[1, 3, 1, 2, 5, 1, 1, 1, 1], [2, 1, 1, 1, 4, 1, 1, 1, 1]], dtype=torch.float64)
    query = torch.randn(2, h, q, d, generator=g, dtype=torch.float64)
    key = torch.randn(2, kv, S, d, generator=g, dtype=torch.float64)
    value = torch.randn(2, kv, S, d, generator=g, dtype=torch.float64)

    class Module(torch.nn.Module):
        is_causal = True
        num_key_value_groups = h // kv
        training = False

    fn = sdpa_attention_forward if impl == "sdpa" else eager_attention_forward
    mask = add_key_bias(None, sizes.log(), q, torch.float64)
    got = fn(Module(), query, key, value, mask, scaling=d**-0.5, dropout=0.0)[0]
    for i in range(2):
        reps = sizes[i].long()
        k_rep, v_rep = key[i : i + 1].repeat_interleave(reps, dim=2), value[i : i + 1].repeat_interleave(reps, dim=2)
        S_rep = k_rep.shape[2]
        causal = torch.arange(S_rep)[None, :] <= (S_rep - q + torch.arange(q))[:, None]
        rep_mask = torch.zeros(1, 1, q, S_rep, dtype=torch.float64).masked_fill(~causal, torch.finfo(torch.float64).min)
        want = fn(Module(), query[i : i + 1], k_rep, v_rep, rep_mask, scaling=d**-0.5, dropout=0.0)[0]
        # eager_attention_forward takes its softmax in float32 whatever the dtype; SDPA stays in float64.
        torch.testing.assert_close(got[i : i + 1], want, rtol=0, atol=1e-12 if impl == "sdpa" else 1e-6)


def test_key_bias_keeps_masked_keys_masked():
    bias = torch.log(torch.tensor([[1.0, 4.0, 2.0]]))
    allowed = torch.tensor([[[[True, False, True]]]])
    out = add_key_bias(allowed, bias, 1, torch.float32)
    assert out[0, 0, 0, 1] == torch.finfo(torch.float32).min
    assert torch.equal(out[0, 0, 0, [0, 2]], bias[0, [0, 2]])


def test_scaled_steps_give_size_times_the_clamped_step():
    g = torch.Generator().manual_seed(2)
    raw = torch.randn(2, 7, 3, generator=g, dtype=torch.float64) * 3
    bias = torch.randn(3, generator=g, dtype=torch.float64)
    mult = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)
    sizes = torch.tensor([[1, 2, 3, 1, 8, 1, 40], [1, 1, 1, 1, 1, 1, 2]], dtype=torch.float64)
    lo, hi = 0.05, 1.5
    out = scale_steps(raw, sizes, bias, (lo, hi), mult)

    def step(x):
        return F.softplus(x * mult + bias).clamp(lo, hi)

    want = (step(raw) * sizes[..., None]).clamp(max=hi)
    torch.testing.assert_close(step(out), want, rtol=1e-12, atol=1e-12)
    ones = sizes == 1
    assert torch.equal(out[ones], raw[ones])  # size 1: bit for bit
    assert torch.allclose(softplus_inverse(F.softplus(raw)), raw, atol=1e-9)


def test_step_scaling_against_repeated_tokens_measured():
    """One step of ``sΔ`` against ``s`` repeats of the token in a float64 scan: the state decay is exact and the
    input term's relative error stays within its first-order size ``(s − 1)|ΔA|/2`` (plus a second-order margin).
    The measured worst case is printed."""
    g = torch.Generator().manual_seed(3)
    worst = 0.0
    for _ in range(200):
        dt = float(torch.empty(1).uniform_(0.001, 0.2, generator=g))
        A = -float(torch.empty(1).uniform_(0.1, 2.0, generator=g))
        s = int(torch.randint(2, 9, (1,), generator=g))
        h0, Bx = float(torch.randn(1, generator=g)), float(torch.randn(1, generator=g))
        rep = h0
        for _ in range(s):  # s repeats: h <- e^(ΔA) h + Δ B x
            rep = math.exp(dt * A) * rep + dt * Bx
        one = math.exp(s * dt * A) * h0 + s * dt * Bx
        x = abs(dt * A)
        input_error = abs((one - math.exp(s * dt * A) * h0) - (rep - math.exp(s * dt * A) * h0)) / abs(s * dt * Bx)
        assert input_error <= (s - 1) * x / 2 + (s * x) ** 2, (dt, A, s)
        worst = max(worst, input_error)
    print(f"relative error of the input term, worst of 200: {worst:.3e}")


def _grab(module, store):
    def hook(mod, args, output):
        store.append(output.detach().clone())

    return module.register_forward_hook(hook)


@pytest.mark.parametrize("arch", ["nemotron_h", "falcon_h1", "bamba"])
def test_merged_tokens_get_size_times_their_step_in_the_mixer(tiny_models, arch):
    """Through the engine's hook on a real mixer: the step of every carried token is ``size · Δ`` (clamped), the
    others' raw channels are bit for bit what the mixer computed."""
    model = tiny_models(arch)
    adapted = get_adapter(model)
    ids, vm = prompt(batch=2)
    spec = next(s for s in adapted.blocks if s.ssm is not None and s.index >= 2)
    kind = SSM_KINDS[spec.ssm_type]
    site = kind.step_module(spec.ssm)
    sched = Schedule(keep=None, shape="explicit", ratios=(0.25,), stages=(spec.index,), combine="merge")
    plain = Schedule(keep=None, shape="explicit", ratios=(0.25,), stages=(spec.index,), combine="merge",
                     size_aware=False)  # fmt: skip
    seen: dict[str, list] = {"aware": [], "plain": []}
    for name, s in (("aware", sched), ("plain", plain)):
        with reduce(model, s, visual_mask=vm) as red, torch.no_grad():
            handle = _grab(site, seen[name])  # after the engine's hook: sees the scaled output
            try:
                model(ids)
            finally:
                handle.remove()
    sizes = red.stages[1].sizes
    assert sizes is not None and float(sizes.max()) > 1
    aware, base = seen["aware"][0], seen["plain"][0]
    d_aware = mamba2_primitives(spec.ssm, aware, with_x=False).dt
    d_base = mamba2_primitives(spec.ssm, base, with_x=False).dt
    hi = float(spec.ssm.time_step_limit[1])
    assert torch.equal(aware[..., : -spec.ssm.num_heads], base[..., : -spec.ssm.num_heads])
    want = (d_base * sizes[..., None]).clamp(max=hi)
    torch.testing.assert_close(d_aware, want, rtol=2e-5, atol=1e-6)
    ones = sizes == 1
    assert torch.equal(aware[ones], base[ones])


def test_size_one_everywhere_equals_drop(tiny_models, monkeypatch):
    """DESIGN decision 14: the size-aware path with every size 1 is drop, bit for bit. Merging is replaced by a
    plain gather that reports sizes of 1, so the size-aware hooks are installed but see no size above 1."""
    model = tiny_models("nemotron_h")
    ids, vm = prompt(batch=2)
    settings = {"keep": 0.4, "first_prune": 1, "stages": 3}

    def gather_only(hidden, keep, removed, target, sizes):
        kept = hidden.gather(1, keep[..., None].expand(-1, -1, hidden.shape[-1]))
        return kept, torch.ones(keep.shape, device=hidden.device)

    with torch.no_grad():
        with reduce(model, Schedule(**settings), visual_mask=vm):
            drop = model(ids).logits
        monkeypatch.setattr(engine_mod, "merge_rows", gather_only)
        with reduce(model, Schedule(**settings, combine="merge"), visual_mask=vm) as red:
            merged = model(ids).logits
    assert red.stages[-1].merged is not None  # the merge path ran
    assert torch.equal(drop, merged)


def test_merging_is_on_the_record(tiny_models):
    model = tiny_models("bamba")
    ids, vm = prompt(batch=2)
    with reduce(model, Schedule(keep=0.4, first_prune=1, stages=2, combine="merge"), visual_mask=vm) as red:
        model(ids)
    V = red.stages[0].n_visual
    for stage in red.stages[1:]:
        removed, into = stage.merged
        assert stage.sizes.shape == stage.index.shape
        assert torch.equal(stage.sizes.sum(1), torch.full((2,), float(stage.index.shape[1] - stage.n_visual + V)))
        before = red.stages[red.stages.index(stage) - 1]
        assert removed.shape[1] + stage.n_visual == before.n_visual  # every removed token went somewhere
        for i in range(2):
            assert bool(torch.isin(into[i], stage.index[i]).all()) and not bool(
                torch.isin(removed[i], stage.index[i]).any()
            )
    assert red.merging_seconds > 0 and red.summary()["merging_seconds"] == red.merging_seconds
    with reduce(model, Schedule(keep=0.4, first_prune=1, stages=2), visual_mask=vm) as dropped:
        model(ids)
    assert dropped.merging_seconds == 0.0  # dropping merges nothing and times nothing


def test_merge_scope_frame_merges_within_the_frame(tiny_models):
    model = tiny_models("nemotron_h")
    ids, vm = prompt(batch=1)  # visual tokens at 4..27
    frames = torch.full_like(ids, -1)
    frames[:, 4:28] = torch.arange(24).div(6, rounding_mode="floor")  # 4 frames of 6 tokens
    sched = Schedule(keep=None, shape="explicit", ratios=(0.5,), stages=(2,), combine="merge", merge_scope="frame")
    with reduce(model, sched, visual_mask=vm, visual_frames=frames) as red:
        model(ids)
    removed, into = red.stages[1].merged
    assert torch.equal(frames.gather(1, removed), frames.gather(1, into))
    with pytest.raises(InputError, match="visual_frames"):
        reduce(model, sched, visual_mask=vm)


def test_flash_attention_refuses_size_aware_merging(tiny_models, monkeypatch):
    model = tiny_models("nemotron_h")
    ids, vm = prompt(batch=1)
    adapted = get_adapter(model)
    monkeypatch.setattr(type(adapted), "attn_implementation", property(lambda self: "flash_attention_2"))
    with pytest.raises(InputError, match="size_aware: false"):
        with reduce(model, Schedule(keep=0.5, first_prune=1, combine="merge"), visual_mask=vm):
            pass


def test_mamba1_steps_are_left_unscaled_with_a_warning(tiny_models):
    """Jamba's mixer multiplies ``dt_proj.weight`` in itself: no module emits its steps, so size-aware merging
    scales only its attention, and says so."""
    model = tiny_models("jamba")
    ids, vm = prompt(batch=1)
    with pytest.warns(UserWarning, match="cannot scale the steps"):
        with reduce(model, Schedule(keep=0.5, first_prune=1, combine="merge"), visual_mask=vm), torch.no_grad():
            model(ids)
