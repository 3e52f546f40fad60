"""Every fact about transformers' internals that hybridreduce's hooks rely on (DESIGN decision 10).

The taps and the engine observe stock modules through hooks, so they read the arguments that
transformers' decoders pass to their blocks and the registries it keeps. Those are internal call
signatures: a minor release may rename one (5.24 renamed the decoder's and every block's
``past_key_values`` / ``cache_params`` argument to ``cache``). This module is the one place that
knows them, so that the next rename is a change here and nowhere else:

* the tested range of transformers releases, and a warning once per process outside it;
* the names a cache travels under, how long it is, how to pass one and read it back;
* the names of the decoder inputs and masks the hooks read;
* how positional block arguments map to names (from the block class's own ``forward`` signature),
  and which block arguments are never sequence-shaped;
* the ``AttentionInterface`` registry the attention tap wraps.

The Nemotron-H Omni pieces (EVS's ``compute_retention_mask`` and the processor's video placeholder
expansion) have their own section at the end.

To check a new release: ``bash scripts/check_transformers.sh 5.25.0`` runs the version-sensitive
tests and ``hybridreduce verify --all`` against it and prints what broke.
"""

from __future__ import annotations

import inspect
import warnings
from functools import cache

import torch
import transformers
from torch import nn

from .errors import CompatibilityError, InputError

# --------------------------------------------------------------------------------------------------
# Versions
# --------------------------------------------------------------------------------------------------
#: The transformers releases the whole suite and ``verify --all`` passed on (constraints.txt pins the newest).
TESTED_VERSIONS = ("5.23.0", "5.24.0")
#: The requirement's range: the lowest tested release up to the next minor after the newest one.
SUPPORTED_RANGE = (">=5.23", "<5.25")
VERSION = transformers.__version__


def _release(version: str) -> tuple[int, ...]:
    """``"5.24.0.dev0"`` → ``(5, 24, 0)``: the numeric release segment (pre/dev suffixes dropped)."""
    out = []
    for part in version.split("+")[0].split("."):
        digits = "".join(ch for ch in part if ch.isdigit()) if part[:1].isdigit() else ""
        if not digits:
            break
        out.append(int(digits))
        if not part.isdigit():
            break
    return tuple(out)


def is_tested(version: str = VERSION) -> bool:
    """Whether ``version`` lies in :data:`SUPPORTED_RANGE`."""
    low, high = (_release(bound.lstrip("<>=")) for bound in SUPPORTED_RANGE)
    return low <= _release(version)[: len(low)] and _release(version)[: len(high)] < high


_warned = False


def warn_if_untested(version: str = VERSION) -> bool:
    """Warn once per process when ``version`` is outside the tested range; return whether it warned."""
    global _warned
    if _warned or is_tested(version):
        return False
    _warned = True
    warnings.warn(
        f"hybridreduce was tested with transformers {', '.join(TESTED_VERSIONS)} "
        f"({SUPPORTED_RANGE[0]},{SUPPORTED_RANGE[1]}); {version} is installed. Its hooks read transformers' internal "
        "call signatures: check this release with `bash scripts/check_transformers.sh "
        f"{version}` (or `hybridreduce verify --all`), or install the tested set with "
        "`pip install -c constraints.txt -e .`",
        UserWarning,
        stacklevel=3,
    )
    return True


# --------------------------------------------------------------------------------------------------
# Caches
# --------------------------------------------------------------------------------------------------
#: Names a cache is passed under, to decoders and to their blocks. 5.24 renamed ``past_key_values`` (and
#: Mamba-only models' ``cache_params``) to ``cache``; the old names stay accepted until 5.40.
CACHE_ARGS = ("cache", "past_key_values", "cache_params")


def cache_in(kwargs: dict):
    """The cache passed to a forward under any of its names, or ``None``."""
    for name in CACHE_ARGS:
        value = kwargs.get(name)
        if value is not None:
            return value
    return None


