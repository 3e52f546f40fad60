"""Read a video file or a folder of frame images into a uint8 RGB array, sampling frames on the way.

What is decoded: a video file (``.mp4 .webm .mkv .avi .mov``) is decoded with PyAV (FFmpeg), first video stream
only, each frame converted to 8-bit RGB by ``frame.to_ndarray(format="rgb24")``; a folder of images (``.jpg .jpeg
.png .bmp .webp``) is read with Pillow in natural order (``frame_2`` before ``frame_10``), each image converted to
RGB, all of one size. Only the sampled frames are kept, and decoding stops after the last of them.

How frames are sampled, for a source of ``total`` frames at ``source_fps`` frames per second
(:func:`sample_indices`)::

    uniform, F frames:   index_i = floor((i + 0.5) · total / F)                 i = 0 … F−1
                         (the centre frame of each of F equal segments)
    by rate, r a second: t_k = k / r  for every t_k < total / source_fps        k = 0, 1, 2, …
                         index_k = min(floor(t_k · source_fps + 0.5), total − 1)    (nearest frame, halves up)
                         with repeated indices dropped (the list stays increasing)

:func:`read_video` reads every frame when neither is asked for; ``max_frames`` caps a longer selection by taking
``max_frames`` of the selected frames with the uniform formula applied to the selection.

Why frames are never repeated: a video shorter than the requested ``F`` would need repeated frames to fill ``F``
slots. A repeated frame is no new evidence, yet it adds visual tokens and fakes exactly the temporal redundancy
that token-reduction methods (EVS, query-conditioned pruning) exploit, so a result would be measured on a video that
does not exist. :func:`sample_indices` raises :class:`~hybridreduce.errors.VideoError` instead: ask for fewer frames
or sample by rate.

Counting the source frames: a container's header count (``stream.frames``) is trusted when present. WebM and
Matroska usually have none (0): the frames are then counted from the stream's packets, without decoding. If decoding
then yields fewer frames than the count (an MP4 edit list that hides frames, a damaged index, a packet that decodes
to no frame), the selection is recomputed from the number of frames actually decoded and the file is decoded again.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from os import PathLike
from pathlib import Path

import av
import numpy as np
from PIL import Image

from .errors import InputError, VideoError

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
#: The ``(encoder, pixel format)`` pairs :func:`write_video` tries per container; the first FFmpeg has is used.
WRITE_CODECS = {
    ".mp4": (("libx264", "yuv420p"), ("mpeg4", "yuv420p")),
    ".webm": (("libvpx", "yuv420p"),),
    ".mkv": (("ffv1", "yuv420p"), ("libx264", "yuv420p")),
    ".avi": (("mpeg4", "yuv420p"), ("mjpeg", "yuvj420p")),
}

#: A function from (frames in the source, source frame rate) to the increasing indices of the frames to keep.
Selector = Callable[[int, float], np.ndarray]


@dataclass
class Video:
    """The sampled frames of one video and where they come from.

    Attributes:
        frames: ``(F, Himg, Wimg, 3)`` uint8 RGB.
        timestamps: ``(F,)`` float64, each frame's time in seconds: the decoder's presentation time (``index / fps``
            when the container gives none, and for image folders).
        indices: ``(F,)`` int64, each frame's 0-based index in the source, increasing.
        source_frames: number of frames in the source.
        fps: the source's frame rate; for an image folder the ``fps`` given to :func:`read_video`, or 1.0.
        path: the file or folder read.
    """

    frames: np.ndarray
    timestamps: np.ndarray
    indices: np.ndarray
    source_frames: int
    fps: float
    path: str


def _positive_int(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise InputError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _positive_float(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (math.isfinite(value) and value > 0):
        raise InputError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def sample_indices(
    total: int, num_frames: int | None = None, fps: float | None = None, source_fps: float | None = None
) -> np.ndarray:
    """Indices of the frames to keep from a source of ``total`` frames, uniformly or at a fixed rate.

    Args:
        total: frames in the source, ``≥ 1``.
        num_frames: ``F``: keep the centre frame of each of ``F`` equal segments, ``floor((i + 0.5) · total / F)``.
        fps: ``r``: keep the frame nearest to each time ``0, 1/r, 2/r, …`` before the end of the source.
        source_fps: the source's frame rate; needed with ``fps``, ignored otherwise.
    Returns:
        ``(F,)`` int64 indices, strictly increasing, in ``[0, total)``: ``F = num_frames`` of them uniformly, at most
        ``ceil(total · r / source_fps)`` by rate (fewer when several times fall on the same frame).
    Raises:
        InputError: not exactly one of ``num_frames`` and ``fps``, or a count or rate that is not positive.
        VideoError: ``num_frames > total`` (frames are never repeated).
    """
    total = _positive_int(total, "total (the number of frames in the source)")
    if (num_frames is None) == (fps is None):
        raise InputError(
            f"give exactly one of num_frames and fps, got num_frames={num_frames!r} and fps={fps!r}; "
            "num_frames samples uniformly, fps at a fixed rate"
        )
    if num_frames is not None:
        n_frames = _positive_int(num_frames, "num_frames (--frames)")
        if n_frames > total:
            raise VideoError(
                f"the video has only {total} frames, {n_frames} requested; ask for fewer frames (--frames) or sample "
                "by fps"
            )
        i = np.arange(n_frames, dtype=np.int64)
        return (2 * i + 1) * total // (2 * n_frames)  # floor((i + 0.5) * total / n_frames) in exact integer arithmetic
    fps = _positive_float(fps, "fps (--fps)")
    if source_fps is None:
        raise InputError("sampling by fps needs source_fps, the frame rate of the source")
    source_fps = _positive_float(source_fps, "source_fps")
    # t_k = k / fps < total / source_fps  <=>  k < total * fps / source_fps. The hair subtracted keeps a product that
    # is a whole number in exact arithmetic but rounds just above it (30 * 0.1 / 3) from adding a time at the end.
    k = np.arange(math.ceil(total * fps / source_fps - 1e-9), dtype=np.int64)
    nearest = np.floor(k * source_fps / fps + 0.5).astype(np.int64)
    # `nearest` never decreases, so np.unique (which sorts) drops the repeats and keeps the order.
    return np.unique(np.minimum(nearest, total - 1))


def read_video(
    path: str | PathLike,
    num_frames: int | None = None,
    fps: float | None = None,
    max_frames: int | None = None,
    min_frames: int = 1,
) -> Video:
    """Read and sample a video file or a folder of frame images (see the module docstring for the sampling).

    Args:
        path: a video file (``.mp4 .webm .mkv .avi .mov``) or a folder of images (``.jpg .jpeg .png .bmp .webp``).
        num_frames: keep this many frames, uniformly spread.
        fps: keep this many frames per second of video. An image folder has no frame rate of its own: its images
            are taken to be ``1 / fps`` seconds apart (1 s when ``fps`` is None), so every image is kept.
        max_frames: after sampling, keep at most this many of the selected frames, uniformly spread.
        min_frames: fewer sampled frames than this is an error.
    Returns:
        The sampled :class:`Video`; every frame when neither ``num_frames`` nor ``fps`` is given.
    Raises:
        InputError: both ``num_frames`` and ``fps``, or a count or rate that is not positive.
        VideoError: the path is missing, unsupported, corrupt, has no video stream, images of different sizes, fewer
            frames than ``num_frames`` or fewer sampled frames than ``min_frames``.
    """
    if num_frames is not None and fps is not None:
        raise InputError("give num_frames (--frames) or fps (--fps), not both")
    if num_frames is not None:
        _positive_int(num_frames, "num_frames (--frames)")
    if fps is not None:
        _positive_float(fps, "fps (--fps)")
    if max_frames is not None:
        max_frames = _positive_int(max_frames, "max_frames")
    min_frames = _positive_int(min_frames, "min_frames")
    path = Path(path)

    def select(total: int, source_fps: float) -> np.ndarray:
        if total == 0:
            raise VideoError(f"{path}: no video frame could be decoded; re-encode or replace the file")
        if num_frames is None and fps is None:
            chosen = np.arange(total, dtype=np.int64)
        else:
            try:
                chosen = sample_indices(total, num_frames, fps, source_fps)
            except VideoError as exc:
                raise VideoError(f"{path}: {exc}") from None
        if max_frames is not None and len(chosen) > max_frames:
            chosen = chosen[sample_indices(len(chosen), max_frames)]
        if len(chosen) < min_frames:
            raise VideoError(
                f"{path}: {len(chosen)} frames sampled, at least {min_frames} needed; sample more densely "
                "(a higher --fps or --frames) or lower min_frames"
            )
        return chosen

    if not path.exists():
        raise VideoError(f"{path}: not found; check the path (a manifest's relative paths start at its folder)")
    if path.is_dir():
        return _read_folder(path, select, 1.0 if fps is None else float(fps))
    if path.suffix.lower() not in VIDEO_EXTENSIONS:
        raise VideoError(
            f"{path}: unsupported file type {path.suffix!r}; give a video ({' '.join(VIDEO_EXTENSIONS)}) "
            f"or a folder of images ({' '.join(IMAGE_EXTENSIONS)})"
        )
    return _read_file(path, select)


@contextmanager
def _open(path: Path) -> Iterator[av.container.InputContainer]:
    """``av.open`` for reading; an FFmpeg error, on opening or while decoding, becomes a one-line VideoError."""
    try:
        with av.open(str(path)) as container:
            yield container
    except (av.FFmpegError, UnicodeDecodeError) as exc:  # PyAV decodes a corrupt file's metadata as UTF-8
        why = exc.reason if isinstance(exc, UnicodeDecodeError) else exc.strerror or exc
        raise VideoError(
            f"{path}: cannot decode the video ({why}); the file is corrupt, truncated or not a "
            "video: download it again, or re-encode it (ffmpeg -i IN -c:v libx264 OUT.mp4)"
        ) from exc


def _read_file(path: Path, select: Selector) -> Video:
    with _open(path) as container:
        if not container.streams.video:
            raise VideoError(f"{path}: has no video stream (audio only?); give a file with video")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        total = stream.frames
    if not rate:
        raise VideoError(f"{path}: the video stream has no frame rate; re-encode it (ffmpeg -i IN -r 30 OUT.mp4)")
    fps = float(rate)
    if total <= 0:
        total = _count_packets(path)
    indices = select(total, fps)
    frames, timestamps, decoded = _decode(path, indices, fps)
    if len(frames) < len(indices):
        # The count promised more frames than decoding gives; that decoding ran to the end, so `decoded` is the truth.
        total = decoded
        indices = select(total, fps)
        frames, timestamps, _ = _decode(path, indices, fps)
    return Video(
        frames=np.stack(frames),
        timestamps=np.asarray(timestamps, dtype=np.float64),
        indices=indices,
        source_frames=total,
        fps=fps,
        path=str(path),
    )


def _count_packets(path: Path) -> int:
    """Frames of the first video stream counted as its non-empty packets (one per frame), without decoding."""
    with _open(path) as container:
        return sum(1 for packet in container.demux(container.streams.video[0]) if packet.size)


def _decode(path: Path, indices: np.ndarray, fps: float) -> tuple[list[np.ndarray], list[float], int]:
    """Decode ``path`` from its start up to the last of ``indices`` (increasing), keeping those frames.

    Returns:
        The kept RGB frames, their times in seconds, and how many frames were decoded (all of them when fewer
        frames than ``indices`` were kept).
    """
    frames, times = [], []
    decoded = 0
    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # decode on several threads
        for index, frame in enumerate(container.decode(stream)):
            decoded = index + 1
            if index == indices[len(frames)]:
                frames.append(frame.to_ndarray(format="rgb24"))
                times.append(index / fps if frame.time is None else frame.time)
                if len(frames) == len(indices):
                    break
    return frames, times, decoded


@contextmanager
def _open_image(path: Path) -> Iterator[Image.Image]:
    """``PIL.Image.open``; an unreadable image becomes a one-line VideoError."""
    try:
        with Image.open(path) as image:
            yield image
    except OSError as exc:
        raise VideoError(f"{path}: cannot read the image ({exc}); replace or delete it") from exc


def _natural_key(path: Path) -> tuple[list[str | int], str]:
    """Sort key putting ``frame_2`` before ``frame_10``: digit runs compare as numbers, ties go by the name."""
    parts = re.split(r"(\d+)", path.name)  # text, digits, text, digits, ..., text
    return [int(part) if i % 2 else part for i, part in enumerate(parts)], path.name


def _read_folder(path: Path, select: Selector, fps: float) -> Video:
    images = sorted(
        (p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS), key=_natural_key
    )
    if not images:
        raise VideoError(
            f"{path}: the folder has no images ({' '.join(IMAGE_EXTENSIONS)}); put the frames in it or give a video"
        )
    sizes = []
    for image_path in images:
        with _open_image(image_path) as image:
            sizes.append(image.size)
        if sizes[-1] != sizes[0]:
            (width, height), (width0, height0) = sizes[-1], sizes[0]
            raise VideoError(
                f"{image_path}: is {width}x{height} pixels but {images[0].name} is {width0}x{height0}; "
                "every frame of a folder must have the same size: resize or remove it"
            )
    indices = select(len(images), fps)
    frames = []
    for i in indices:
        with _open_image(images[i]) as image:
            frames.append(np.asarray(image.convert("RGB")))
    return Video(
        frames=np.stack(frames),
        timestamps=indices / fps,
        indices=indices,
        source_frames=len(images),
        fps=fps,
        path=str(path),
    )


def write_video(path: str | PathLike, frames: np.ndarray, fps: float = 24.0) -> None:
    """Encode ``frames`` as a video file, the codec picked from the extension (for tests and examples).

    ``.mp4``: H.264 (libx264), else MPEG-4 part 2; ``.webm``: VP8 (libvpx); ``.mkv``: FFV1, else H.264;
    ``.avi``: MPEG-4 part 2, else MJPEG. Every codec stores 4:2:0 YUV (``yuv420p``; ``yuvj420p`` for MJPEG), so
    colours come back within a few levels, not bit for bit.

    Args:
        path: the file to write (its folder is created); its extension picks the container and codec.
        frames: ``(F, Himg, Wimg, 3)`` uint8 RGB, ``F ≥ 1``, ``Himg`` and ``Wimg`` even (4:2:0 halves both for
            colour).
        fps: frame rate; stored as a fraction with a denominator of at most 1001 (so 30000/1001 stays exact).
    Raises:
        InputError: an unsupported extension, malformed frames, an odd side, or no encoder for the container.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in WRITE_CODECS:
        raise InputError(f"cannot write {path}: unsupported extension {suffix!r}; use one of {' '.join(WRITE_CODECS)}")
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise InputError(
            f"frames must be a non-empty (F, Himg, Wimg, 3) uint8 RGB array, got {frames.dtype} {frames.shape}; "
            "convert with .astype(np.uint8) after scaling to 0..255"
        )
    _, Himg, Wimg, _ = frames.shape
    if Himg % 2 or Wimg % 2:
        raise InputError(
            f"frames are {Himg}x{Wimg} (height x width) but 4:2:0 video needs even sides; crop or pad them, e.g. to "
            f"{Himg // 2 * 2}x{Wimg // 2 * 2}"
        )
    rate = Fraction(_positive_float(fps, "fps")).limit_denominator(1001)
    codec, pix_fmt = next(((c, p) for c, p in WRITE_CODECS[suffix] if c in av.codecs_available), (None, None))
    if codec is None:
        encoders = " or ".join(c for c, _ in WRITE_CODECS[suffix])
        raise InputError(f"this FFmpeg build has no {encoders} encoder for {suffix}; write another container")
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = Wimg, Himg, pix_fmt
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())  # flush the frames the encoder still holds
