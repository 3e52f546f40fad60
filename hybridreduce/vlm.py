"""Real hybrid video VLMs: load a checkpoint directory, turn a video and a question into its inputs, answer.

:func:`load` returns a :class:`VLM` — the model, its tokenizer, the video family that knows how the
model's processor lays out a video, and the adapter. Three families are supported, keyed by the
checkpoint's ``model_type``:

``nemotron_h_omni``
    transformers' ``NemotronH_Omni_Reasoning_V3`` (RADIO tower, Nemotron-H language model). Frames are
    packed in tubelets of ``video_temporal_patch_size`` frames (by the model up to transformers 5.23, by the
    video processor from 5.24: :mod:`hybridreduce.compat` knows both); each tubelet becomes one
    ``<img> <image>×H·W </img>`` chunk labelled "Frame i sampled at t seconds". The model has EVS built in
    (``config.video_pruning_rate``).
``llava_next_video``
    LLaVA-NeXT-Video with a hybrid ``text_config`` (``nemotron_h``, ``jamba``, ``bamba``, ...): every frame
    is CLIP-preprocessed and average-pooled 2×2, ``<video>`` repeated once per pooled patch of every frame.
``llava_onevision``
    LLaVA-OneVision with a hybrid ``text_config``: frames resized to the tower's input size, features pooled
    bilinearly to half the side, and one ``image_newline`` token after the last frame (a visual token that
    is not part of the frame grid: EVS always keeps it).

Frames go through the checkpoint's own processor when it loads (``AutoProcessor``; transformers' video
processors need torchvision). Without it, the prompt is built from the pieces that do run: the family's
own video processor class or transformers' PIL image processor with the checkpoint's settings, and the
processor class's own placeholder expansion (``replace_video_token``) — borrowed, not rewritten.

Answering (:meth:`VLM.answer`) runs in three steps, each timed:

1. *embed*: the wrapper's own forward builds the language model's input embeddings (vision tower,
   projector, placeholder scatter); a pre-hook on the decoder takes them and stops the forward there. The
   model's built-in EVS is switched off for this step, so the visual tokens arrive in full. (``nemotron_h_omni``
   calls the same pieces one by one, :meth:`OmniFamily.embed`: its forward takes videos only from 5.24.)
2. *EVS* (optional, pruning rate ``rate``): :func:`hybridreduce.evs.evs_retention_mask` on those visual embeddings —
   for ``nemotron_h_omni`` exactly the tokens its own ``video_pruning_rate`` path keeps (same features,
   same cosine, same stable top-k). Kept tokens keep their original position ids.
3. *prefill and greedy decode* on the language model, under ``reduce(model, schedule)`` when a schedule
   is given. The decode loop passes original position ids and its own attention mask, so what the
   language model sees is the same with and without reduction except for the dropped tokens.

Shapes use the letters of :mod:`hybridreduce.glossary`; a temporal unit (tubelet or frame) carries ``H·W`` visual
tokens (:attr:`Prompt.tokens_per_unit`).
"""

from __future__ import annotations

import json
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from . import compat
from .adapters import AdaptedModel, get_adapter, supported_model_types
from .errors import InputError, UnsupportedModelError
from .evs import apply_retention, evs_retention_mask
from .schedule import Schedule

#: Video-VLM ``model_type`` values :func:`load` handles.
VIDEO_FAMILIES = ("nemotron_h_omni", "llava_next_video", "llava_onevision")
#: The dtypes a checkpoint loads in (``--dtype``, ``dtype=``): the checkpoint's own, or a floating type.
DTYPES = ("auto", "float32", "bfloat16", "float16")
#: Frames sampled uniformly from a video when neither a frame count nor a rate is given.
DEFAULT_FRAMES = 32