def cache_state(kwargs: dict) -> tuple[bool, int]:
    """``(has_cache, tokens_already_cached)`` of the cache passed to this forward."""
    cache = cache_in(kwargs)
    if cache is None:
        return False, 0
    try:
        return True, int(cache.get_seq_length())
    except Exception:  # a cache of Mamba layers only knows whether it holds a state, not a length
        try:
            return True, int(bool(cache.has_previous_state()))
        except Exception:
            return True, 0


@cache
def _forward_parameters(cls: type) -> tuple[str, ...]:
    """Parameter names of ``cls.forward`` in order, without ``self`` (decorators are seen through)."""
    params = inspect.signature(cls.forward).parameters
    return tuple(name for name in params if name != "self")


def cache_kwarg(model: nn.Module) -> str:
    """The keyword under which ``model``'s forward takes a cache (``cache`` from 5.24 on)."""
    params = _forward_parameters(type(model))
    for name in CACHE_ARGS:
        if name in params:
            return name
    return CACHE_ARGS[0] if _release(VERSION) >= (5, 24) else "past_key_values"


def output_cache(output):
    """The cache a forward returned (``output.cache`` from 5.24 on, ``output.past_key_values`` before)."""
    for name in CACHE_ARGS:
        value = output.get(name) if hasattr(output, "get") else getattr(output, name, None)
        if value is not None:
            return value
    return None


def cache_nbytes(cache) -> dict[str, int]:
    """Bytes held by a transformers cache: ``{"kv": attention keys+values, "state": Mamba conv+SSM states}``.

    Reads the cache's per-layer tensors (``layers[i].keys`` / ``values``, ``conv_states`` / ``recurrent_states``), the
    layout of the tested releases."""
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


def unclassified_forward_hint(kwargs: dict) -> str:
    """What to say when a decoder forward is neither a prefill, a decode step nor a frozen forward."""
    received = ", ".join(sorted(kwargs)) or "none"
    return (
        f"This forward cannot be classified as a prefill, a decode step or a frozen forward: it carries no cache "
        f"under any name hybridreduce knows ({', '.join(CACHE_ARGS)}); its keyword arguments were: {received}. "
        f"If it is a decode step of generate, transformers {VERSION} passes the cache under a new name: check the "
        f"release with `bash scripts/check_transformers.sh {VERSION}` (tested: {', '.join(TESTED_VERSIONS)})."
    )


# --------------------------------------------------------------------------------------------------
# Decoder inputs and block arguments
# --------------------------------------------------------------------------------------------------
#: The decoder's token inputs, in the order the hooks look for the one that carries the sequence.
INPUT_ARGS = ("inputs_embeds", "input_ids")
#: The decoder's and the blocks' padding / attention mask argument.
MASK_ARG = "attention_mask"
#: The decoder's position ids argument (RoPE families count decode positions from it).
POSITION_ARG = "position_ids"
#: Block arguments that are never sequence-shaped: passed through as they are.
NON_SEQUENCE_ARGS = frozenset((*CACHE_ARGS, "use_cache", "output_router_logits", "output_attentions", "layer_idx"))


def first_input(args: tuple, kwargs: dict) -> torch.Tensor | None:
    """The tensor that carries the decoder's sequence: ``inputs_embeds``, ``input_ids``, or the first positional."""
    for name in INPUT_ARGS:
        value = kwargs.get(name)
        if isinstance(value, torch.Tensor):
            return value
    for value in args:
        if isinstance(value, torch.Tensor):
            return value
    return None


def _is_sequence_shaped(value, length: int) -> bool:
    """Whether ``value`` (a tensor, or a tuple holding tensors) has an axis 1 or a last axis of ``length``."""
    if isinstance(value, tuple):
        return any(_is_sequence_shaped(v, length) for v in value)
    return isinstance(value, torch.Tensor) and value.dim() >= 2 and length in (value.shape[1], value.shape[-1])


