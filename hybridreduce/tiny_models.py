"""Tiny random-weight models built from configurations, one per supported architecture.

Not to be confused with :mod:`hybridreduce.toy`, the embedded *trained* toy video VLM and its synthetic benchmark:
the models here are untrained, built from a config in milliseconds, and only exercise code paths.

Every check in ``hybridreduce verify`` and every test builds its model from these configs, so
that each adapter is exercised on CPU in seconds and nothing is ever downloaded. The shapes are
chosen to hit the interesting code paths: grouped-query attention (fewer KV heads than query
heads), several SSM groups, a Mamba chunk size smaller than the test sequences (so the chunked
scan crosses chunk boundaries), MoE blocks, and RoPE where the family has it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .errors import InputError

VOCAB = 96
HIDDEN = 32


def _nemotron_h() -> dict[str, Any]:
    return dict(
        model_type="nemotron_h",
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        layers_block_type=["linear_attention", "mlp", "full_attention", "moe", "linear_attention", "full_attention"],
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        intermediate_size=48,
        mamba_num_heads=4,
        mamba_head_dim=16,
        ssm_state_size=8,
        n_groups=2,
        conv_kernel=4,
        chunk_size=8,
        n_routed_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=16,
        moe_shared_expert_intermediate_size=16,
        n_group=1,
        topk_group=1,
    )


def _jamba() -> dict[str, Any]:
    return dict(
        model_type="jamba",
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=48,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        attn_layer_period=2,
        attn_layer_offset=1,
        num_experts=2,
        num_experts_per_tok=1,
        expert_layer_period=2,
        expert_layer_offset=1,
        mamba_d_state=8,
        mamba_d_conv=4,
        mamba_expand=2,
        mamba_dt_rank=4,
    )


def _zamba2() -> dict[str, Any]:
    return dict(
        model_type="zamba2",
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=5,
        layers_block_type=["mamba", "hybrid", "mamba", "hybrid", "mamba"],
        mamba_d_state=8,
        mamba_d_conv=4,
        mamba_expand=2,
        mamba_ngroups=1,
        n_mamba_heads=4,
        mamba_headdim=16,
        chunk_size=8,
        intermediate_size=48,
        num_attention_heads=4,
        num_key_value_heads=4,
        attention_head_dim=16,
        num_mem_blocks=1,
        use_shared_attention_adapter=True,
        adapter_rank=4,
        use_mem_rope=True,
    )


# Shared by the families whose configs name the Mamba-2 mixer with ``mamba_*`` keys.
_MAMBA2_KEYS = dict(
    mamba_n_heads=4,
    mamba_d_head=16,
    mamba_n_groups=2,
    mamba_d_state=8,
    mamba_d_conv=4,
    mamba_expand=2,
    mamba_chunk_size=8,
)
# Grouped-query attention: 4 query heads share 2 KV heads.
_ATTENTION_KEYS = dict(
    vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2
)


def _bamba() -> dict[str, Any]:
    return dict(model_type="bamba", num_hidden_layers=4, attn_layer_indices=[1, 3], **_ATTENTION_KEYS, **_MAMBA2_KEYS)


def _falcon_h1() -> dict[str, Any]:
    return dict(
        model_type="falcon_h1",
        num_hidden_layers=3,
        mamba_d_ssm=64,
        mamba_rms_norm=False,
        # Non-trivial muP multipliers, so that the scorer must apply them like the mixer does.
        ssm_multipliers=[1.0, 0.5, 2.0, 1.5, 0.75],
        key_multiplier=0.8,
        attention_in_multiplier=1.2,
        **_ATTENTION_KEYS,
        **_MAMBA2_KEYS,
    )


def _granitemoehybrid() -> dict[str, Any]:
    return dict(
        model_type="granitemoehybrid",
        num_hidden_layers=4,
        layer_types=["mamba", "attention", "mamba", "attention"],
        num_local_experts=2,
        num_experts_per_tok=1,
        shared_intermediate_size=16,
        position_embedding_type="rope",
        **_ATTENTION_KEYS,
        **_MAMBA2_KEYS,
    )


def _llama() -> dict[str, Any]:
    return dict(model_type="llama", num_hidden_layers=3, **_ATTENTION_KEYS)


def _qwen2() -> dict[str, Any]:
    return _llama() | {"model_type": "qwen2"}


def _mamba2() -> dict[str, Any]:
    return dict(
        model_type="mamba2",
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=3,
        num_heads=4,
        head_dim=16,
        expand=2,
        n_groups=2,
        state_size=8,
        conv_kernel=4,
        chunk_size=8,
    )


TINY_CONFIGS: dict[str, Callable[[], dict[str, Any]]] = {
    "nemotron_h": _nemotron_h,
    "jamba": _jamba,
    "zamba2": _zamba2,
    "bamba": _bamba,
    "falcon_h1": _falcon_h1,
    "granitemoehybrid": _granitemoehybrid,
    "llama": _llama,
    "qwen2": _qwen2,
    "mamba2": _mamba2,
}
"""Architecture name → keyword arguments of its tiny config (``model_type`` included)."""


def tiny_config(arch: str, **overrides: Any):
    """Return a tiny random ``PretrainedConfig`` for ``arch`` (one of ``TINY_CONFIGS``)."""
    from transformers import AutoConfig

    if arch not in TINY_CONFIGS:
        raise InputError(f"no tiny config for {arch!r}; choose from {', '.join(sorted(TINY_CONFIGS))}")
    kwargs = TINY_CONFIGS[arch]() | overrides
    model_type = kwargs.pop("model_type")
    return AutoConfig.for_model(model_type, **kwargs)


def build_tiny_model(arch: str, seed: int = 0, attn_implementation: str | None = None, **overrides: Any):
    """Build the tiny causal LM for ``arch`` with seeded random weights, in float32, eval mode."""
    from transformers import AutoModelForCausalLM

    config = tiny_config(arch, **overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation, dtype=torch.float32)
    return model.eval()


TINY_VLMS = ("nemotron_h_omni", "llava_next_video", "llava_onevision")


def build_tiny_vlm(wrapper: str = "nemotron_h_omni", text_arch: str = "nemotron_h", seed: int = 0):
    """A tiny random vision-language wrapper around the tiny ``text_arch`` language model.

    ``nemotron_h_omni`` (RADIO vision tower, Nemotron-H language model), ``llava_next_video`` (CLIP vision
    tower) or ``llava_onevision`` (SigLIP vision tower), the last two with any supported language model as
    ``text_config``.
    """
    from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText

    text = tiny_config(text_arch).to_dict()
    # One-layer vision tower on 16×16 images of 4×4 patches (16 visual tokens per image).
    tower = dict(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, patch_size=4, image_size=16
    )
    ids = {name: TINY_SPECIAL_TOKENS.index(token) for name, token in (("image_token_id", "<image>"),
                                                                      ("video_token_id", "<video>"))}  # fmt: skip
    if wrapper == "nemotron_h_omni":
        vision = dict(model_type="radio", video_temporal_patch_size=2, **tower)
        config = AutoConfig.for_model(
            wrapper,
            text_config=text,
            vision_config=vision,
            vision_hidden_size=32,
            projector_hidden_size=32,
            image_token_id=ids["image_token_id"],
        )
    elif wrapper == "llava_next_video":
        vision = dict(model_type="clip_vision_model", **tower)
        config = AutoConfig.for_model(wrapper, text_config=text, vision_config=vision, **ids)
    elif wrapper == "llava_onevision":
        vision = dict(model_type="siglip_vision_model", **tower)
        config = AutoConfig.for_model(wrapper, text_config=text, vision_config=vision, **ids)
    else:
        raise InputError(f"no tiny VLM {wrapper!r}; choose from {', '.join(TINY_VLMS)}")
    torch.manual_seed(seed)
    try:
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    except ValueError:
        model = AutoModel.from_config(config, dtype=torch.float32)
    return model.eval()


#: The tiny tokenizer's special tokens, at ids 0, 1, 2, ... (``<image>`` and ``<video>`` are the VLM placeholders).
TINY_SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>", "<image>", "<video>", "<img>", "</img>")
_TINY_WORDS = (
    "A B C D E . , : ? ( ) 0 1 2 3 4 5 6 7 8 9 Frame frame sampled at seconds the a what which is of in on did "
    "how many colour color shape video answer with option letter from given choices directly USER ASSISTANT"
).split()


def tiny_tokenizer():
    """A word-level tokenizer over :data:`TINY_SPECIAL_TOKENS` and a few dozen words (fits the tiny vocabulary)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = list(dict.fromkeys([*TINY_SPECIAL_TOKENS, *_TINY_WORDS]))
    if len(words) > VOCAB:
        raise AssertionError(f"the tiny tokenizer has {len(words)} words for a vocabulary of {VOCAB}")
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        additional_special_tokens=list(TINY_SPECIAL_TOKENS[4:]),
    )


