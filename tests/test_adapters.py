"""Adapter registry: block layouts per family, wrappers, and the errors for unsupported models."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

import hybridreduce
from hybridreduce import InputError, UnsupportedModelError, get_adapter
from hybridreduce.tiny_models import build_tiny_vlm

EXPECTED = {
    "nemotron_h": (["ssm", "mlp", "attn", "moe", "ssm", "attn"], [False] * 6, "mamba2"),
    "jamba": (["ssm", "attn", "ssm", "attn"], [False] * 4, "mamba1"),
    "zamba2": (["ssm", "parallel", "ssm", "parallel", "ssm"], [False, True, False, True, False], "mamba2"),
    "bamba": (["ssm", "attn", "ssm", "attn"], [False, True, False, True], "mamba2"),
    "falcon_h1": (["parallel"] * 3, [True] * 3, "mamba2"),
    "granitemoehybrid": (["ssm", "attn", "ssm", "attn"], [False, True, False, True], "mamba2"),
    "llama": (["attn"] * 3, [True] * 3, None),
    "qwen2": (["attn"] * 3, [True] * 3, None),
    "mamba2": (["ssm"] * 3, [False] * 3, "mamba2"),
}


@pytest.mark.parametrize("arch", list(EXPECTED))
def test_layout(arch, tiny_models):
    adapted = get_adapter(tiny_models(arch))
    kinds, rope, ssm_type = EXPECTED[arch]
    assert adapted.kinds == kinds
    assert [b.rope for b in adapted.blocks] == rope
    for spec in adapted.blocks:
        assert spec.index == adapted.blocks.index(spec)
        if spec.ssm is not None:
            assert spec.ssm_type == ssm_type
            assert hasattr(spec.ssm, "in_proj")
        if spec.attn is not None:
            assert hasattr(spec.attn, "q_proj") and hasattr(spec.attn, "k_proj")
    assert adapted.model_type == arch
    assert adapted.wrapper is None
    assert str(adapted.num_blocks) in adapted.describe()


def test_zamba2_hybrid_layers_hold_distinct_attention_modules(tiny_models):
    """The tap tells shared-attention call sites apart by module identity."""
    adapted = get_adapter(tiny_models("zamba2"))
    attn = [b.attn for b in adapted.blocks if b.attn is not None]
    assert len({id(m) for m in attn}) == len(attn) == 2


@pytest.mark.parametrize("wrapper", ["nemotron_h_omni", "llava_next_video"])
def test_wrappers_resolve_to_their_language_model(wrapper):
    model = build_tiny_vlm(wrapper, "nemotron_h")
    adapted = get_adapter(model)
    assert adapted.wrapper == wrapper
    assert adapted.model_type == "nemotron_h"
    assert adapted.kinds == EXPECTED["nemotron_h"][0]
    expected_lm = model.language_model if wrapper == "nemotron_h_omni" else model.model.language_model
    assert adapted.text_model is expected_lm
    # The blocks are the wrapper's own modules, not copies.
    assert adapted.blocks[0].module is model.get_submodule(adapted.blocks[0].name)


def test_unsupported_model_names_the_supported_types():
    config = AutoConfig.for_model("gpt2", n_embd=16, n_layer=1, n_head=2, vocab_size=50)
    model = AutoModelForCausalLM.from_config(config)
    with pytest.raises(UnsupportedModelError) as err:
        get_adapter(model)
    message = str(err.value)
    assert "'gpt2'" in message
    for model_type in hybridreduce.supported_model_types():
        assert model_type in message


def test_not_a_module():
    with pytest.raises(UnsupportedModelError, match="torch.nn.Module"):
        get_adapter("nemotron_h")


def test_meta_device_model_is_rejected():
    from hybridreduce.tiny_models import tiny_config

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(tiny_config("llama"))
    with pytest.raises(InputError, match="meta device"):
        get_adapter(model)


def test_supported_types_cover_the_issue_list():
    wanted = {"nemotron_h", "jamba", "zamba2", "bamba", "falcon_h1", "granitemoehybrid", "llama", "qwen2", "mamba2"}
    assert wanted <= set(hybridreduce.supported_model_types())


def test_an_adapter_registered_twice_is_refused():
    """Issue 27: the adapter registry refuses a model type registered twice, like methods and invariants."""
    from hybridreduce.adapters import _REGISTRY, register_adapter
    from hybridreduce.adapters.nemotron_h import NemotronHAdapter

    original = _REGISTRY["nemotron_h"]
    with pytest.raises(ValueError, match="already have an adapter"):
        register_adapter(NemotronHAdapter())
    assert _REGISTRY["nemotron_h"] is original
    register_adapter(original)  # the same adapter again is not a clash
    replacement = NemotronHAdapter()
    try:
        assert register_adapter(replacement, replace=True) is replacement and _REGISTRY["nemotron_h"] is replacement
    finally:
        register_adapter(original, replace=True)


def test_an_unknown_nemotron_block_type_is_a_typed_error(tiny_models):
    """Issue 27: a block type the adapter does not know is an UnsupportedModelError naming it and the fix."""
    from hybridreduce.adapters.nemotron_h import NemotronHAdapter

    model = tiny_models("nemotron_h")
    block = model.model.layers[0]
    saved = block.block_type
    block.block_type = "hyena"
    try:
        with pytest.raises(UnsupportedModelError, match="'hyena'.*adding-an-architecture"):
            NemotronHAdapter().block_spec(0, block, model.config, "model.layers.0")
    finally:
        block.block_type = saved
