"""``capture``: what it records, what it leaves untouched, and how it fails on bad input."""

from __future__ import annotations

import warnings

import pytest
import torch

import hybridreduce
from hybridreduce import InputError, ScoreCache, ScoreError, capture
from hybridreduce.taps import ATTENTION_DISPATCH, resolve_positions
from hybridreduce.tiny_models import build_tiny_vlm

from .conftest import ARCHS, prompt


@pytest.mark.parametrize("arch", ARCHS)
def test_scores_are_distributions_over_visual_tokens(arch, tiny_models):
    model = tiny_models(arch)
    ids, vm = prompt()
    with capture(model, vm) as cache, torch.no_grad():
        model(ids)
    adapted = hybridreduce.get_adapter(model)
    assert cache.layers == [b.index for b in adapted.scoring_blocks]
    stacked = cache.stack()
    assert stacked.shape == (len(cache.layers), 2, 24)
    assert stacked.dtype == torch.float32
    assert torch.allclose(stacked.sum(-1), torch.ones(len(cache.layers), 2), atol=1e-6)
    assert bool((stacked >= 0).all())
    assert torch.equal(cache.visual_positions, torch.arange(4, 28).expand(2, 24))
    for layer in cache.layers:
        parts = cache.parts[layer]
        assert set(parts) == (
            {"attn", "ssm"}
            if cache.block_kinds[layer] == "parallel"
            else {"attn" if cache.block_kinds[layer] == "attn" else "ssm"}
        )
        if len(parts) == 2:
            assert torch.allclose(cache[layer], (parts["attn"] + parts["ssm"]) / 2)


def test_eager_and_sdpa_give_the_same_scores():
    from hybridreduce.tiny_models import build_tiny_model

    ids, vm = prompt()
    caches = []
    for impl in ("eager", "sdpa"):
        model = build_tiny_model("bamba", attn_implementation=impl)
        with capture(model, vm) as cache, torch.no_grad():
            model(ids)
        caches.append(cache)
    assert (caches[0].stack() - caches[1].stack()).abs().max() < 1e-6


def test_query_modes_select_the_documented_rows(tiny_models):
    model = tiny_models("llama")
    ids, vm = prompt(batch=1)
    T = ids.shape[1]
    after = resolve_positions(vm)
    assert after.q_index.tolist() == [list(range(28, T))]
    assert resolve_positions(vm, query="last").q_index.tolist() == [[T - 1]]
    all_text = resolve_positions(vm, query="all_text").q_index.tolist()[0]
    assert all_text == [0, 1, 2, 3, *range(28, T)]
    qm = torch.zeros_like(vm)
    qm[0, [30, 33]] = True
    assert resolve_positions(vm, query_mask=qm).q_index.tolist() == [[30, 33]]
    # "last" scores from a single row; the default averages several, so the vectors differ.
    results = {}
    for mode in ("after_visual", "last"):
        with capture(model, vm, query=mode, scorer={"record_rows": True}) as cache, torch.no_grad():
            model(ids)
        results[mode] = cache.stack()
        assert cache.rows[0].shape[2] == (1 if mode == "last" else T - 28)
    assert (results["after_visual"] - results["last"]).abs().max() > 1e-4


def test_right_padding_last_query_is_the_last_real_token():
    vm = torch.zeros(2, 10, dtype=torch.bool)
    vm[:, 1:5] = True
    am = torch.ones(2, 10, dtype=torch.long)
    am[1, 8:] = 0
    pos = resolve_positions(vm, am, query="last")
    assert pos.q_index.tolist() == [[9], [7]]
    pos = resolve_positions(vm, am)
    assert pos.q_index.tolist() == [[5, 6, 7, 8, 9], [5, 6, 7, 7, 7]]
    assert pos.q_valid.tolist() == [[True] * 5, [True, True, True, False, False]]


@pytest.mark.parametrize("arch", ["nemotron_h", "jamba", "bamba"])
def test_generate_inside_capture_scores_the_prefill_only(arch, tiny_models):
    model = tiny_models(arch)
    ids, vm = prompt(batch=1)
    with capture(model, vm) as plain, torch.no_grad():
        model(ids)
    with capture(model, vm) as during, torch.no_grad():
        out = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert out.shape[1] == ids.shape[1] + 4
    assert during.layers == plain.layers
    assert (during.stack() - plain.stack()).abs().max() < 1e-6


def test_capture_through_vlm_wrapper_equals_language_model():
    vlm = build_tiny_vlm("llava_next_video", "nemotron_h")
    lm = hybridreduce.get_adapter(vlm).text_model
    ids, vm = prompt()
    with capture(vlm, vm) as via_wrapper, torch.no_grad():
        vlm(input_ids=ids)
    with capture(lm, vm) as direct, torch.no_grad():
        lm(input_ids=ids)
    assert via_wrapper.layers == direct.layers and len(direct) == 4
    assert torch.equal(via_wrapper.stack(), direct.stack())