def quiet_transformers() -> None:
    """Silence transformers' load progress bars and kernel fall-back notices on the console."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


@dataclass
class Prompt:
    """One video and one question, as the model takes them.

    Attributes:
        inputs: the wrapper's forward arguments (``input_ids``, ``attention_mask``, ``pixel_values_videos`` in
            the layout the installed processor and model use).
        visual_mask: ``(1, T)`` bool, the video placeholder tokens.
        units: ``U``, temporal units of the visual grid (tubelets or frames).
        tokens_per_unit: ``H·W``: ``U·H·W`` visual tokens form the grid.
        text: the prompt text before placeholder expansion.
        grid_mask: ``(1, T)`` bool, the visual tokens of the ``U × H·W`` grid (EVS ranks these); the visual mask
            unless the family adds visual tokens outside the grid (LLaVA-OneVision's closing newline).
    """

    inputs: dict
    visual_mask: torch.Tensor
    units: int
    tokens_per_unit: int
    text: str
    grid_mask: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.grid_mask is None:
            self.grid_mask = self.visual_mask

    @property
    def n_visual(self) -> int:
        return int(self.visual_mask.sum())


@dataclass
class Answer:
    """What :meth:`VLM.answer` produced and how long each step took.

    Attributes:
        text: the generated text (special tokens removed).
        tokens: generated token ids.
        n_visual: visual tokens of the prompt; ``evs_visual``: how many entered the language model.
        block_visual: visual tokens each block carried (all ``evs_visual`` without a schedule).
        embed_s, evs_s, prefill_s: wall time of the three steps; ``ttft_s``: their sum plus the first
            token's arg-max (time to first token from the processed inputs).
        decode_s: wall time of the remaining decode steps.
    """

    text: str
    tokens: list[int]
    n_visual: int
    evs_visual: int
    block_visual: list[int]
    embed_s: float
    evs_s: float
    prefill_s: float
    ttft_s: float
    decode_s: float

    @property
    def average_keep(self) -> float:
        """Mean over blocks of the share of the prompt's visual tokens each block carried."""
        return float(np.mean(self.block_visual)) / self.n_visual if self.n_visual else 1.0


class _Captured(Exception):
    """Raised by the decoder pre-hook once the input embeddings are taken (stops the forward)."""


# --- families -------------------------------------------------------------------------------------------------


class VideoFamily:
    """How one wrapper type lays out a video in its prompt."""

    model_type: str = ""

    def __init__(self, path: Path, config, tokenizer, processor=None) -> None:
        self.path, self.config, self.tokenizer, self.processor = path, config, tokenizer, processor

    @property
    def placeholder_id(self) -> int:
        """Token id of the video placeholders in ``input_ids``."""
        raise NotImplementedError

    @property
    def video_token(self) -> str:
        """The string a prompt uses for "the video goes here"."""
        return "<video>"

    def prompt_text(self, question: str) -> str:
        """The question with the video placeholder, through the chat template when the checkpoint has one."""
        content = f"{self.video_token}\n{question}"
        template = getattr(self.processor, "chat_template", None) or getattr(self.tokenizer, "chat_template", None)
        if template:
            messages = [{"role": "user", "content": content}]
            return self.tokenizer.apply_chat_template(
                messages, chat_template=template, tokenize=False, add_generation_prompt=True
            )
        return content + "\n"

    def prompt(self, video, question: str) -> Prompt:
        """The model's inputs for ``video`` (a :class:`hybridreduce.video.Video`) and ``question``."""
        text = self.prompt_text(question)
        if self.processor is not None:
            inputs = dict(self._with_processor(video, text))
        else:
            inputs = self._without_processor(video, text)
        ids = inputs["input_ids"]
        visual = ids == self.placeholder_id
        grid = self.grid_mask(visual)
        units = self.units(video, inputs)
        V = int(grid.sum())
        if V == 0 or V % units:
            raise InputError(
                f"{self.path}: the prompt has {V} video placeholder tokens for {units} temporal units; the tokenizer "
                f"and the processor settings do not match this model"
            )
        return Prompt(
            inputs=inputs, visual_mask=visual, units=units, tokens_per_unit=V // units, text=text, grid_mask=grid
        )

    def grid_mask(self, visual: torch.Tensor) -> torch.Tensor:
        """The visual tokens that form the ``U × H·W`` grid (all of them unless a family says otherwise)."""
        return visual

    def units(self, video, inputs: dict) -> int:
        raise NotImplementedError

    def embed(self, model: nn.Module, decoder: nn.Module, inputs: dict) -> torch.Tensor:
        """``(1, T, d)`` input embeddings of the decoder: the wrapper's own forward, stopped at the decoder.

        A pre-hook on ``decoder`` takes its ``inputs_embeds`` and stops the forward; the wrapper's built-in
        EVS (``video_pruning_rate``) is off meanwhile, so every visual token arrives.
        """
        taken = {}

        def take(module, args, kwargs):
            taken["inputs_embeds"] = kwargs.get("inputs_embeds")
            raise _Captured

        handle = decoder.register_forward_pre_hook(take, with_kwargs=True)
        saved = getattr(model, "video_pruning_rate", None)
        try:
            if saved is not None:
                model.video_pruning_rate = 0.0
            model(**inputs, use_cache=False)
        except _Captured:
            pass
        finally:
            handle.remove()
            if saved is not None:
                model.video_pruning_rate = saved
        if taken.get("inputs_embeds") is None:
            raise InputError(f"{self.model_type}: the forward did not reach the language model with inputs_embeds")
        return taken["inputs_embeds"]

    def _with_processor(self, video, text: str):
        raise NotImplementedError

    def _without_processor(self, video, text: str) -> dict:
        raise NotImplementedError

    def _tokenize(self, text: str) -> dict:
        enc = self.tokenizer(text, return_tensors="pt", add_special_tokens=True)
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


class OmniFamily(VideoFamily):
    """``nemotron_h_omni``: tubelets of ``video_temporal_patch_size`` frames, one ``<img>…</img>`` chunk each."""

    model_type = "nemotron_h_omni"

    @property
    def placeholder_id(self) -> int:
        return int(self.config.image_token_id)  # video chunks use the image token (the model's own rule)

    def units(self, video, inputs: dict) -> int:
        return math.ceil(len(video.frames) / int(self.config.video_temporal_patch_size))

    def embed(self, model: nn.Module, decoder: nn.Module, inputs: dict) -> torch.Tensor:
        """The model's own pieces: text embeddings, ``get_video_features`` scattered onto the placeholders.

        This is what ``NemotronH_Omni_Reasoning_V3.forward`` does before its language model. The forward itself
        cannot take videos in transformers 5.23 (it calls ``torch.cat`` on the projected features, a tensor,
        and raises a TypeError); from 5.24 it can, and the tests hold it equal to this on every release.
        """
        ids = inputs["input_ids"]
        embeds = model.get_input_embeddings()(ids)
        features = compat.omni_video_features(model, inputs["pixel_values_videos"])  # (V, d)
        features = features.to(embeds.device, embeds.dtype)
        mask = ids == self.placeholder_id
        if int(mask.sum()) != features.shape[0]:
            raise InputError(
                f"{self.path}: {int(mask.sum())} video placeholders for {features.shape[0]} video features; the "
                "tokenizer's image token or the video processor settings do not match the model"
            )
        return embeds.masked_scatter(mask[..., None].expand_as(embeds), features)

    def _metadata(self, video):
        """What the processor's frame labels read: the source frame rate and each frame's index in the source."""
        from transformers.video_utils import VideoMetadata

        Himg, Wimg = video.frames.shape[1:3]
        return VideoMetadata(
            total_num_frames=int(video.source_frames), fps=float(video.fps), width=int(Wimg), height=int(Himg),
            frames_indices=[int(i) for i in video.indices],
        )  # fmt: skip

    def _with_processor(self, video, text: str):
        return self.processor(
            text=text, videos=[video.frames], video_metadata=self._metadata(video), return_tensors="pt"
        )

    def _without_processor(self, video, text: str) -> dict:
        """The checkpoint's video processor class and the processor class's own placeholder expansion, called
        as the full processor calls them (:func:`hybridreduce.compat.omni_video_inputs`,
        :func:`~hybridreduce.compat.omni_video_placeholder`)."""
        from transformers.models.nemotron_h_omni.video_processing_nemotron_h_omni import (
            NemotronH_Omni_Reasoning_V3VideoProcessor as VideoProcessor,
        )

        video_processor = _from_pretrained(VideoProcessor, self.path, "video processor")
        tubelet, metadata = int(self.config.video_temporal_patch_size), self._metadata(video)
        pixels = compat.omni_video_inputs(video_processor, video.frames, metadata, tubelet)
        expansion = compat.omni_video_placeholder(pixels, video_processor, self.tokenizer, tubelet, metadata)
        return {**self._tokenize(text.replace(self.video_token, expansion, 1)),
                "pixel_values_videos": pixels["pixel_values_videos"]}  # fmt: skip


class LlavaVideoFamily(VideoFamily):
    """``llava_next_video``: CLIP-preprocessed frames, ``<video>`` once per 2×2-pooled patch of every frame."""

    model_type = "llava_next_video"

    @property
    def placeholder_id(self) -> int:
        return int(self.config.video_token_id)

    def units(self, video, inputs: dict) -> int:
        return len(video.frames)

    def _with_processor(self, video, text: str):
        return self.processor(text=text, videos=[video.frames], return_tensors="pt")

    def _without_processor(self, video, text: str) -> dict:
        """Frames through transformers' PIL image processor with the checkpoint's video settings, then the
        processor class's own placeholder expansion (:meth:`_expand`)."""
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

        settings = _read_json(self.path / "video_preprocessor_config.json", "video processor config")
        image_processor = CLIPImageProcessorPil(**self._pil_settings(settings))
        frames = image_processor(images=list(video.frames), return_tensors="pt")["pixel_values"]
        pixels = {"pixel_values_videos": frames.unsqueeze(0)}
        processor_settings = _read_json(self.path / "processor_config.json", "processor config", required=False)
        expansion = self._expand(pixels, processor_settings)
        return {**self._tokenize(text.replace(self.video_token, expansion, 1)), **pixels}

    def _pil_settings(self, settings: dict) -> dict:
        """The video processor config's fields that the PIL image processor takes."""
        known = ("do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale", "rescale_factor",
                 "do_normalize", "image_mean", "image_std", "do_convert_rgb")  # fmt: skip
        return {k: settings[k] for k in known if k in settings}

    def _expand(self, pixels: dict, processor_settings: dict) -> str:
        """The ``<video>`` run of ``pixels``, by ``LlavaNextVideoProcessor.replace_video_token``."""
        from transformers.models.llava_next_video.processing_llava_next_video import LlavaNextVideoProcessor

        patch = processor_settings.get("patch_size") or self.config.vision_config.patch_size
        shim = SimpleNamespace(patch_size=patch, video_token=getattr(self.tokenizer, "video_token", self.video_token))
        return LlavaNextVideoProcessor.replace_video_token(shim, pixels, 0)


class OnevisionFamily(LlavaVideoFamily):
    """``llava_onevision``: frames resized to the tower's size, features pooled to ``⌈side/2⌉²`` per frame (``side``
    the tower's patch-grid side), and one ``image_newline`` embedding closing the video (a ``<video>`` placeholder
    outside the frame grid)."""

    model_type = "llava_onevision"

    def grid_mask(self, visual: torch.Tensor) -> torch.Tensor:
        grid = visual.clone()
        last = int(visual[0].nonzero()[-1])  # the newline: always the last video placeholder
        grid[0, last] = False
        return grid

    def _pil_settings(self, settings: dict) -> dict:
        """No centre crop: OneVision resizes frames to the tower's size."""
        kept = {k: v for k, v in super()._pil_settings(settings).items() if k not in ("do_center_crop", "crop_size")}
        return {**kept, "do_center_crop": False}

    def _expand(self, pixels: dict, processor_settings: dict) -> str:
        """The ``<video>`` run of ``pixels`` (frames, then the newline), by ``LlavaOnevisionProcessor``."""
        from transformers.models.llava_onevision.processing_llava_onevision import LlavaOnevisionProcessor

        vision = self.config.vision_config
        tokens = processor_settings.get("num_image_tokens") or (vision.image_size // vision.patch_size) ** 2
        shim = SimpleNamespace(num_image_tokens=tokens, video_token=getattr(self.tokenizer, "video_token", "<video>"))
        return LlavaOnevisionProcessor.replace_video_token(shim, pixels, 0)


FAMILIES: dict[str, type[VideoFamily]] = {f.model_type: f for f in (OmniFamily, LlavaVideoFamily, OnevisionFamily)}


def _read_json(path: Path, what: str, required: bool = True) -> dict:
    if not path.is_file():
        if required:
            raise InputError(f"{path.parent}: no {path.name} ({what}); save the processor with the checkpoint")
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def _from_pretrained(cls, path: Path, what: str):
    try:
        return cls.from_pretrained(path)
    except OSError as exc:
        raise InputError(f"{path}: cannot load the {what} ({exc}); save it with the checkpoint") from None


# --- loading --------------------------------------------------------------------------------------------------


@dataclass
class VLM:
    """A loaded video VLM (see :func:`load`).

    Attributes:
        model: the transformers model (in eval mode).
        tokenizer: its tokenizer.
        family: the :class:`VideoFamily` that builds its prompts.
        adapted: the language model seen through its hybridreduce adapter.
        path: the checkpoint directory.
        processor_source: ``"processor"`` (the checkpoint's own) or ``"fallback"`` (see the module docstring).
        adapter: the LoRA adapter directory merged into the weights, or None.
    """

    model: nn.Module
    tokenizer: object
    family: VideoFamily
    adapted: AdaptedModel = field(repr=False)
    path: Path
    processor_source: str
    adapter: Path | None = None

    @property
    def model_type(self) -> str:
        return self.family.model_type

    @property
    def builtin_evs(self) -> float:
        """The checkpoint's own pre-LLM pruning rate (``video_pruning_rate``), 0 when it has none."""
        return float(getattr(self.model.config, "video_pruning_rate", 0.0) or 0.0)

    def evs_rate(self, given: float | None) -> float:
        """``given``, or by default the checkpoint's own pre-LLM pruning rate (the model as it ships; one line on
        stderr says so when that rate is not 0)."""
        if given is not None:
            return given
        if self.builtin_evs:
            rate = self.builtin_evs
            print(f"EVS at the checkpoint's video_pruning_rate {rate:g} (--evs 0 turns it off)", file=sys.stderr)
        return self.builtin_evs

    def prompt(self, video, question: str) -> Prompt:
        return self.family.prompt(video, question)

    # -- answering -----------------------------------------------------------------------------------------
    def embed(self, prompt: Prompt) -> dict:
        """The language model's inputs for ``prompt``: ``inputs_embeds`` ``(1, T, d)`` and ``attention_mask``.

        The wrapper's own vision tower, projector and placeholder scatter, with its built-in EVS off (see
        :meth:`VideoFamily.embed`).
        """
        device = _input_device(self.model)
        inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in prompt.inputs.items()}
        with torch.no_grad():
            embeds = self.family.embed(self.model, self.adapted.decoder, inputs)
        return {"inputs_embeds": embeds, "attention_mask": inputs["attention_mask"]}

    def evs(self, prompt: Prompt, embeds: dict, rate: float):
        """EVS at pruning rate ``rate`` on the visual embeddings: an :class:`hybridreduce.evs.EVSResult` (original
        positions)."""
        x = embeds["inputs_embeds"]
        vm, grid = prompt.visual_mask.to(x.device), prompt.grid_mask.to(x.device)
        # (U, 1, H·W, d): dissimilarity is per position and the top-k is global, so a one-row grid of H·W tokens
        # gives the same keep set as the true H × W grid, whatever its aspect ratio.
        video = x[grid].view(prompt.units, 1, prompt.tokens_per_unit, x.shape[-1])
        keep = torch.ones(int(vm.sum()), dtype=torch.bool, device=x.device)  # visual tokens off the grid stay
        keep[grid[vm]] = evs_retention_mask(video, rate, mode="embedding")
        return apply_retention(x, vm, keep, embeds["attention_mask"])

    @torch.no_grad()
    def answer(
        self,
        prompt: Prompt,
        schedule: Schedule | str | dict | None = None,
        evs: float = 0.0,
        max_new_tokens: int = 8,
        scorer=None,
    ) -> Answer:
        """Greedy answer to ``prompt``, optionally with EVS before and ``schedule`` inside the language model.

        Args:
            prompt: from :meth:`prompt`.
            schedule: a schedule name, dict, file or :class:`Schedule`; ``None`` answers with every token.
            evs: EVS pruning rate in ``[0, 1)`` (0: off).
            max_new_tokens: most tokens to generate (stops earlier at the end-of-sequence token).
            scorer: Mamba scorer settings for the schedule (default decay-free).
        """
        from .engine import reduce

        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        device = _input_device(self.model)
        t0 = _clock(device)
        embeds = self.embed(prompt)
        t1 = _clock(device)
        x, am = embeds["inputs_embeds"], embeds["attention_mask"].to(embeds["inputs_embeds"].device)
        vm = prompt.visual_mask.to(x.device)
        positions = torch.arange(x.shape[1], device=x.device)[None]
        if evs:
            kept = self.evs(prompt, embeds, evs)
            x, am, vm, positions = kept.inputs, kept.attention_mask, kept.visual_mask, kept.kept_index
        t2 = _clock(device)
        context = reduce(self.model, schedule, visual_mask=vm, scorer=scorer) if schedule is not None else nullcontext()
        eos = _eos_ids(self.model, self.tokenizer)
        cache_arg = compat.cache_kwarg(self.model)  # ``cache`` from transformers 5.24, ``past_key_values`` before
        tokens: list[int] = []
        with context as red:
            t2p = _clock(device)  # the hooks are installed: what follows is the prefill alone
            out = self.model(
                inputs_embeds=x, attention_mask=am, position_ids=positions, use_cache=True, logits_to_keep=1
            )
            t3 = _clock(device)
            token = int(out.logits[0, -1].argmax())
            t4 = _clock(device)
            tokens.append(token)
            cache, last = compat.output_cache(out), int(positions[0, -1])
            while len(tokens) < max_new_tokens and token not in eos:
                am = torch.cat([am, am.new_ones((1, 1))], dim=1)
                last += 1
                step = torch.tensor([[token]], device=x.device)
                out = self.model(
                    input_ids=step, attention_mask=am, position_ids=torch.tensor([[last]], device=x.device),
                    use_cache=True, **{cache_arg: cache},
                )  # fmt: skip
                cache, token = compat.output_cache(out), int(out.logits[0, -1].argmax())
                tokens.append(token)
        t5 = _clock(device)
        n_in = int(vm.sum())
        blocks = red.block_visual if red is not None else [n_in] * self.adapted.num_blocks
        return Answer(
            text=self.tokenizer.decode(tokens, skip_special_tokens=True).strip(),
            tokens=tokens,
            n_visual=prompt.n_visual,
            evs_visual=n_in,
            block_visual=list(blocks),
            embed_s=t1 - t0,
            evs_s=t2 - t1,
            prefill_s=t3 - t2p,
            ttft_s=t4 - t0,
            decode_s=t5 - t4,
        )


def _clock(device: torch.device) -> float:
    """``time.perf_counter()`` after the device's queued work is done (CUDA kernels run asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _input_device(model: nn.Module) -> torch.device:
    """Where the model's inputs go: the device of the input embeddings (first shard under a device map)."""
    return model.get_input_embeddings().weight.device


def _eos_ids(model: nn.Module, tokenizer) -> set[int]:
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if ids is None:
        ids = getattr(tokenizer, "eos_token_id", None)
    if ids is None:
        return set()
    return {int(i) for i in (ids if isinstance(ids, (list, tuple)) else [ids])}


@dataclass(frozen=True)
class LoadOptions:
    """Everything that decides how a checkpoint loads: what the command line's model flags, the lmms-eval models'
    ``model_args`` and :func:`load`'s arguments say, in one place.

    Attributes:
        model: the checkpoint directory.
        dtype: ``"auto"`` (the checkpoint's), a name (``"float32"``, ``"bfloat16"``, ...) or a torch dtype.
        device: where to put the whole model (default: CPU, or what ``device_map`` chose).
        device_map: passed to ``from_pretrained`` (``"auto"``: accelerate spreads the model over the GPUs).
        trust_remote_code: allow the checkpoint's own Python code.
        adapter: a ``hybridreduce finetune`` output directory whose LoRA adapter is merged into the weights.
        attn_implementation: transformers' attention implementation (``"sdpa"``, ``"eager"``, ...); None: its
            default.
    """

    model: str | Path
    dtype: str | torch.dtype = "auto"
    device: str | torch.device | None = None
    device_map: str | dict | None = None
    trust_remote_code: bool = False
    adapter: str | Path | None = None
    attn_implementation: str | None = None

    @classmethod
    def from_args(cls, args, device: str | None = None) -> LoadOptions:
        """The options of a command line's model flags (``--model``, ``--dtype``, ``--device-map``, ...);
        ``device`` as the command resolved it (it is dropped under a device map)."""
        return cls(
            model=args.model, dtype=args.dtype, device_map=args.device_map,
            device=device if args.device_map is None else None, trust_remote_code=args.trust_remote_code,
            adapter=getattr(args, "adapter", None), attn_implementation=getattr(args, "attn_implementation", None),
        )  # fmt: skip

    def check(self) -> LoadOptions:
        """Every option, before the model loads: the checkpoint directory, the dtype, the device (one this machine
        has, and not together with a device map) and the adapter directory.

        Raises:
            InputError: the first bad option, named by its command-line flag, with the fix.
        """
        from . import validate

        validate.checkpoint_dir(self.model)
        if not isinstance(self.dtype, torch.dtype):
            validate.choice(self.dtype, "dtype (--dtype)", DTYPES)
        validate.device(None if self.device is None else str(self.device))
        if self.device is not None and self.device_map is not None:
            raise InputError(f"--device {self.device} and --device-map {self.device_map}: give one of them, not both")
        if self.adapter is not None:
            from .finetune.lora import check_adapter_dir

            check_adapter_dir(self.adapter)
        return self

    def load(self) -> VLM:
        """:func:`load` with these options."""
        return load(
            self.model, dtype=self.dtype, device_map=self.device_map, device=self.device,
            trust_remote_code=self.trust_remote_code, adapter=self.adapter,
            attn_implementation=self.attn_implementation,
        )  # fmt: skip


def load(
    path: str | Path,
    dtype: str | torch.dtype = "auto",
    device_map: str | dict | None = None,
    device: str | torch.device | None = None,
    trust_remote_code: bool = False,
    adapter: str | Path | None = None,
    attn_implementation: str | None = None,
) -> VLM:
    """Load a video VLM checkpoint directory with its tokenizer and processor (see :class:`LoadOptions`).

    Args:
        path: a local checkpoint directory (``config.json``, weights, tokenizer, processor configs).
        dtype: ``"auto"`` (the checkpoint's), a name (``"float32"``, ``"bfloat16"``, ...) or a torch dtype.
        device_map: passed to ``from_pretrained`` (``"auto"`` spreads a large model over the GPUs with
            accelerate); exclusive with ``device``.
        device: where to put the whole model (default: CPU, or what ``device_map`` chose).
        trust_remote_code: allow the checkpoint's own Python code (off unless asked).
        adapter: a ``hybridreduce finetune`` output directory (or any peft LoRA adapter of this model): loaded
            with peft and merged into the weights, so the model runs as fast as the base and the hooks see
            plain modules.
        attn_implementation: passed to ``from_pretrained`` when given.
    Returns:
        A :class:`VLM`.
    Raises:
        InputError: not a directory, no ``config.json``, a bad dtype, ``device`` with ``device_map``, or an
            adapter directory without a LoRA adapter.
        UnsupportedModelError: a ``model_type`` that is not a supported video VLM, or whose language model
            has no adapter.
    """
    from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoTokenizer

    root, model_type = _video_checkpoint(path)
    if device is not None and device_map is not None:
        raise InputError("give either device or device_map, not both")
    torch_dtype = _dtype(dtype)
    if adapter is not None:
        from .finetune.lora import check_adapter_dir

        check_adapter_dir(adapter)
    config = AutoConfig.from_pretrained(root, trust_remote_code=trust_remote_code)
    kwargs = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
    if device_map is not None:
        from importlib.util import find_spec

        if find_spec("accelerate") is None:
            raise InputError("device_map needs accelerate: pip install accelerate (or hybridreduce[cuda])")
        kwargs["device_map"] = device_map
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = AutoModelForImageTextToText.from_pretrained(root, **kwargs)
    except ValueError:
        model = AutoModel.from_pretrained(root, **kwargs)
    if adapter is not None:
        from .finetune.lora import merge_adapter

        model = merge_adapter(model, adapter)
    if device is not None:
        model = model.to(device)
    model.eval()
    adapted = get_adapter(model)  # UnsupportedModelError when the language model has no adapter
    tokenizer = AutoTokenizer.from_pretrained(root, trust_remote_code=trust_remote_code)
    processor = _try_processor(root, trust_remote_code)
    family = FAMILIES[model_type](root, config, tokenizer, processor)
    return VLM(
        model=model,
        tokenizer=tokenizer,
        family=family,
        adapted=adapted,
        path=root,
        processor_source="processor" if processor is not None else "fallback",
        adapter=None if adapter is None else Path(adapter),
    )


def _video_checkpoint(path: str | Path) -> tuple[Path, str]:
    """``path`` as a checkpoint directory whose ``config.json`` names a supported video VLM, and that
    ``model_type`` (a key of :data:`FAMILIES`)."""
    root = Path(path)
    if not root.is_dir():
        raise InputError(f"{root}: not a checkpoint directory (hybridreduce.load reads local directories only)")
    if not (root / "config.json").is_file():
        raise InputError(f"{root}: no config.json; point to the directory save_pretrained wrote")
    model_type = _read_json(root / "config.json", "model config").get("model_type")
    if model_type not in FAMILIES:
        raise UnsupportedModelError(
            f"{root}: model_type {model_type!r} is not a supported video VLM; supported: {', '.join(VIDEO_FAMILIES)}. "
            "For a text-only hybrid language model use hybridreduce.reduce on the model directly"
        )
    return root, model_type


def layout(path: str | Path, trust_remote_code: bool = False) -> AdaptedModel:
    """The blocks of a checkpoint and their kinds, from its ``config.json`` alone, before :func:`load` reads a weight.

    The architecture is built on the ``meta`` device (no weights, no memory), so a check that needs the model's
    depth (a schedule or a budget it cannot meet, LoRA targets) runs in a second however large the checkpoint is.
    ``.model`` is that meta-device model (its module names); it cannot score.

    Raises:
        InputError, UnsupportedModelError: as :func:`load`, for the directory, its config and its architecture.
    """
    from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText

    root, _ = _video_checkpoint(path)
    config = AutoConfig.from_pretrained(root, trust_remote_code=trust_remote_code)
    text = getattr(config.get_text_config(), "model_type", None)
    if text not in supported_model_types():  # checked first: another architecture may not even build
        raise UnsupportedModelError(
            f"{root}: its language model is {text!r}, which hybridreduce has no adapter for (supported: "
            f"{', '.join(supported_model_types())}); give a checkpoint around a supported hybrid language model"
        )
    with torch.device("meta"):
        try:
            model = AutoModelForImageTextToText.from_config(config, trust_remote_code=trust_remote_code)
        except ValueError:
            model = AutoModel.from_config(config, trust_remote_code=trust_remote_code)
    return get_adapter(model, allow_meta=True)  # UnsupportedModelError: a language model no adapter knows


def _try_processor(root: Path, trust_remote_code: bool):
    """The checkpoint's own processor, or None where it cannot load here (no torchvision, no processor files)."""
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(root, trust_remote_code=trust_remote_code)
    except (ImportError, OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


def _dtype(dtype: str | torch.dtype):
    if dtype == "auto" or isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype), None)
    if not isinstance(value, torch.dtype):
        raise InputError(f"dtype {dtype!r} is not a torch dtype; use auto, float32, bfloat16 or float16")
    return value