def check_undeclared(name: str, value, length: int, block: nn.Module, model_type: str, forward: str) -> None:
    """Raise if a block argument that its adapter does not declare is sequence-shaped.

    The engine slices only declared arguments (``FamilyAdapter.sequence_args``); passing an undeclared
    sequence-shaped tensor on unsliced would mix full-length and reduced tensors inside the block.

    Raises:
        CompatibilityError: naming the argument, the block class and the installed transformers version.
    """
    if name in NON_SEQUENCE_ARGS or not _is_sequence_shaped(value, length):
        return
    if isinstance(value, torch.Tensor):
        shape = tuple(value.shape)
    else:
        shape = tuple(tuple(getattr(v, "shape", ())) for v in value)
    raise CompatibilityError(
        f"{type(block).__name__} received the argument {name!r} of shape {shape} in a {forward} over {length} "
        f"tokens; it is sequence-shaped but the {model_type} adapter does not declare it, so hybridreduce cannot "
        f"know how to reduce it. transformers {VERSION} passes its blocks an argument the tested releases "
        f"({', '.join(TESTED_VERSIONS)}) did not: declare it in the adapter's `sequence_args` "
        f"(hybridreduce/adapters/) or check the release with `bash scripts/check_transformers.sh {VERSION}`"
    )


def positional_names(block: nn.Module, n: int) -> tuple[str, ...]:
    """Names of the first ``n`` positional arguments of ``block.forward`` (from the class's own signature).

    Raises:
        CompatibilityError: the block received more positional arguments than its signature names.
    """
    names = _forward_parameters(type(block))
    named = tuple(p for p in names if p not in ("args", "kwargs"))
    if n > len(named):
        raise CompatibilityError(
            f"{type(block).__name__}.forward received {n} positional arguments but its signature names "
            f"{len(named)} ({', '.join(named)}); transformers {VERSION} calls its blocks differently from the "
            f"tested releases ({', '.join(TESTED_VERSIONS)}): run scripts/check_transformers.sh {VERSION}"
        )
    return named[:n]


def mixer_padding_mask(mixer: nn.Module, args: tuple, kwargs: dict) -> torch.Tensor | None:
    """The ``(b, T)`` padding mask a Mamba mixer's forward received (by keyword or position), else ``None``."""
    mask = kwargs.get(MASK_ARG)
    if mask is None and args:
        names = positional_names(mixer, len(args))
        mask = args[names.index(MASK_ARG)] if MASK_ARG in names else None
    return mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None