def save_tiny_vlm(path, wrapper: str = "nemotron_h_omni", text_arch: str = "nemotron_h", seed: int = 0, **config):
    """Write a complete tiny video-VLM checkpoint directory: weights, config, tokenizer and video processor config.

    It loads with :func:`hybridreduce.vlm.load` exactly as a downloaded checkpoint does. The video processor
    makes 16×16-pixel frames (4×4 patches of 4 pixels): ``nemotron_h_omni`` gives 4 tokens per tubelet of 2
    frames, ``llava_next_video`` and ``llava_onevision`` 4 tokens per frame (2×2 pooling; OneVision adds one
    closing newline token). ``config`` sets wrapper config fields
    (e.g. ``video_pruning_rate=0.5``).
    """
    from pathlib import Path

    out = Path(path)
    model = build_tiny_vlm(wrapper, text_arch, seed)
    for key, value in config.items():
        if not hasattr(model.config, key):
            raise InputError(f"{wrapper} config has no field {key!r}; give fields of {type(model.config).__name__}")
        setattr(model.config, key, value)
        if hasattr(model, key):
            setattr(model, key, value)
    model.save_pretrained(out)
    tiny_tokenizer().save_pretrained(out)
    if wrapper == "nemotron_h_omni":
        from transformers.models.nemotron_h_omni.video_processing_nemotron_h_omni import (
            NemotronH_Omni_Reasoning_V3VideoProcessor,
        )

        NemotronH_Omni_Reasoning_V3VideoProcessor(
            patch_size=4, video_target_num_patches=16, downsample_ratio=0.5, norm_mean=[0.5] * 3, norm_std=[0.5] * 3
        ).save_pretrained(out)
    elif wrapper == "llava_onevision":
        from transformers.models.llava_onevision.video_processing_llava_onevision import LlavaOnevisionVideoProcessor

        LlavaOnevisionVideoProcessor(
            size={"height": 16, "width": 16}, image_mean=[0.5] * 3, image_std=[0.5] * 3
        ).save_pretrained(out)
        settings = {"num_image_tokens": 16, "vision_feature_select_strategy": "full"}
        (out / "processor_config.json").write_text(json.dumps(settings) + "\n")
    else:
        from transformers.models.llava_next_video.video_processing_llava_next_video import (
            LlavaNextVideoVideoProcessor,
        )

        LlavaNextVideoVideoProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}).save_pretrained(
            out
        )
        settings = {"patch_size": 4, "vision_feature_select_strategy": "default"}
        (out / "processor_config.json").write_text(json.dumps(settings) + "\n")
    return out


