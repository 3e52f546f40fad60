"""lmms-eval models that answer with hybridreduce: the standard video benchmarks on reduced checkpoints, no fork.

lmms-eval (0.7 and later) finds external models through the ``lmms_eval.models`` entry-point group;
hybridreduce's entry point is :func:`manifests`, so once hybridreduce is installed beside lmms-eval::

    lmms-eval --model hybridreduce \\
        --model_args pretrained=DIR,schedule=progressive,keep=0.25,evs=0.5,frames=64,device=cuda,dtype=bfloat16 \\
        --tasks videomme --output_path runs/lmms --log_samples

Models (lmms-eval ``--model`` names):

``hybridreduce``
    any checkpoint :func:`hybridreduce.load` reads (``nemotron_h_omni``, ``llava_next_video``, ``llava_onevision``).
``hybridreduce_nemotron_h_omni``, ``hybridreduce_llava_next_video``, ``hybridreduce_llava_onevision``
    the same model for one family: a checkpoint of another ``model_type`` is refused before it loads.

Every request is answered as ``hybridreduce run`` answers a manifest item, by the same code:

- the video is read by :func:`hybridreduce.video.read_video` with ``frames`` / ``fps`` / ``max_frames``
  (default 32 frames, as ``run``);
- the task's text (lmms-eval's ``doc_to_text``: question, options, the task's instruction) becomes the prompt
  by :meth:`hybridreduce.VLM.prompt` (the checkpoint's chat template and video placeholders), as ``run`` does
  with :func:`hybridreduce.manifest.prompt_text`;
- :meth:`hybridreduce.VLM.answer` answers it greedily, after EVS at rate ``evs`` (default the checkpoint's own
  ``video_pruning_rate``) and under ``schedule`` (default ``none``: every token) with ``keep``.

Model arguments (``--model_args k=v,...``), all checked before the model loads, and whether the model's depth can
meet the schedule right after, before any request runs; an unknown one is refused with the list of known ones:

``pretrained``   the checkpoint directory (required; local directories only).
``schedule``     a preset name (``progressive``, ``fastv``, ``pyramiddrop``, ``random``, ``uniform``, ``none``) or a
                 schedule YAML file; ``keep`` overrides its budget.
``evs``          EVS pruning rate in ``[0, 1)``; default the checkpoint's own ``video_pruning_rate`` (the model
                 as it ships, as ``run``); ``0`` turns it off.
``frames`` / ``fps`` / ``max_frames``   frame sampling, as ``hybridreduce run --frames / --fps / --max-frames``
                 (one of ``frames`` and ``fps``; 32 frames when neither is given).
``device``, ``dtype``, ``device_map``, ``trust_remote_code``   as ``hybridreduce run``; lmms-eval's own
                 ``--device`` arrives here too. Under ``accelerate launch`` ``device=cuda`` becomes
                 ``cuda:LOCAL_RANK``.
``adapter``      a ``hybridreduce finetune`` output directory: its LoRA adapter is merged into ``pretrained``
                 (as ``hybridreduce run --adapter``).
``max_new_tokens``   the answer length when the task's ``generation_kwargs`` gives none (default 8, as ``run``).
``batch_size``   1 only (lmms-eval's ``--batch_size`` arrives here): requests are answered one at a time (their
                 prompts differ in length, and a schedule keeps a different number of tokens in each).
``log_path``     where the per-request side file goes (a ``.jsonl`` file or a directory); see below.

The single ``setting`` of a model is what ``run`` would name it: ``full`` without a schedule, else
``<schedule>@<keep>``, with ``+evs<rate>`` when EVS runs (``progressive@0.25+evs0.5``).

Visual inputs: one video file or folder of frames (what ``videomme``, ``mlvu_dev``, ``longvideobench_val_v``,
``mvbench`` and ``egoschema`` give); several images (paths or PIL images) are the frames of one video, sampled as
``read_video`` samples a folder of frames; a single image is a one-frame video. Images go through the
checkpoint's *video* path: LLaVA-OneVision's any-resolution image tiling is not used.

Generation: greedy, stopped at the end-of-sequence token or after ``max_new_tokens``; the reply is cut at the
first of the task's ``until`` strings. A task asking for sampling (``do_sample``, ``temperature > 0``, beams) is
answered greedily, with one warning. ``loglikelihood`` (``multiple_choice`` tasks such as ``egoschema_mcppl``)
and multi-round generation are refused with an error naming the ``generate_until`` variant to use.

A request whose video is missing, corrupt or too short is answered with an empty string (scored wrong), its
error goes to the side file and the log, and the run goes on, as ``run`` records an error line; when every
request fails, the run stops with the first error.

The side file: one JSON line per request, appended and flushed at once, beside lmms-eval's own outputs — in
``OUTPUT_PATH/<model name as lmms-eval writes it>/`` when the command has ``--output_path`` (or its ``--config``
file does), else ``./hybridreduce_lmms_eval/``; ``log_path`` overrides either. Its name is
``<time>_hybridreduce_<setting>.jsonl`` (``.rank<i>`` added under several processes). Each line holds ``task``,
``split``, ``doc_id``, ``setting``, ``config`` (what ``run`` records per line), ``frames``, ``n_visual`` (visual
tokens of the prompt), ``evs_visual`` (after EVS), ``block_visual`` (visual tokens each block carried),
``block_keep`` (that over ``n_visual``), ``average_keep`` (its mean over blocks), ``embed_s``, ``evs_s``,
``prefill_s``, ``ttft_s``, ``decode_s``, the generated ``text`` and the ``response`` handed to lmms-eval; or
``error``. When lmms-eval finishes, ``<same name>.summary.json`` holds per task the means that ``hybridreduce run``'s
summary reports (:func:`hybridreduce.runner.summarize`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import yaml
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from lmms_eval.models.registry_v2 import ModelManifest
from lmms_eval.utils import get_datetime_str, sanitize_model_name
from loguru import logger
from PIL import Image
from tqdm import tqdm

from .. import validate
from ..errors import HybridReduceError, InputError, UnsupportedModelError, VideoError
from ..runner import (
    TIMINGS,
    answer_config,
    check_evs,
    check_max_new_tokens,
    check_sampling,
    check_settings,
    settings_for,
    summarize,
)
from ..video import IMAGE_EXTENSIONS, Video, read_video, sample_indices
from ..vlm import DEFAULT_FRAMES, VIDEO_FAMILIES, LoadOptions, quiet_transformers

#: The answer length when a task's ``generation_kwargs`` gives no ``max_new_tokens``: ``run``'s default.
DEFAULT_MAX_NEW_TOKENS = 8
#: Where the side file goes when the lmms-eval command has no ``--output_path`` and no ``log_path`` is given.
FALLBACK_LOG_DIR = "hybridreduce_lmms_eval"


class HybridReduce(lmms):
    """An lmms-eval model for any video VLM checkpoint :func:`hybridreduce.load` reads (module docstring)."""

    #: lmms-eval's name for this model (``--model``).
    model_id = "hybridreduce"
    #: The checkpoint ``model_type`` this model answers; None: every family :func:`hybridreduce.load` supports.
    family: str | None = None
    is_simple = True

    def __init__(
        self,
        pretrained: str | None = None,
        schedule: str | None = "none",
        keep: float | None = None,
        evs: float | None = None,
        frames: int | None = None,
        fps: float | None = None,
        max_frames: int | None = None,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        device: str | None = None,
        dtype: str = "auto",
        device_map: str | None = None,
        trust_remote_code: bool = False,
        adapter: str | None = None,
        batch_size: int | str = 1,
        max_batch_size: int | None = None,
        log_path: str | None = None,
        **unknown,
    ) -> None:
        """Check every argument, load the checkpoint, check the schedule against its depth (module docstring).

        Raises:
            InputError: an unknown or bad argument, or a schedule the model's depth cannot meet.
            UnsupportedModelError: a checkpoint that is no supported video VLM (or not this model's family).
        """
        super().__init__()
        self._command = lmms_eval_command_line()
        # lmms-eval's clock and time zone, read before the model loads (lmms-eval read it just before creating this
        # model): the side file's name starts as lmms-eval's <time>_results.json does.
        self._started = get_datetime_str(**({"timezone": self._command.timezone} if self._command.timezone else {}))
        if unknown:
            raise InputError(
                f"--model {self.model_id}: unknown model argument(s) {', '.join(sorted(unknown))}; the known ones are "
                f"{', '.join(KNOWN_ARGS)} (see hybridreduce.integrations.lmms_eval)"
            )
        if pretrained is None:
            raise InputError(f"--model {self.model_id} needs pretrained=DIR, the checkpoint directory (--model_args)")
        if isinstance(batch_size, bool) or str(batch_size) != "1":
            raise InputError(
                f"batch_size {batch_size!r}: hybridreduce answers one request at a time; give --batch_size 1 (the "
                "default). Prompts differ in length and a schedule keeps a different number of tokens in each"
            )
        if max_batch_size is not None:
            raise InputError(f"max_batch_size {max_batch_size!r} goes with --batch_size auto; drop it (batch size 1)")
        if not isinstance(trust_remote_code, bool):
            raise InputError(f"trust_remote_code must be true or false, got {trust_remote_code!r}")
        if schedule is None:
            schedule = "none"
        if not isinstance(schedule, str):
            raise InputError(f"schedule must be a preset name or a YAML file, got {schedule!r}")
        if device == "cuda" and "LOCAL_RANK" in os.environ:  # one GPU per process under accelerate / torchrun
            device = f"cuda:{os.environ['LOCAL_RANK']}"
        root = validate.checkpoint_dir(pretrained, "pretrained")
        # What `hybridreduce run` checks before its model loads, by the same code.
        self.load_options = LoadOptions(
            model=str(root), dtype=dtype, device=device, device_map=device_map, trust_remote_code=trust_remote_code,
            adapter=adapter,
        ).check()  # fmt: skip
        frames = DEFAULT_FRAMES if frames is None and fps is None else frames
        check_sampling(frames, fps, max_frames)
        if evs is not None:
            check_evs(evs)
        check_max_new_tokens(max_new_tokens)
        full = schedule == "none"
        settings_for(schedule, evs=evs or 0.0, full=full, keep=keep)  # the schedule and keep, before loading
        model_type = _model_type(root)
        if self.family is not None and model_type != self.family:
            raise UnsupportedModelError(
                f"pretrained {root}: model_type {model_type!r}, but --model {self.model_id} answers {self.family} "
                f"checkpoints only; use --model {MODEL_IDS.get(model_type, HybridReduce.model_id)}"
            )

        quiet_transformers()
        self.vlm = self.load_options.load()  # refuses a model_type that is no supported video VLM
        settings = settings_for(schedule, evs=self.vlm.evs_rate(evs), full=full, keep=keep)
        self.setting = check_settings(settings, self.vlm.adapted.num_blocks)[-1]  # the one setting of this model
        self.sampling = {"frames": frames, "fps": fps, "max_frames": max_frames}
        self.max_new_tokens = max_new_tokens
        self.pretrained = str(pretrained)
        self._log_path = log_path
        self.log_file: Path | None = None  # chosen at the first request, once lmms-eval has set the rank
        self._rows: list[dict] = []
        self._warned_sampling = False
        logger.info(
            f"hybridreduce: {root} ({self.vlm.model_type}, {self.vlm.adapted.num_blocks} blocks), setting "
            f"{self.setting.name}, {self.sampling}"
        )

    # -- what lmms-eval reads ---------------------------------------------------------------------------------
    @property
    def device(self):
        """Where the model's inputs go (lmms-eval gathers request counts there under several processes)."""
        return self.vlm.model.get_input_embeddings().weight.device

    @property
    def batch_size(self) -> int:
        return 1

    def loglikelihood(self, requests: list[Instance]):
        """Refused: hybridreduce answers by greedy generation only."""
        task = requests[0].args[4] if requests and len(requests[0].args) > 4 else "?"
        raise InputError(
            f"task {task!r} scores answers by log-likelihood (output_type multiple_choice or loglikelihood), which "
            "hybridreduce does not compute: it answers by greedy generation under a reduction schedule. Use the "
            "task's generate_until variant (e.g. egoschema instead of egoschema_mcppl)"
        )

    def generate_until_multi_round(self, requests):
        """Refused: one question per video."""
        raise InputError(
            "multi-round generation is not supported by hybridreduce (one question per video and prompt); use a "
            "single-round generate_until task"
        )

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Answer each request as ``hybridreduce run`` answers a manifest item; one side-file line per request.

        Returns:
            The replies, cut at the task's ``until`` strings; ``""`` for a request whose video could not be read.
        Raises:
            InputError: every request failed (the first error is named).
        """
        replies, failures = [], []
        bar = tqdm(total=len(requests), disable=self.rank != 0, desc=f"hybridreduce {self.setting.name}")
        for request in requests:
            contexts, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            row = {"task": task, "split": split, "doc_id": doc_id, "setting": self.setting.name}
            max_new_tokens, until = self._generation(gen_kwargs)
            row["config"] = answer_config(self.vlm, self.setting, max_new_tokens=max_new_tokens, **self.sampling)
            try:
                video = request_video(doc_to_visual(self.task_dict[task][split][doc_id]), **self.sampling)
                prompt = self.vlm.prompt(video, contexts)
                ans = self.vlm.answer(
                    prompt, self.setting.schedule, evs=self.setting.evs, max_new_tokens=max_new_tokens
                )
            except HybridReduceError as exc:
                row["error"] = str(exc)
                failures.append(row)
                logger.warning(f"hybridreduce: {task} doc {doc_id}: {exc}")
                reply = ""
            else:
                reply = cut_at(ans.text, until)
                row.update(
                    frames=len(video.frames),
                    n_visual=ans.n_visual,
                    evs_visual=ans.evs_visual,
                    block_visual=ans.block_visual,
                    block_keep=[round(b / ans.n_visual, 6) for b in ans.block_visual],
                    average_keep=round(ans.average_keep, 6),
                    **{t: round(getattr(ans, t), 6) for t in TIMINGS},
                    text=ans.text,
                    response=reply,
                )
            self._write(row)
            replies.append(reply)
            bar.update(1)
        bar.close()
        if requests and len(failures) == len(requests):
            first = failures[0]
            raise InputError(
                f"every request failed ({len(failures)} of {len(requests)}; first, {first['task']} doc "
                f"{first['doc_id']}: {first['error']}); fix the cause and run again"
            )
        return replies

    def clean(self) -> None:
        """At the end of lmms-eval's run: the per-task summary beside the side file, then lmms-eval's own clean-up."""
        if self.log_file is not None and self._rows:
            # run's summary, by task instead of by setting (this model has one setting); accuracy is in lmms-eval's
            # results file, so summarize's (ungraded here) accuracy fields are left out.
            by_task = summarize([{**r, "setting": r["task"]} for r in self._rows])["results"]
            left_out = ("setting", "accuracy", "per_type", "prefill_speedup")
            tasks = {r["setting"]: {k: v for k, v in r.items() if k not in left_out} for r in by_task}
            summary = {"setting": self.setting.name, "side_file": self.log_file.name, "tasks": tasks}
            path = self.log_file.with_name(self.log_file.name.removesuffix(".jsonl") + ".summary.json")
            path.write_text(json.dumps(summary, indent=2) + "\n")
            logger.info(f"hybridreduce: {len(self._rows)} requests in {self.log_file}, summary in {path.name}")
        super().clean()

    # -- helpers ----------------------------------------------------------------------------------------------
    def _generation(self, gen_kwargs: dict | None) -> tuple[int, list[str]]:
        """``(max_new_tokens, until)`` from a task's ``generation_kwargs``; warns once if it asks for sampling."""
        gen = dict(gen_kwargs or {})
        max_new_tokens = check_max_new_tokens(gen.get("max_new_tokens", self.max_new_tokens))
        until = gen.get("until") or []
        until = [until] if isinstance(until, str) else [u for u in until if isinstance(u, str) and u]
        sampling = gen.get("do_sample") or (gen.get("temperature") or 0) > 0 or (gen.get("num_beams") or 1) > 1
        if sampling and not self._warned_sampling:
            self._warned_sampling = True
            logger.warning(
                "hybridreduce decodes greedily; the task's sampling settings (do_sample, temperature, num_beams) "
                "are ignored"
            )
        return max_new_tokens, until

    def _write(self, row: dict) -> None:
        """Append ``row`` to the side file (created at the first request) and flush it."""
        if self.log_file is None:
            self.log_file = self._side_file()
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            logger.info(f"hybridreduce: per-request tokens and timings go to {self.log_file}")
        with self.log_file.open("a") as f:
            f.write(json.dumps(row) + "\n")
        self._rows.append(row)

    def _side_file(self) -> Path:
        """The side file's path (module docstring)."""
        rank = f".rank{self.rank}" if self.world_size > 1 else ""  # one file per process
        name = f"{self._started}_hybridreduce_{self.setting.name}{rank}.jsonl"
        if self._log_path is not None:
            given = Path(self._log_path)
            return given.with_name(given.stem + rank + ".jsonl") if given.suffix == ".jsonl" else given / name
        if self._command.output_path is None:
            return Path(FALLBACK_LOG_DIR) / name
        # lmms-eval writes <time>_results.json and the samples into OUTPUT_PATH/<sanitized model name>/.
        return Path(self._command.output_path) / sanitize_model_name(self.pretrained) / name


class NemotronHOmni(HybridReduce):
    """``nemotron_h_omni`` checkpoints only (RADIO tower, Nemotron-H language model, built-in EVS)."""

    model_id = "hybridreduce_nemotron_h_omni"
    family = "nemotron_h_omni"


class LlavaNextVideo(HybridReduce):
    """``llava_next_video`` checkpoints whose ``text_config`` is a hybrid."""

    model_id = "hybridreduce_llava_next_video"
    family = "llava_next_video"


class LlavaOnevision(HybridReduce):
    """``llava_onevision`` checkpoints whose ``text_config`` is a hybrid."""

    model_id = "hybridreduce_llava_onevision"
    family = "llava_onevision"


#: lmms-eval model name -> class: ``hybridreduce`` for any family, one per family.
MODELS: dict[str, type[HybridReduce]] = {
    cls.model_id: cls for cls in (HybridReduce, NemotronHOmni, LlavaNextVideo, LlavaOnevision)
}
#: ``model_type`` -> the lmms-eval name of its family's model.
MODEL_IDS = {cls.family: name for name, cls in MODELS.items() if cls.family is not None}
assert set(MODEL_IDS) == set(VIDEO_FAMILIES), "every family hybridreduce.load supports needs its lmms-eval model"
#: The model arguments :class:`HybridReduce` takes.
KNOWN_ARGS = (
    "pretrained", "schedule", "keep", "evs", "frames", "fps", "max_frames", "max_new_tokens", "device", "dtype",
    "device_map", "trust_remote_code", "adapter", "batch_size", "log_path",
)  # fmt: skip


def manifests() -> list[ModelManifest]:
    """The ``lmms_eval.models`` entry point: one manifest per model of :data:`MODELS`."""
    return [ModelManifest(model_id=name, simple_class_path=f"{__name__}.{c.__name__}") for name, c in MODELS.items()]


# --- requests -------------------------------------------------------------------------------------------------


def request_video(
    visuals, frames: int | None = DEFAULT_FRAMES, fps: float | None = None, max_frames: int | None = None
) -> Video:
    """The video of one lmms-eval request, from what the task's ``doc_to_visual`` returned.

    Args:
        visuals: a list of one video path (file or folder of frames: :func:`hybridreduce.video.read_video`), of
            image paths, or of PIL images.
        frames, fps, max_frames: frame sampling, as ``hybridreduce run``.
    Returns:
        A :class:`hybridreduce.video.Video`. Several images are the frames of one video, sampled as ``read_video``
        samples a folder of frames (:func:`frames_video`); one image is a one-frame video.
    Raises:
        InputError: no visual, or one hybridreduce cannot answer (audio, a URL, a mix of kinds).
        VideoError: what ``read_video`` raises (missing, corrupt, too few frames), or unreadable images.
    """
    if visuals is None or (isinstance(visuals, (list, tuple)) and len(visuals) == 0):
        raise InputError("the request has no video or image; hybridreduce answers questions about a video")
    if not isinstance(visuals, (list, tuple)):
        visuals = [visuals]
    if all(isinstance(v, (str, os.PathLike)) for v in visuals):
        paths = [Path(v) for v in visuals]
        if any(str(v).startswith(("http://", "https://")) for v in visuals):
            raise InputError(f"{visuals[0]}: a URL; hybridreduce reads local files only (download the dataset first)")
        if len(paths) == 1 and paths[0].suffix.lower() not in IMAGE_EXTENSIONS:
            return read_video(paths[0], num_frames=frames, fps=fps, max_frames=max_frames)
        odd = [str(p) for p in paths if p.suffix.lower() not in IMAGE_EXTENSIONS]
        if odd:
            raise InputError(
                f"the request gives {len(paths)} paths, {odd[0]} not an image ({' '.join(IMAGE_EXTENSIONS)}); give "
                "one video, or the frames of one video as images"
            )
        return frames_video(paths, frames, fps, max_frames)
    if all(isinstance(v, Image.Image) for v in visuals):
        return frames_video(list(visuals), frames, fps, max_frames)
    kinds = sorted({type(v).__name__ for v in visuals})
    raise InputError(
        f"the request's visuals are {', '.join(kinds)}; hybridreduce takes a video path, a folder of frames, image "
        "paths or PIL images (no audio, no mix of kinds)"
    )


def frames_video(images: list, frames: int | None, fps: float | None, max_frames: int | None) -> Video:
    """Images (paths or PIL images, in order) as the frames of one video.

    One image is a one-frame video whatever the sampling. Several are sampled as :func:`read_video` samples a folder
    of frame images: ``frames=F`` keeps ``F`` uniformly (:func:`hybridreduce.video.sample_indices`; fewer images
    than ``F`` is a VideoError, frames are never repeated), ``fps`` keeps every image (images are taken ``1 / fps``
    seconds apart), and ``max_frames`` caps what is kept uniformly.
    """
    n_images = len(images)
    rate = 1.0 if fps is None else float(fps)
    if n_images == 1:
        chosen = np.zeros(1, dtype=np.int64)
    else:
        try:
            chosen = sample_indices(n_images, frames) if frames is not None else np.arange(n_images, dtype=np.int64)
        except VideoError as exc:
            raise VideoError(f"the request's {n_images} images: {exc}") from None
        if max_frames is not None and len(chosen) > max_frames:
            chosen = chosen[sample_indices(len(chosen), max_frames)]
    arrays = [_rgb(images[i]) for i in chosen]
    shapes = sorted({a.shape for a in arrays})
    if len(shapes) > 1:
        raise VideoError(
            f"the request's images have {len(shapes)} sizes ({shapes[0][1]}x{shapes[0][0]}, {shapes[1][1]}x"
            f"{shapes[1][0]}, ...); the frames of one video must have one size"
        )
    return Video(
        frames=np.stack(arrays),
        timestamps=chosen / rate,
        indices=chosen,
        source_frames=n_images,
        fps=rate,
        path=str(images[0]) if not isinstance(images[0], Image.Image) else f"<{n_images} image(s)>",
    )


def _rgb(image) -> np.ndarray:
    """``(Himg, Wimg, 3)`` uint8 of a PIL image or an image file."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    try:
        with Image.open(image) as opened:
            return np.asarray(opened.convert("RGB"))
    except OSError as exc:
        raise VideoError(f"{image}: cannot read the image ({exc}); replace or delete it") from None


def cut_at(text: str, until: list[str]) -> str:
    """``text`` up to the first occurrence of any of the stop strings ``until`` (all of it when none occurs)."""
    ends = [text.find(u) for u in until if u in text]
    return text[: min(ends)] if ends else text


def lmms_eval_command_line(argv: list[str] | None = None) -> SimpleNamespace:
    """``output_path`` and ``timezone`` of the running lmms-eval command (None where it gives none).

    lmms-eval hands its model neither its output folder nor its clock, so the side file reads them from the command
    line (``sys.argv``, or ``argv``), and from its ``--config`` file for what the command line does not give (the
    first run of a file with several).
    """
    parser = argparse.ArgumentParser(add_help=False)
    for flag in ("--output_path", "--timezone", "--config"):
        parser.add_argument(flag)
    known, _ = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    found = SimpleNamespace(output_path=known.output_path, timezone=known.timezone)
    if known.config and (found.output_path is None or found.timezone is None):
        try:
            config = yaml.safe_load(Path(known.config).read_text())
        except (OSError, ValueError):
            config = None  # lmms-eval itself says what is wrong with the file
        runs = [r for r in (config if isinstance(config, list) else [config]) if isinstance(r, dict)]
        for key in ("output_path", "timezone"):
            if getattr(found, key) is None:
                setattr(found, key, next((str(r[key]) for r in runs if r.get(key)), None))
    return found


def _model_type(root: Path) -> str | None:
    """The checkpoint's ``model_type``; None when ``config.json`` does not parse (``hybridreduce.load`` says why)."""
    try:
        return json.loads((root / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None