def test_nested_captures_restore_the_attention_interface(tiny_models):
    from hybridreduce.compat import local_attention_registrations

    before = local_attention_registrations()
    a, b = tiny_models("llama"), tiny_models("bamba")
    ids, vm = prompt()
    with capture(a, vm) as ca:
        with capture(b, vm) as cb, torch.no_grad():
            b(ids)
        with torch.no_grad():
            a(ids)
    assert len(ca) == 3 and len(cb) == 4
    assert local_attention_registrations() == before
    assert not ATTENTION_DISPATCH.active()


def test_a_second_context_on_the_same_model_is_refused(tiny_models):
    model = tiny_models("bamba")
    ids, vm = prompt()
    with capture(model, vm) as outer:
        with pytest.raises(InputError, match="already active"):
            with capture(model, vm):
                pass
        with torch.no_grad():
            model(ids)  # the outer context still scores every block
    assert len(outer) == 4
    assert not ATTENTION_DISPATCH.active()


def test_score_cache_save_load_and_messages(tmp_path, tiny_models):
    model = tiny_models("nemotron_h")
    ids, vm = prompt()
    with capture(model, vm, scorer="exact") as cache, torch.no_grad():
        model(ids)
    path = cache.save(tmp_path / "scores.safetensors")
    loaded = ScoreCache.load(path)
    assert loaded.layers == cache.layers and loaded.block_kinds == cache.block_kinds
    assert torch.equal(loaded.stack(), cache.stack())
    assert loaded.scorer["mamba"] == "exact"
    assert torch.equal(loaded.visual_positions, cache.visual_positions)
    with pytest.raises(KeyError, match="kind 'mlp'"):
        cache[1]
    assert cache.cpu().detach().stack().shape == cache.stack().shape
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match="not a readable"):
        ScoreCache.load(tmp_path / "junk.safetensors")
    with pytest.raises(InputError, match="does not exist"):
        ScoreCache.load(tmp_path / "missing.safetensors")


# -- bad input ---------------------------------------------------------------------------------------
def test_bad_masks_are_named(tiny_models):
    model = tiny_models("nemotron_h")
    ids, vm = prompt()
    with pytest.raises(InputError, match="add the batch dimension"):
        with capture(model, vm[0]):
            pass
    with pytest.raises(InputError, match="must be a bool tensor"):
        with capture(model, vm.float()):
            pass
    with pytest.raises(InputError, match="values other than 0 and 1"):
        with capture(model, vm.long() * 2):
            pass
    with pytest.raises(InputError, match="torch.Tensor"):
        with capture(model, [[True, False]]):
            pass
    with pytest.raises(InputError, match="received 36 tokens"):
        with capture(model, vm[:, :30]), torch.no_grad():
            model(ids)
    with pytest.raises(InputError, match="batch size"):
        with capture(model, vm[:1]), torch.no_grad():
            model(ids)
    ragged = vm.clone()
    ragged[1, 4] = False
    with pytest.raises(InputError, match="different numbers of visual tokens"):
        with capture(model, ragged):
            pass
    with pytest.raises(InputError, match="query="):
        with capture(model, vm, query="first"):
            pass


def test_no_query_tokens(tiny_models):
    model = tiny_models("nemotron_h")
    vm = torch.zeros(1, 20, dtype=torch.bool)
    vm[0, 10:] = True  # visual tokens run to the end: nothing after them
    with pytest.raises(InputError, match="no query tokens"):
        with capture(model, vm):
            pass
    with pytest.raises(InputError, match="picks a visual token"):
        with capture(model, vm, query="last"):
            pass
    qm = torch.zeros_like(vm)
    qm[0, 12] = True
    with pytest.raises(InputError, match="overlaps"):
        with capture(model, vm, query_mask=qm):
            pass


def test_no_visual_tokens_warns_and_returns_an_empty_cache(tiny_models):
    model = tiny_models("nemotron_h")
    ids, vm = prompt()
    with pytest.warns(UserWarning, match="no visual tokens"):
        with capture(model, torch.zeros_like(vm)) as cache, torch.no_grad():
            model(ids)
    assert len(cache) == 0
    assert cache.stack().shape == (0, 2, 0)


def test_non_finite_scores_raise_a_named_error(tiny_models):
    from hybridreduce.tiny_models import build_tiny_model

    model = build_tiny_model("nemotron_h")
    with torch.no_grad():
        model.model.layers[0].mixer.dt_bias[0] = float("nan")  # Δ of head 0 becomes NaN
    ids, vm = prompt()
    with pytest.raises(ScoreError, match="block 0 .*non-finite"):
        with capture(model, vm), torch.no_grad():
            model(ids)
    assert not ATTENTION_DISPATCH.active()
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    assert hooks == 0


def test_capture_does_not_warn_on_good_input(tiny_models):
    model = tiny_models("zamba2")
    ids, vm = prompt()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        with capture(model, vm), torch.no_grad():
            model(ids)
