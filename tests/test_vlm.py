"""hybridreduce.load and VLM.answer on tiny real-architecture video VLMs saved to disk and loaded back."""

from __future__ import annotations

import re
from importlib.util import find_spec

import numpy as np
import pytest
import torch

from hybridreduce import InputError, UnsupportedModelError, compat, load
from hybridreduce.compat import retention_mask_reference
from hybridreduce.tiny_models import build_tiny_model, save_tiny_vlm
from hybridreduce.video import Video
from hybridreduce.vlm import VideoFamily

WRAPPERS = ["nemotron_h_omni", "llava_next_video", "llava_onevision"]
TEXT = {"nemotron_h_omni": "nemotron_h", "llava_next_video": "nemotron_h", "llava_onevision": "jamba"}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("vlms")
    return {w: save_tiny_vlm(root / w, w, TEXT[w]) for w in WRAPPERS}


@pytest.fixture(scope="module")
def vlms(checkpoints):
    return {w: load(path) for w, path in checkpoints.items()}


def make_video(n_frames: int = 8, Himg: int = 32, Wimg: int = 32, seed: int = 0) -> Video:
    """Random frames with a static half, so that EVS has something to drop."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (n_frames, Himg, Wimg, 3), dtype=np.uint8)
    frames[:, : Himg // 2] = frames[0, : Himg // 2]
    return Video(frames, np.arange(n_frames) / 4.0, np.arange(n_frames), n_frames, 4.0, "<test>")


def _processor(wrapper: str, path, tokenizer):
    """The checkpoint's full transformers processor (needs torchvision), built from its saved parts."""
    if wrapper == "nemotron_h_omni":
        from transformers.models.nemotron_h_omni.image_processing_nemotron_h_omni import (
            NemotronH_Omni_Reasoning_V3ImageProcessor,
        )
        from transformers.models.nemotron_h_omni.processing_nemotron_h_omni import (
            NemotronH_Omni_Reasoning_V3Processor,
        )
        from transformers.models.nemotron_h_omni.video_processing_nemotron_h_omni import (
            NemotronH_Omni_Reasoning_V3VideoProcessor,
        )

        video = NemotronH_Omni_Reasoning_V3VideoProcessor.from_pretrained(path)
        image = NemotronH_Omni_Reasoning_V3ImageProcessor(patch_size=4, norm_mean=[0.5] * 3, norm_std=[0.5] * 3)
        return NemotronH_Omni_Reasoning_V3Processor(image_processor=image, video_processor=video, tokenizer=tokenizer)
    if wrapper == "llava_onevision":
        from transformers.models.llava_onevision import (
            LlavaOnevisionImageProcessor,
            LlavaOnevisionProcessor,
            LlavaOnevisionVideoProcessor,
        )

        return LlavaOnevisionProcessor(
            image_processor=LlavaOnevisionImageProcessor(),
            video_processor=LlavaOnevisionVideoProcessor.from_pretrained(path),
            tokenizer=tokenizer,
            num_image_tokens=16,
            vision_feature_select_strategy="full",
        )
    from transformers import LlavaNextImageProcessor
    from transformers.models.llava_next_video import LlavaNextVideoProcessor, LlavaNextVideoVideoProcessor

    return LlavaNextVideoProcessor(
        video_processor=LlavaNextVideoVideoProcessor.from_pretrained(path),
        image_processor=LlavaNextImageProcessor(),
        tokenizer=tokenizer,
        patch_size=4,
        vision_feature_select_strategy="default",
    )


