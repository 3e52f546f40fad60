"""hybridreduce.compat: the one module that knows transformers' call signatures, and the engine's use of it.

The engine slices exactly the block arguments each adapter declares; these tests feed blocks an argument
transformers might add or rename in a future release and check that the engine refuses it loudly instead
of slicing or passing it on by a guess.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from hybridreduce import Schedule, compat, reduce
from hybridreduce.adapters import get_adapter, supported_model_types
from hybridreduce.errors import CompatibilityError, InputError

from .conftest import prompt

PROGRESSIVE = Schedule.preset("progressive", keep=0.5, first_prune=1, stages=2)


# --------------------------------------------------------------------------------------------------
# Versions
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "version, tested",
    [
        ("5.23.0", True),
        ("5.24.0", True),
        ("5.24.3", True),
        ("5.24.0.dev0", True),
        ("5.22.1", False),
        ("5.25.0", False),
        ("5.25.0.dev0", False),
        ("6.0.0", False),
        ("4.57.1", False),
    ],
)
def test_tested_range(version, tested):
    assert compat.is_tested(version) is tested


def test_the_installed_version_is_tested():
    """CI installs only tested releases; a failure here means constraints.txt and compat disagree."""
    assert compat.is_tested(), f"transformers {compat.VERSION} is outside {compat.SUPPORTED_RANGE}"


def test_the_warning_comes_once_and_names_the_fix(monkeypatch):
    monkeypatch.setattr(compat, "_warned", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert compat.warn_if_untested("5.99.0") is True
        assert compat.warn_if_untested("5.99.0") is False  # once per process
        assert compat.warn_if_untested("5.23.0") is False
    assert len(caught) == 1
    text = str(caught[0].message)
    assert "5.99.0" in text and "check_transformers.sh" in text and "5.23.0" in text


def test_requirement_bounds_match_the_tested_range():
    """pyproject's transformers requirement is exactly SUPPORTED_RANGE, and constraints.txt pins a tested release."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    pyproject = (root / "pyproject.toml").read_text()
    assert f'"transformers{compat.SUPPORTED_RANGE[0]},{compat.SUPPORTED_RANGE[1]}"' in pyproject
    pins = dict(line.split("==") for line in (root / "constraints.txt").read_text().splitlines() if "==" in line)
    assert pins["transformers"] in compat.TESTED_VERSIONS
    assert pins["torch"] == "2.13.0"


# --------------------------------------------------------------------------------------------------
# Caches
# --------------------------------------------------------------------------------------------------
class _Cache:
    def __init__(self, n):
        self.n = n

    def get_seq_length(self):
        return self.n


@pytest.mark.parametrize("name", compat.CACHE_ARGS)
def test_a_cache_is_found_under_every_name(name):
    assert compat.cache_state({name: _Cache(7)}) == (True, 7)
    assert compat.cache_state({name: None}) == (False, 0)
    assert compat.cache_state({"kv_state": _Cache(7)}) == (False, 0)


def test_cache_kwarg_and_output_cache_round_trip(tiny_models):
    model = tiny_models("nemotron_h")
    ids, _ = prompt()
    with torch.no_grad():
        out = model(ids, use_cache=True)
        cache = compat.output_cache(out)
        assert cache is not None and cache.get_seq_length() == ids.shape[1]
        step = model(ids[:, -1:], **{compat.cache_kwarg(model): cache}, use_cache=True)
    assert compat.output_cache(step).get_seq_length() == ids.shape[1] + 1


# --------------------------------------------------------------------------------------------------
# Declared arguments
# --------------------------------------------------------------------------------------------------
def test_every_adapter_declares_its_sequence_arguments():
    from hybridreduce.adapters import _REGISTRY
    from hybridreduce.adapters.base import SEQUENCE_ARG_KINDS

    for model_type in supported_model_types():
        declared = _REGISTRY[model_type].sequence_args
        assert declared and set(declared.values()) <= set(SEQUENCE_ARG_KINDS), model_type
        assert not set(declared) & compat.NON_SEQUENCE_ARGS, model_type


def _inject(block, name, value):
    """A pre-hook registered before the engine's: the block receives one more keyword argument, built once for
    the whole prompt, as a decoder builds the arguments it hands every block."""

    def hook(module, args, kwargs):
        return args, {**kwargs, name: value}

    return block.register_forward_pre_hook(hook, with_kwargs=True)