# --------------------------------------------------------------------------------------------------
# AttentionInterface
# --------------------------------------------------------------------------------------------------
def attention_functions():
    """transformers' ``AttentionInterface`` registry (``ALL_ATTENTION_FUNCTIONS``), a mapping impl → function."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return ALL_ATTENTION_FUNCTIONS


def local_attention_override(impl: str) -> tuple[bool, object]:
    """``(whether impl has a process-local registration, its value)``: what to restore after a tap."""
    mapping = attention_functions()._local_mapping
    return impl in mapping, mapping.get(impl)


def local_attention_registrations() -> dict:
    """A copy of the process-local registrations (for checks that nothing was left behind)."""
    return dict(attention_functions()._local_mapping)


# --------------------------------------------------------------------------------------------------
# Nemotron-H Omni
# --------------------------------------------------------------------------------------------------
# 5.24 moved the tubelet packing of ``nemotron_h_omni`` from the model into its video processor, which changed
# four calls hybridreduce makes (5.23 → 5.24):
#
# * ``compute_retention_mask(*, video_embeds, thw, spatial_merge_size, q)`` → ``(video_embeds, num_tubelets, q)``,
#   ``q`` being the pruning rate (hybridreduce's ``rate``). The mask is the same: both rank the same rows (one per
#   language-model token, ``U`` units of ``H·W`` rows) with the same cosine, sentinel, budget
#   ``max(H·W, int(U·H·W·(1 − rate)))`` and stable sort; 5.23's ``thw`` and ``spatial_merge_size`` only reshape the
#   rows to ``(U, H, W)`` (nothing is merged inside), 5.24 reshapes them to ``(U, H·W)``.
# * the video processor: ``pixel_values_videos`` of ``(F, 3, Himg, Wimg)`` frames with ``num_patches`` and
#   ``num_tokens`` per frame → ``(n_videos, U, tubelet·3, Himg, Wimg)`` tubelets of ``tubelet`` frames (it takes
#   ``temporal_patch_size``) with ``num_frames`` and, when asked (``return_metadata``), ``video_metadata``.
# * ``replace_video_token``: ``num_frames=`` and ``video_metadata=`` keywords → read, with the tokens per
#   tubelet, from the processor's output.
# * ``get_video_features(...).pooler_output``: a ``(U, H·W, d)`` tensor → a tuple of one ``(U·H·W, d)`` tensor per
#   video (4-D frames are still taken, deprecated, until 5.28).
#
# Each function below decides from what is installed (a signature, the keywords the processor accepts, the
# keys it returns, the type of an output), never from the version number.

#: ``compute_retention_mask``'s parameters up to 5.23 (all keyword-only) and from 5.24 on.
RETENTION_MASK_GRID = ("video_embeds", "thw", "spatial_merge_size", "q")
RETENTION_MASK_TUBELETS = ("video_embeds", "num_tubelets", "q")


def _unknown_omni_api(what: str, found: str) -> InputError:
    """The error for a Nemotron-H Omni function whose form this section does not know."""
    return InputError(
        f"transformers {VERSION}: {what} {found}, a form hybridreduce does not know (tested: "
        f"{', '.join(TESTED_VERSIONS)}); teach the '# Nemotron-H Omni' section of hybridreduce/compat.py the new "
        f"form, or install the tested set with `pip install -c constraints.txt -e .`"
    )


def retention_mask_form() -> tuple[str, ...]:
    """The parameter names of the installed ``compute_retention_mask``: :data:`RETENTION_MASK_GRID` or
    :data:`RETENTION_MASK_TUBELETS`.

    Raises:
        InputError: any other form.
    """
    from transformers.models.nemotron_h_omni.modeling_nemotron_h_omni import compute_retention_mask

    names = tuple(inspect.signature(compute_retention_mask).parameters)
    if names not in (RETENTION_MASK_GRID, RETENTION_MASK_TUBELETS):
        raise _unknown_omni_api("compute_retention_mask takes", f"({', '.join(names)})")
    return names


def retention_mask_reference(
    embeds: torch.Tensor, n_units: int, H: int, W: int, rate: float, spatial_merge_size: int = 1
) -> torch.Tensor:
    """transformers' own EVS mask (``nemotron_h_omni``'s ``compute_retention_mask``) of one video.

    Called with whichever signature is installed (see the section comment): up to 5.23 as
    ``compute_retention_mask(video_embeds=embeds, thw=(U, H, W), spatial_merge_size=s, q=rate)``, from 5.24 as
    ``compute_retention_mask(rows, U, rate)`` with ``rows = embeds.reshape(U·(H/s)·(W/s), C)``. Both give the
    same mask for the same rows; :func:`hybridreduce.evs.evs_retention_mask` is tested equal to it bit for bit.

    Args:
        embeds: one row per language-model token, in (unit, row, column) order, of ``C`` features each:
            ``(U·(H/s)·(W/s), C)`` or any shape that reshapes to it (e.g. ``(U, (H/s)·(W/s), C)``, the model's
            ``(U, (H/s)·(W/s), d)`` features). With ``s > 1`` each row is one ``s × s`` block of the encoder grid,
            its patches concatenated (:func:`hybridreduce.evs.merge_patches`).
        n_units: ``U``, the temporal units (frames or tubelets).
        H, W: the encoder's patch grid of one unit, before the merge (``H/s × W/s`` tokens after it).
        rate: pruning rate in ``[0, 1)``, transformers' ``q`` (not checked here: transformers does not check it
            either).
        spatial_merge_size: ``s``, the merge the rows already carry (5.23's ``spatial_merge_size``).
    Returns:
        ``(U·(H/s)·(W/s),)`` bool, True for the kept tokens.
    Raises:
        InputError: ``embeds`` has not ``U·(H/s)·(W/s)`` rows, or ``compute_retention_mask`` has an unknown form.
    """
    from transformers.models.nemotron_h_omni.modeling_nemotron_h_omni import compute_retention_mask

    s = int(spatial_merge_size)
    rows = n_units * (H // s) * (W // s)
    if embeds.dim() < 2 or embeds.numel() != rows * embeds.shape[-1]:
        raise InputError(
            f"retention_mask_reference: embeds {tuple(embeds.shape)} is not {rows} rows (U={n_units} units of "
            f"{H // s}x{W // s} tokens for an {H}x{W} grid merged by {s}) of {embeds.shape[-1]} features; pass one "
            "row per language-model token"
        )
    if retention_mask_form() == RETENTION_MASK_GRID:  # up to 5.23
        return compute_retention_mask(video_embeds=embeds, thw=(n_units, H, W), spatial_merge_size=s, q=rate)
    return compute_retention_mask(embeds.reshape(rows, embeds.shape[-1]), n_units, rate)  # 5.24 on


def _packs_tubelets(video_processor) -> bool:
    """Whether the Omni video processor packs tubelets itself (it accepts ``temporal_patch_size``; 5.24 on)."""
    accepted = getattr(type(video_processor), "valid_kwargs", None)
    return "temporal_patch_size" in getattr(accepted, "__annotations__", {})


def omni_video_inputs(video_processor, frames, metadata, temporal_patch_size: int) -> dict:
    """One video through the Omni video processor, called as the Omni processor calls it.

    Args:
        video_processor: a ``NemotronH_Omni_Reasoning_V3VideoProcessor``.
        frames: ``(F, Himg, Wimg, 3)`` uint8 frames.
        metadata: the video's ``transformers.video_utils.VideoMetadata`` (source frame rate and frame indices).
        temporal_patch_size: ``tubelet``, frames per tubelet (the model config's ``video_temporal_patch_size``).
    Returns:
        The processor's output, ``pixel_values_videos`` in the layout the installed model takes, ``Himg × Wimg``
        the processor's resized frame. From 5.24: ``(1, U, tubelet·3, Himg, Wimg)`` tubelets (the last one filled
        up with copies of the last frame), ``num_frames`` ``[F]`` and ``video_metadata`` ``[metadata]``. Up to
        5.23: ``(F, 3, Himg, Wimg)`` frames (the model packs them), ``num_patches`` and ``num_tokens`` per frame.
    Raises:
        InputError: the output has neither layout.
    """
    if _packs_tubelets(video_processor):  # 5.24 on
        out = video_processor(
            videos=[frames], video_metadata=[metadata], return_metadata=True,
            temporal_patch_size=int(temporal_patch_size), return_tensors="pt",
        )  # fmt: skip
        rank, keys = 5, {"num_frames", "video_metadata"}
    else:  # up to 5.23
        out = video_processor(videos=[frames], return_tensors="pt")
        rank, keys = 4, {"num_patches", "num_tokens"}
    pixels = out.get("pixel_values_videos")
    if not (isinstance(pixels, torch.Tensor) and pixels.dim() == rank and keys <= out.keys()):
        shape = tuple(pixels.shape) if isinstance(pixels, torch.Tensor) else type(pixels).__name__
        found = f"pixel_values_videos {shape} with the keys {', '.join(sorted(out.keys()))}"
        raise _unknown_omni_api(f"{type(video_processor).__name__} returned", found)
    return out


def omni_video_placeholder(video_inputs: dict, video_processor, tokenizer, temporal_patch_size: int, metadata) -> str:
    """The prompt text that stands for one video: the Omni processor's own ``replace_video_token``.

    One ``Frame i sampled at t seconds …: <img> <image>×H·W </img>`` chunk per tubelet, joined by newlines. The
    method is borrowed from the processor class, called on a stand-in that carries the attributes it reads
    (so no image processor, and no torchvision, is needed).

    Args:
        video_inputs: the output of :func:`omni_video_inputs`.
        video_processor: the video processor that made it (5.24's expansion reads its patch and merge sizes).
        tokenizer: the checkpoint's tokenizer (its image, start and end tokens, as the processor reads them).
        temporal_patch_size: frames per tubelet.
        metadata: the video's ``VideoMetadata`` (5.23 takes it as a keyword; 5.24 reads it from ``video_inputs``).
    Raises:
        InputError: ``video_inputs`` has neither processor layout.
    """
    from types import SimpleNamespace

    from transformers.models.nemotron_h_omni.processing_nemotron_h_omni import (
        NemotronH_Omni_Reasoning_V3Processor as Processor,
    )

    processor = SimpleNamespace(
        image_token=getattr(tokenizer, "image_token", "<image>"),
        image_start_token=getattr(tokenizer, "image_start_token", "<img>"),
        image_end_token=getattr(tokenizer, "image_end_token", "</img>"),
        video_temporal_patch_dim=int(temporal_patch_size),
        video_processor=video_processor,
    )
    if {"num_frames", "video_metadata"} <= video_inputs.keys():  # 5.24 on
        return Processor.replace_video_token(processor, video_inputs, 0)
    if "num_patches" in video_inputs:  # up to 5.23: one patch per frame, so their sum is the frame count
        frames = int(sum(video_inputs["num_patches"]))
        return Processor.replace_video_token(processor, video_inputs, 0, num_frames=frames, video_metadata=metadata)
    raise _unknown_omni_api("the video processor's output has", f"the keys {', '.join(sorted(video_inputs))}")


def omni_video_features(model: nn.Module, pixel_values_videos: torch.Tensor) -> torch.Tensor:
    """``(U·H·W, d)`` projected features of one video, in placeholder order: ``get_video_features`` flattened.

    Args:
        model: a ``NemotronH_Omni_Reasoning_V3``.
        pixel_values_videos: one video as :func:`omni_video_inputs` laid it out for the installed model.
    Returns:
        ``(U·H·W, d)``: ``pooler_output`` flattened from ``(U, H·W, d)`` (up to 5.23), or the tuple's single
        ``(U·H·W, d)`` entry (from 5.24, one per video).
    Raises:
        InputError: ``pooler_output`` has another form, or holds more than one video.
    """
    features = model.get_video_features(pixel_values_videos, return_dict=True).pooler_output
    if isinstance(features, torch.Tensor) and features.dim() == 3:  # up to 5.23
        return features.reshape(-1, features.shape[-1])
    if isinstance(features, (tuple, list)) and all(isinstance(f, torch.Tensor) and f.dim() == 2 for f in features):
        if len(features) != 1:
            raise InputError(
                f"omni_video_features: pixel_values_videos {tuple(pixel_values_videos.shape)} holds {len(features)} "
                "videos; pass one video at a time"
            )
        return features[0]  # 5.24 on
    if isinstance(features, torch.Tensor):
        found = f"a tensor {tuple(features.shape)}"
    elif isinstance(features, (tuple, list)):
        found = f"a {type(features).__name__} of {[tuple(getattr(f, 'shape', ())) for f in features]}"
    else:
        found = f"a {type(features).__name__}"
    raise _unknown_omni_api("get_video_features(...).pooler_output is", found)