@pytest.mark.parametrize("wrapper", WRAPPERS)
def test_load_and_prompt_layout(wrapper, vlms):
    vlm = vlms[wrapper]
    assert vlm.model_type == wrapper and not vlm.model.training
    assert vlm.processor_source in ("processor", "fallback")
    prompt = vlm.prompt(make_video(n_frames=8), "what colour is the shape ?")
    per_frame = 4  # 16×16 px frames, 4-px patches, 2×2 merge (omni) or 2×2 pooling (llava)
    units = 4 if wrapper == "nemotron_h_omni" else 8  # tubelets of 2 frames vs frames
    newline = int(wrapper == "llava_onevision")  # OneVision closes the video with one newline token
    assert (prompt.units, prompt.tokens_per_unit) == (units, per_frame)
    assert (int(prompt.grid_mask.sum()), prompt.n_visual) == (units * per_frame, units * per_frame + newline)
    ids = prompt.inputs["input_ids"]
    assert torch.equal(prompt.visual_mask, ids == vlm.family.placeholder_id)
    last = int(prompt.visual_mask[0].nonzero()[-1])
    assert bool(prompt.grid_mask[0, last]) == (not newline) and bool((prompt.grid_mask <= prompt.visual_mask).all())
    if wrapper == "nemotron_h_omni":  # one <img> … </img> chunk per tubelet, labelled with its frames' times
        text = vlm.tokenizer.decode(ids[0])
        assert text.count("<img>") == units and text.count("</img>") == units and "Frame 1 sampled at" in text


@pytest.mark.skipif(find_spec("torchvision") is None, reason="transformers' video processors need torchvision")
@pytest.mark.parametrize("wrapper", WRAPPERS)
def test_fallback_prompt_matches_the_checkpoints_processor(wrapper, vlms, checkpoints):
    """Where the processor runs, the prompt built without it has the same tokens and (nearly) the same pixels."""
    from hybridreduce.vlm import FAMILIES

    vlm = vlms[wrapper]
    config = vlm.family.config
    processor = _processor(wrapper, checkpoints[wrapper], vlm.tokenizer)
    with_processor = FAMILIES[wrapper](checkpoints[wrapper], config, vlm.tokenizer, processor)
    fallback = FAMILIES[wrapper](checkpoints[wrapper], config, vlm.tokenizer, None)
    video = make_video(n_frames=8, Himg=32, Wimg=48)
    a, b = with_processor.prompt(video, "what ?"), fallback.prompt(video, "what ?")
    assert torch.equal(a.inputs["input_ids"], b.inputs["input_ids"])
    pa, pb = a.inputs["pixel_values_videos"], b.inputs["pixel_values_videos"]
    assert pa.shape == pb.shape
    if wrapper == "nemotron_h_omni":  # the same video processor class on both paths
        assert torch.equal(pa, pb)
    else:  # torchvision's and PIL's bicubic resampling differ by a few levels
        assert (pa - pb).abs().mean() < 0.05


def test_omni_embeddings_are_the_models_own_pieces(vlms):
    """Text embeddings with get_video_features scattered on the placeholders, in placeholder order."""
    vlm = vlms["nemotron_h_omni"]
    prompt = vlm.prompt(make_video(), "what ?")
    embeds = vlm.embed(prompt)["inputs_embeds"]
    ids, vm = prompt.inputs["input_ids"], prompt.visual_mask
    with torch.no_grad():
        text = vlm.model.get_input_embeddings()(ids)
        video = vlm.model.get_video_features(prompt.inputs["pixel_values_videos"], return_dict=True).pooler_output
    # pooler_output is a (U, H·W, d) tensor up to transformers 5.23 and a tuple of one (U·H·W, d) tensor per video
    # from 5.24: concatenating its entries gives the (U·H·W, d) rows either way, independently of
    # compat.omni_video_features.
    video = torch.cat(list(video))
    assert torch.equal(embeds[~vm], text[~vm])
    assert torch.equal(embeds[vm], video.reshape(-1, video.shape[-1]))
    # The wrapper's own forward cannot take videos in transformers 5.23 (torch.cat on a tensor); from 5.24 it can,
    # and the generic path (the forward stopped at the decoder) must give the same embeddings.
    try:
        with torch.no_grad():
            generic = VideoFamily.embed(vlm.family, vlm.model, vlm.adapted.decoder, dict(prompt.inputs))
    except TypeError:
        return
    assert torch.equal(generic, embeds)


class _Stop(Exception):
    """Raised by a decoder pre-hook to end a forward once its inputs are taken."""


@pytest.mark.parametrize("rate", [0.25, 0.5, 0.75])
def test_evs_equals_the_omni_forwards_own_pruning(vlms, rate):
    """Where the wrapper's forward takes videos (transformers 5.24 on), its video_pruning_rate path hands the language
    model exactly the rows VLM.evs keeps."""
    vlm = vlms["nemotron_h_omni"]
    prompt = vlm.prompt(make_video(n_frames=7, Himg=32, Wimg=48), "what ?")  # 4 tubelets, the last one padded
    kept = vlm.evs(prompt, vlm.embed(prompt), rate)
    taken = {}

    def take(module, args, kwargs):
        taken["inputs_embeds"] = kwargs["inputs_embeds"]
        raise _Stop

    handle = vlm.adapted.decoder.register_forward_pre_hook(take, with_kwargs=True)
    saved, vlm.model.video_pruning_rate = vlm.model.video_pruning_rate, rate
    try:
        with torch.no_grad():
            vlm.model(**prompt.inputs, use_cache=False)
    except _Stop:
        pass
    except TypeError:  # transformers 5.23: torch.cat on the features tensor
        pytest.skip(f"transformers {compat.VERSION}'s NemotronH_Omni forward cannot take videos")
    finally:
        handle.remove()
        vlm.model.video_pruning_rate = saved
    assert torch.equal(taken["inputs_embeds"], kept.inputs)


def test_omni_compat_names_an_unknown_api():
    """Processor outputs and video features of a shape hybridreduce does not know raise with the installed version."""
    from types import SimpleNamespace

    def model(pooler_output):
        output = SimpleNamespace(pooler_output=pooler_output)
        return SimpleNamespace(get_video_features=lambda pixels, return_dict: output)

    pixels = torch.zeros(1, 2, 6, 8, 8)
    with pytest.raises(InputError, match=rf"transformers {compat.VERSION}: get_video_features.*a tensor \(8, 4\)"):
        compat.omni_video_features(model(torch.zeros(8, 4)), pixels)
    with pytest.raises(InputError, match="holds 2 videos; pass one video at a time"):
        compat.omni_video_features(model((torch.zeros(8, 4), torch.zeros(8, 4))), pixels)
    assert torch.equal(compat.omni_video_features(model(torch.ones(2, 4, 3)), pixels), torch.ones(8, 3))
    assert torch.equal(compat.omni_video_features(model((torch.ones(8, 3),)), pixels), torch.ones(8, 3))

    class Processor:  # packs nothing (no temporal_patch_size) but returns 5-D pixels without the per-frame counts
        valid_kwargs = SimpleNamespace(__annotations__={})

        def __call__(self, videos, **kwargs):
            return {"pixel_values_videos": torch.zeros(1, 2, 6, 8, 8)}

    with pytest.raises(InputError, match=rf"transformers {compat.VERSION}: Processor returned pixel_values_videos"):
        compat.omni_video_inputs(Processor(), np.zeros((4, 8, 8, 3), np.uint8), None, 2)
    with pytest.raises(InputError, match="output has the keys pixel_values_videos"):
        compat.omni_video_placeholder({"pixel_values_videos": pixels}, None, None, 2, None)