@pytest.mark.parametrize("arch", ["nemotron_h", "bamba", "zamba2"])
def test_an_undeclared_sequence_argument_raises_with_its_name_block_and_version(arch, tiny_models):
    model = tiny_models(arch)
    spec = get_adapter(model).blocks[-1]  # reduced in every schedule with a cut
    ids, vm = prompt()
    handle = _inject(spec.module, "token_type_mask", torch.ones(ids.shape, dtype=torch.bool))  # (b, T)
    try:
        with pytest.raises(CompatibilityError) as err, reduce(model, PROGRESSIVE, visual_mask=vm), torch.no_grad():
            model(ids)
    finally:
        handle.remove()
    text = str(err.value)
    assert "'token_type_mask'" in text and type(spec.module).__name__ in text and compat.VERSION in text
    assert "sequence_args" in text


def test_an_undeclared_argument_of_another_length_passes_through(tiny_models):
    """Only sequence-shaped arguments are refused: a per-sample flag reaches the block untouched."""
    model = tiny_models("nemotron_h")
    spec = get_adapter(model).blocks[-1]
    ids, vm = prompt()
    seen = []
    handle = _inject(spec.module, "sample_flag", torch.ones(ids.shape[0], 1))
    spy = spec.module.register_forward_pre_hook(lambda m, a, k: seen.append(k["sample_flag"].shape), with_kwargs=True)
    try:
        with reduce(model, PROGRESSIVE, visual_mask=vm), torch.no_grad():
            model(ids)
    finally:
        handle.remove()
        spy.remove()
    assert seen == [torch.Size([2, 1])]


def test_a_declared_argument_of_an_unknown_layout_raises(tiny_models):
    """position_ids laid out as (T, b) instead of (b, T): refused, never gathered along the wrong axis."""
    model = tiny_models("nemotron_h")
    spec = get_adapter(model).blocks[-1]
    ids, vm = prompt(batch=1)

    def hook(module, args, kwargs):
        return args, {**kwargs, "position_ids": torch.arange(ids.shape[1])[:, None, None]}

    handle = spec.module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with pytest.raises(CompatibilityError, match="'position_ids'.*declares it a tokens argument"):
            with reduce(model, PROGRESSIVE, visual_mask=vm), torch.no_grad():
                model(ids)
    finally:
        handle.remove()


def test_a_block_called_with_more_positional_arguments_than_it_names_raises():
    class Block(torch.nn.Module):
        def forward(self, hidden_states, attention_mask=None):
            return hidden_states

    assert compat.positional_names(Block(), 2) == ("hidden_states", "attention_mask")
    with pytest.raises(CompatibilityError, match="received 3 positional arguments"):
        compat.positional_names(Block(), 3)


# --------------------------------------------------------------------------------------------------
# Forwards the engine cannot classify
# --------------------------------------------------------------------------------------------------
def test_a_decode_step_with_its_cache_under_an_unknown_name_says_so(tiny_models):
    """What 5.24's rename looked like to 5.23-era code: a decode step without a (known) cache."""
    model = tiny_models("nemotron_h")
    decoder = get_adapter(model).decoder
    ids, vm = prompt()

    def rename(module, args, kwargs):
        kwargs = dict(kwargs)
        for name in compat.CACHE_ARGS:
            if name in kwargs:
                kwargs["kv_state"] = kwargs.pop(name)
        return args, kwargs

    handle = decoder.register_forward_pre_hook(rename, with_kwargs=True)
    try:
        with pytest.raises(InputError) as err, reduce(model, PROGRESSIVE, visual_mask=vm), torch.no_grad():
            model.generate(ids, max_new_tokens=2, do_sample=False, pad_token_id=0)
    finally:
        handle.remove()
    text = str(err.value)
    assert "cannot be classified" in text and "kv_state" in text and "check_transformers.sh" in text


def test_mixer_padding_mask_by_keyword_or_position():
    class Mixer(torch.nn.Module):
        def forward(self, hidden_states, cache=None, attention_mask=None):
            return hidden_states

    m, mask, h = Mixer(), torch.ones(2, 5), torch.zeros(2, 5, 3)
    assert compat.mixer_padding_mask(m, (h,), {"attention_mask": mask}) is mask
    assert compat.mixer_padding_mask(m, (h, None, mask), {}) is mask
    assert compat.mixer_padding_mask(m, (h, None), {}) is None
    assert compat.mixer_padding_mask(m, (h,), {"attention_mask": torch.ones(2, 1, 5, 5)}) is None  # not 2-D
