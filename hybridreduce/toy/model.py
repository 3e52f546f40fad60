"""The embedded toy video VLM: a patch-embedding vision encoder, a projector, and a stock
transformers ``NemotronHForCausalLM`` (Mamba-2, attention and MLP blocks in the Nemotron-H pattern).

Nothing in the language model is ours: hybridreduce's adapters find it at ``model.language_model``
as they find the language model of any LLaVA-style wrapper. The vision side is deliberately
small: each ``P × P`` patch of each frame becomes one visual token, a linear patch embedding plus
learned frame, row and column embeddings (Nemotron-H's attention has no positional encoding, so
time and place must reach the language model through the tokens themselves; DESIGN, notes for the
embedded model), a two-layer MLP, and a projector to the language model's width.

Shapes use the dimension letters of :mod:`hybridreduce.glossary` (``d_v`` the vision width, ``d`` the language
model's).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import GenerationMixin, NemotronHConfig, NemotronHForCausalLM, PretrainedConfig, PreTrainedModel

from ..errors import InputError
from .encoding import patchify


class ToyVLMConfig(PretrainedConfig):
    """Configuration of :class:`ToyVLM`.

    Args:
        text_config: the ``NemotronHConfig`` (or its dict) of the language model.
        frames, rows, cols, patch: the video geometry (``ToyConfig.frames`` etc.).
        vision_hidden: ``d_v``.
        video_token_id: the ``<video>`` placeholder id whose embeddings the visual tokens replace.
    """

    model_type = "hybridreduce_toy_vlm"
    sub_configs = {"text_config": NemotronHConfig}

    def __init__(
        self,
        text_config: NemotronHConfig | dict | None = None,
        frames: int = 32,
        rows: int = 4,
        cols: int = 4,
        patch: int = 8,
        vision_hidden: int = 64,
        video_token_id: int = 2,
        **kwargs,
    ) -> None:
        if isinstance(text_config, dict):
            text_config = NemotronHConfig(**text_config)
        self.text_config = text_config if text_config is not None else NemotronHConfig()
        self.frames, self.rows, self.cols, self.patch = frames, rows, cols, patch
        self.vision_hidden = vision_hidden
        self.video_token_id = video_token_id
        super().__init__(**kwargs)

    @property
    def n_visual(self) -> int:
        return self.frames * self.rows * self.cols


class ToyVisionEncoder(nn.Module):
    """Patches → ``(b, V, d_v)``: linear patch embedding + frame/row/column embeddings, then an MLP."""

    def __init__(self, config: ToyVLMConfig) -> None:
        super().__init__()
        dv, P = config.vision_hidden, config.patch
        self.patch = P
        self.patch_embed = nn.Linear(2 * 3 * P * P, dv)  # the patch and its change from the video's median frame
        self.frame_embed = nn.Embedding(config.frames, dv)
        self.row_embed = nn.Embedding(config.rows, dv)
        self.col_embed = nn.Embedding(config.cols, dv)
        self.norm = nn.LayerNorm(dv)
        self.mlp = nn.Sequential(nn.Linear(dv, 2 * dv), nn.GELU(), nn.Linear(2 * dv, dv))
        self.rows, self.cols = config.rows, config.cols

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels: ``(b, F, 3, H·P, W·P)`` in ``[0, 1]`` → ``(b, V, d_v)``.

        Each patch is embedded together with its difference from the same patch of the video's per-pixel
        temporal median (the static background, in a video whose events are short): background patches
        then look alike whatever the video's texture, and what moves or appears stands out.
        """
        background = pixels.median(dim=1, keepdim=True).values  # (b, 1, 3, H·P, W·P)
        x = torch.cat([patchify(pixels, self.patch), patchify(pixels - background, self.patch)], dim=-1)
        x = self.patch_embed(x)
        # (frame, row, column) of each visual token in frame-major order (computed here, not kept as a buffer:
        # from_pretrained materialises modules from the meta device and never fills non-persistent buffers).
        idx = torch.arange(x.shape[1], device=x.device)
        t, r, c = idx // (self.rows * self.cols), (idx // self.cols) % self.rows, idx % self.cols
        x = x + self.frame_embed(t) + self.row_embed(r) + self.col_embed(c)
        return x + self.mlp(self.norm(x))


class ToyVLM(PreTrainedModel, GenerationMixin):
    """A video VLM around a stock ``NemotronHForCausalLM`` (see the module docstring)."""

    config_class = ToyVLMConfig
    base_model_prefix = ""
    _supports_sdpa = True
    _supports_attention_backend = True

    def __init__(self, config: ToyVLMConfig) -> None:
        super().__init__(config)
        self.vision = ToyVisionEncoder(config)
        self.projector = nn.Sequential(
            nn.LayerNorm(config.vision_hidden), nn.Linear(config.vision_hidden, config.text_config.hidden_size)
        )
        self.language_model = NemotronHForCausalLM(config.text_config)
        self.post_init()

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def visual_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``(b, T)`` bool: the ``<video>`` placeholders, whose embeddings the visual tokens replace."""
        return input_ids == self.config.video_token_id

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None) -> torch.Tensor:
        """``(b, T, d)`` token embeddings with the projected visual tokens at the ``<video>`` positions."""
        embeds = self.get_input_embeddings()(input_ids)
        if pixel_values is None:
            return embeds
        mask = self.visual_mask(input_ids)
        counts = mask.sum(dim=1)
        frames = pixel_values.shape[1]  # a video may be shorter than config.frames (the frame embeddings it has)
        if frames > self.config.frames:
            raise InputError(
                f"the video has {frames} frames but the model has frame embeddings for {self.config.frames}; "
                f"sample at most {self.config.frames} frames"
            )
        V = frames * self.config.rows * self.config.cols
        if bool((counts != V).any()):
            raise InputError(
                f"every sample needs {V} <video> tokens (frames × rows × cols) for its pixel_values, got "
                f"{counts.tolist()}; encode prompts with hybridreduce.toy.encode_sample"
            )
        visual = self.projector(self.vision(pixel_values.to(embeds.dtype)))  # (b, V, d)
        return embeds.masked_scatter(mask[..., None], visual)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ):
        """Args as ``NemotronHForCausalLM``'s, plus ``pixel_values (b, F, 3, H·P, W·P)`` for the prefill.

        The cache travels in ``kwargs`` under whichever name the installed transformers uses (``cache`` from
        5.24, ``past_key_values`` before; see :mod:`hybridreduce.compat`) and reaches the language model as is.
        """
        if inputs_embeds is None:
            if input_ids is None:
                raise InputError("give input_ids (with pixel_values for the video) or inputs_embeds")
            inputs_embeds = self.embed(input_ids, pixel_values)
        return self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )
