"""Shared fixtures: tiny random models (built once per session) and quiet transformers logs."""

from __future__ import annotations

import copy

import pytest
import torch

from hybridreduce.tiny_models import TINY_CONFIGS, build_tiny_model
from hybridreduce.toy.train_config import ToySpec, spec_from_dict

ARCHS = list(TINY_CONFIGS)

#: A tiny toy benchmark (12 frames of 2×2 patches: V = 48) and toy VLM (width 32, the default 12-block Nemotron-H
#: pattern) that trains for a few steps in about a second: the test suite's stand-in for the shipped checkpoint.
TINY_TOY = {
    "data": {"frames": 12, "height": 16, "width": 16, "n_events": [4, 5], "event_len": [2, 2], "seed": 3},
    "model": {
        "vision_hidden": 16,
        "text": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "head_dim": 16,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "mamba_num_heads": 2,
            "mamba_head_dim": 16,
            "ssm_state_size": 8,
            "chunk_size": 16,
        },
    },
    "train": {"steps": 3, "batch_size": 4, "warmup": 1, "log_every": 1},
}


def tiny_toy_raw(**train) -> dict:
    """A fresh copy of :data:`TINY_TOY` with ``train`` settings overridden."""
    raw = copy.deepcopy(TINY_TOY)
    raw["train"].update(train)
    return raw


#: The variants of a tiny mixed run: ``static``, and ``clutter`` with as few distractors as the 12-frame 2×2 grid holds
#: (the preset's 20–26 would fill it).
TINY_VARIANTS = {"static": {}, "clutter": {"distractors": [1, 1], "camera_step": 4}}


def tiny_mixed_raw(**train) -> dict:
    """:func:`tiny_toy_raw` trained on both benchmark variants (:data:`TINY_VARIANTS`)."""
    raw = tiny_toy_raw(**train)
    raw["data"]["variants"] = copy.deepcopy(TINY_VARIANTS)
    return raw


def tiny_toy_spec(**train) -> ToySpec:
    """The :class:`ToySpec` of :data:`TINY_TOY` with ``train`` settings overridden."""
    return spec_from_dict(tiny_toy_raw(**train))


HYBRID_ARCHS = ["nemotron_h", "jamba", "zamba2", "bamba", "falcon_h1", "granitemoehybrid"]


@pytest.fixture(autouse=True, scope="session")
def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


@pytest.fixture(scope="session")
def tiny_models():
    """Lazily built tiny models keyed by architecture (read-only: tests must not modify them)."""
    cache: dict[str, torch.nn.Module] = {}

    def get(arch: str, attn_implementation: str | None = None):
        key = f"{arch}:{attn_implementation}"
        if key not in cache:
            cache[key] = build_tiny_model(arch, seed=0, attn_implementation=attn_implementation)
        return cache[key]

    return get


def prompt(vocab: int = 96, prefix: int = 4, visual: int = 24, question: int = 8, batch: int = 2, seed: int = 0):
    """``(input_ids, visual_mask)`` of ``[prefix][visual][question]`` prompts."""
    g = torch.Generator().manual_seed(seed)
    T = prefix + visual + question
    ids = torch.randint(3, vocab, (batch, T), generator=g)
    vm = torch.zeros(batch, T, dtype=torch.bool)
    vm[:, prefix : prefix + visual] = True
    return ids, vm


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread (and do not fight other processes for cores); a module opts in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def figures(monkeypatch):
    """The matplotlib figures a plotting function closes, kept open for inspection (closed after the test)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kept, close = [], plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: kept.append(fig))
    yield kept
    close("all")