@pytest.mark.parametrize("wrapper", ["llava_next_video", "llava_onevision"])
def test_llava_embeddings_give_the_wrappers_logits(wrapper, vlms):
    vlm = vlms[wrapper]
    prompt = vlm.prompt(make_video(), "what ?")
    embeds = vlm.embed(prompt)
    with torch.no_grad():
        ref = vlm.model(**prompt.inputs).logits
        ours = vlm.model(inputs_embeds=embeds["inputs_embeds"], attention_mask=embeds["attention_mask"]).logits
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("Himg,Wimg", [(32, 32), (32, 48)])  # square and non-square token grids
@pytest.mark.parametrize("rate", [0.25, 0.5, 0.75])
def test_evs_keeps_what_the_omni_rule_keeps(vlms, Himg, Wimg, rate):
    """Our EVS on the omni model keeps exactly compute_retention_mask's tokens of the same features."""
    vlm = vlms["nemotron_h_omni"]
    prompt = vlm.prompt(make_video(n_frames=8, Himg=Himg, Wimg=Wimg), "what ?")
    embeds = vlm.embed(prompt)
    kept = vlm.evs(prompt, embeds, rate)
    with torch.no_grad():
        features = compat.omni_video_features(vlm.model, prompt.inputs["pixel_values_videos"])  # (U·H·W, d)
    U = prompt.units
    pixels = prompt.inputs["pixel_values_videos"]  # frames up to 5.23, tubelets from 5.24: (..., height, width)
    H = pixels.shape[-2] // vlm.model.vision_model.patch_size // 2
    W = pixels.shape[-1] // vlm.model.vision_model.patch_size // 2
    assert H * W == prompt.tokens_per_unit and (Himg == Wimg) == (H == W)
    assert features.shape[0] == U * H * W
    ref = retention_mask_reference(features.reshape(U * H * W, -1), U, H, W, rate)
    visual_rows = prompt.visual_mask[0].nonzero().squeeze(1)
    assert torch.equal(kept.kept_index[kept.visual_mask], visual_rows[ref])
    assert torch.equal(kept.inputs[0], embeds["inputs_embeds"][0, kept.kept_index[0]])  # rows unchanged


@pytest.mark.parametrize("wrapper", WRAPPERS)
def test_greedy_answer_equals_generate(wrapper, vlms):
    vlm = vlms[wrapper]
    prompt = vlm.prompt(make_video(), "what colour ?")
    ans = vlm.answer(prompt, max_new_tokens=6)
    embeds = vlm.embed(prompt)
    with torch.no_grad():
        ref = vlm.model.generate(**embeds, max_new_tokens=6, do_sample=False)
    assert ans.tokens == ref[0].tolist()  # generate from inputs_embeds returns the new tokens only
    assert ans.block_visual == [prompt.n_visual] * vlm.adapted.num_blocks and ans.average_keep == 1.0
    assert min(ans.embed_s, ans.prefill_s, ans.decode_s) >= 0 and ans.ttft_s >= ans.prefill_s


@pytest.mark.parametrize("wrapper", WRAPPERS)
def test_keep_one_answers_exactly_like_no_reduction(wrapper, vlms):
    vlm = vlms[wrapper]
    prompt = vlm.prompt(make_video(seed=1), "how many ?")
    full = vlm.answer(prompt, max_new_tokens=6)
    keep1 = vlm.answer(prompt, {"method": "progressive", "keep": 1.0}, max_new_tokens=6)
    assert keep1.tokens == full.tokens and keep1.text == full.text
    assert keep1.block_visual == full.block_visual


@pytest.mark.parametrize("wrapper", WRAPPERS)
def test_reduction_and_evs_shrink_what_the_blocks_carry(wrapper, vlms):
    vlm = vlms[wrapper]
    prompt = vlm.prompt(make_video(seed=2), "how many ?")
    half = {"method": "progressive", "keep": 0.5}  # feasible on the 4-block Jamba of the OneVision model too
    red = vlm.answer(prompt, half, max_new_tokens=3)
    assert red.block_visual[0] == prompt.n_visual and red.block_visual[-1] < prompt.n_visual
    assert red.block_visual == sorted(red.block_visual, reverse=True) and 0 < red.average_keep < 1
    evs = vlm.answer(prompt, None, evs=0.5, max_new_tokens=3)
    grid = int(prompt.grid_mask.sum())
    assert evs.evs_visual == grid // 2 + (prompt.n_visual - grid)  # tokens off the grid (a newline) all stay
    assert evs.block_visual == [evs.evs_visual] * vlm.adapted.num_blocks
    both = vlm.answer(prompt, half, evs=0.5, max_new_tokens=3)
    assert both.block_visual[0] == evs.evs_visual and both.average_keep < evs.average_keep
    with pytest.raises(InputError, match="max_new_tokens"):
        vlm.answer(prompt, max_new_tokens=0)