# --- synthetic prompts: random token ids with a visual span, what the checks and tests feed the tiny models ---


@dataclass
class SyntheticPrompt:
    """Token ids of a synthetic prompt: ``[prefix][visual][question]``."""

    input_ids: torch.Tensor  # (1, T)
    visual_mask: torch.Tensor  # (1, T) bool


def make_prompt(vocab: int, prefix: int, visual: int, question: int, seed: int, device=None) -> SyntheticPrompt:
    """A random ``[prefix][visual][question]`` prompt (ids in ``[3, vocab)``), the same for a seed on every device."""
    g = torch.Generator().manual_seed(seed)
    T = prefix + visual + question
    ids = torch.randint(3, vocab, (1, T), generator=g)
    vm = torch.zeros(1, T, dtype=torch.bool)
    vm[0, prefix : prefix + visual] = True
    return SyntheticPrompt(ids.to(device), vm.to(device))


def left_pad(
    prompts: list[SyntheticPrompt], pad_id: int = 0, device=None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-pad prompts into ``(input_ids, attention_mask, visual_mask)`` batches on ``device`` (default cpu)."""
    T = max(p.input_ids.shape[1] for p in prompts)
    ids = torch.full((len(prompts), T), pad_id, dtype=torch.long)
    am = torch.zeros(len(prompts), T, dtype=torch.long)
    vm = torch.zeros(len(prompts), T, dtype=torch.bool)
    for i, p in enumerate(prompts):
        length = p.input_ids.shape[1]
        ids[i, T - length :] = p.input_ids[0]
        am[i, T - length :] = 1
        vm[i, T - length :] = p.visual_mask[0]
    return ids.to(device), am.to(device), vm.to(device)


def two_sample_batch(prompt: SyntheticPrompt) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, visual_mask)`` of a batch of two different samples sharing ``prompt``'s layout."""
    ids = prompt.input_ids.repeat(2, 1)
    ids[1] = ids[1].flip(0)
    return ids, prompt.visual_mask.repeat(2, 1)


def reference_rows(visual_mask: torch.Tensor) -> tuple[list[list[int]], list[list[int]]]:
    """Query rows (the tokens after the last visual token) and visual columns of each sample, as
    plain lists: the default query of ``capture``, written out independently of ``resolve_positions``."""
    T = visual_mask.shape[1]
    q_rows = [list(range(int(row.nonzero().max()) + 1, T)) for row in visual_mask]
    v_cols = [row.nonzero().flatten().tolist() for row in visual_mask]
    return q_rows, v_cols
