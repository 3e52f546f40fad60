"""Shared fixtures: tiny random models (built once per session) and quiet transformers logs."""

from __future__ import annotations

import pytest
import torch

from hybridreduce.tiny import TINY_CONFIGS, build_tiny_model

ARCHS = list(TINY_CONFIGS)
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