def test_load_errors(tmp_path, checkpoints):
    with pytest.raises(InputError, match="not a checkpoint directory"):
        load(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no config.json"):
        load(tmp_path / "empty")
    build_tiny_model("nemotron_h").save_pretrained(tmp_path / "lm")
    with pytest.raises(UnsupportedModelError, match="not a supported video VLM.*nemotron_h_omni"):
        load(tmp_path / "lm")
    with pytest.raises(InputError, match="not a torch dtype"):
        load(checkpoints["nemotron_h_omni"], dtype="float33")
    with pytest.raises(InputError, match="either device or device_map"):
        load(checkpoints["nemotron_h_omni"], device="cpu", device_map="auto")


def test_load_options_check_every_option_before_loading(tmp_path, checkpoints):
    """LoadOptions.check (what run, generate and the lmms-eval models check before a model loads): each bad option
    is one InputError naming its flag; the good ones pass without loading weights."""
    from hybridreduce.vlm import LoadOptions

    good = LoadOptions(model=checkpoints["nemotron_h_omni"], dtype="bfloat16", device="cpu")
    assert good.check() is good
    assert LoadOptions(model=checkpoints["nemotron_h_omni"], dtype=torch.float16).check()
    bad = {
        "model (--model)": LoadOptions(model=tmp_path / "nothing"),
        "dtype (--dtype)": LoadOptions(model=checkpoints["nemotron_h_omni"], dtype="float33"),
        "--device-map auto": LoadOptions(model=checkpoints["nemotron_h_omni"], device="cpu", device_map="auto"),
        "adapter": LoadOptions(model=checkpoints["nemotron_h_omni"], adapter=tmp_path / "no_adapter"),
    }
    for fragment, options in bad.items():
        with pytest.raises(InputError, match=re.escape(fragment)):
            options.check()


def test_load_dtype(checkpoints):
    vlm = load(checkpoints["llava_next_video"], dtype="bfloat16")
    assert next(vlm.model.parameters()).dtype == torch.bfloat16


@pytest.mark.skipif(find_spec("accelerate") is None, reason="device_map needs accelerate (the dev extra has it)")
def test_device_map_load_answers_like_a_plain_load(vlms, checkpoints):
    mapped = load(checkpoints["nemotron_h_omni"], device_map={"": "cpu"})
    prompt = mapped.prompt(make_video(seed=3), "what ?")
    for schedule in (None, "progressive"):
        a = mapped.answer(prompt, schedule, max_new_tokens=4)
        b = vlms["nemotron_h_omni"].answer(prompt, schedule, max_new_tokens=4)
        assert (a.tokens, a.block_visual) == (b.tokens, b.block_visual)


def test_onevision_evs_ranks_the_frame_grid_and_keeps_the_newline(vlms):
    vlm = vlms["llava_onevision"]
    prompt = vlm.prompt(make_video(n_frames=6), "what ?")
    embeds = vlm.embed(prompt)
    kept = vlm.evs(prompt, embeds, 0.5)
    x = embeds["inputs_embeds"]
    frames = x[prompt.grid_mask].view(prompt.units, 2, 2, -1)  # the 2×2 pooled grid of each frame
    expected = retention_mask_reference(frames.reshape(-1, x.shape[-1]), 6, 2, 2, 0.5)
    grid_rows = prompt.grid_mask[0].nonzero().squeeze(1)
    newline = int(prompt.visual_mask[0].nonzero()[-1])
    kept_rows = kept.kept_index[kept.visual_mask]
    assert torch.equal(kept_rows[:-1], grid_rows[expected]) and int(kept_rows[-1]) == newline
