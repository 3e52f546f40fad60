"""Video reading: sampling formulas, the four containers, image folders, and every error a user can hit."""

from __future__ import annotations

import math

import av
import numpy as np
import pytest
from PIL import Image

import hybridreduce.video as video_module
from hybridreduce.errors import InputError, VideoError
from hybridreduce.video import read_video, sample_indices, write_video

T, H, W, FPS = 24, 32, 48, 8  # frames, height, width, frame rate of the synthetic videos (3 s)
CONTAINERS = ["mp4", "webm", "mkv", "avi"]
# Frame i is a flat grey of level 10 * i, so a decoded frame tells its index even after lossy coding (which moves a
# flat grey by at most 4 levels with these codecs).
GREY = np.stack([np.full((H, W, 3), 10 * i, dtype=np.uint8) for i in range(T)])
TOLERANCE = 5


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, str]:
    """The grey ramp written once in every container: {extension: path}."""
    folder = tmp_path_factory.mktemp("videos")
    paths = {ext: str(folder / f"ramp.{ext}") for ext in CONTAINERS}
    for path in paths.values():
        write_video(path, GREY, fps=FPS)
    return paths


def assert_frames_match(video, indices) -> None:
    """``video`` holds exactly the frames ``indices`` of the grey ramp."""
    np.testing.assert_array_equal(video.indices, indices)
    assert video.indices.dtype == np.int64
    assert video.frames.shape == (len(indices), H, W, 3) and video.frames.dtype == np.uint8
    means = video.frames.reshape(len(indices), -1).mean(axis=1)
    np.testing.assert_allclose(means, 10 * np.asarray(indices), atol=TOLERANCE)
    assert video.timestamps.dtype == np.float64 and np.all(np.diff(video.timestamps) > 0)
    np.testing.assert_allclose(video.timestamps, np.asarray(indices) / FPS, atol=1e-3)
    assert video.source_frames == T and video.fps == pytest.approx(FPS)


# --- sample_indices -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "total, num_frames, expected",
    [
        (10, 4, [1, 3, 6, 8]),  # floor(1.25), floor(3.75), floor(6.25), floor(8.75)
        (24, 4, [3, 9, 15, 21]),
        (5, 5, [0, 1, 2, 3, 4]),
        (7, 1, [3]),
        (1, 1, [0]),
    ],
)
def test_uniform_indices(total, num_frames, expected):
    indices = sample_indices(total, num_frames=num_frames)
    np.testing.assert_array_equal(indices, expected)
    assert indices.dtype == np.int64


@pytest.mark.parametrize(
    "total, fps, source_fps, expected",
    [
        (24, 2, 8, [0, 4, 8, 12, 16, 20]),  # t = 0, 0.5, ..., 2.5 s
        (24, 3, 8, [0, 3, 5, 8, 11, 13, 16, 19, 21]),  # k·8/3 = 2.67 → 3, 5.33 → 5, ...
        (10, 10, 25, [0, 3, 5, 8]),  # 2.5 → 3 and 7.5 → 8: halves round up
        (5, 10, 4, [0, 1, 2, 3, 4]),  # faster than the source: repeats dropped, the last time clipped to frame 4
        (30, 0.1, 3, [0]),  # 30 · 0.1 / 3 is 1.0000000000000002 in floats: still one time, t = 0
        (10, 1, 1, list(range(10))),
    ],
)
def test_fps_indices(total, fps, source_fps, expected):
    np.testing.assert_array_equal(sample_indices(total, fps=fps, source_fps=source_fps), expected)


def test_more_frames_than_the_source_is_an_error_not_a_repeat():
    with pytest.raises(VideoError, match="has only 24 frames, 50 requested; ask for fewer frames"):
        sample_indices(24, num_frames=50)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"total": 10}, "exactly one of num_frames and fps"),
        ({"total": 10, "num_frames": 2, "fps": 1.0, "source_fps": 8}, "exactly one of num_frames and fps"),
        ({"total": 0, "num_frames": 1}, "total .* positive integer"),
        ({"total": 10, "num_frames": 0}, "num_frames .* positive integer"),
        ({"total": 10, "num_frames": 2.0}, "num_frames .* positive integer"),
        ({"total": 10, "num_frames": True}, "num_frames .* positive integer"),
        ({"total": 10, "fps": 0, "source_fps": 8}, "fps .* positive finite"),
        ({"total": 10, "fps": math.nan, "source_fps": 8}, "fps .* positive finite"),
        ({"total": 10, "fps": math.inf, "source_fps": 8}, "fps .* positive finite"),
        ({"total": 10, "fps": "2", "source_fps": 8}, "fps .* positive finite"),
        ({"total": 10, "fps": 2}, "needs source_fps"),
        ({"total": 10, "fps": 2, "source_fps": -8}, "source_fps must be a positive finite"),
    ],
)
def test_sample_indices_argument_errors(kwargs, match):
    with pytest.raises(InputError, match=match):
        sample_indices(**kwargs)


# --- video files ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", CONTAINERS)
def test_uniform_sampling(videos, ext):
    video = read_video(videos[ext], num_frames=4)
    assert_frames_match(video, [3, 9, 15, 21])
    assert video.path == videos[ext]


@pytest.mark.parametrize("ext", CONTAINERS)
def test_fps_sampling(videos, ext):
    assert_frames_match(read_video(videos[ext], fps=2), [0, 4, 8, 12, 16, 20])


def test_every_frame_by_default(videos):
    assert_frames_match(read_video(videos["mkv"]), list(range(T)))


def test_max_frames_subsamples_the_fps_selection(videos):
    # fps=4 selects frames 0, 2, ..., 22 (12 of them); 5 of those 12, uniformly: positions 1, 3, 6, 8, 10.
    assert_frames_match(read_video(videos["mp4"], fps=4, max_frames=5), [2, 6, 12, 16, 20])
    assert_frames_match(read_video(videos["mp4"], fps=2, max_frames=10), [0, 4, 8, 12, 16, 20])  # under the cap


def test_an_overstated_frame_count_is_corrected_by_decoding(videos, monkeypatch):
    # WebM has no frame count in its header, so the reader counts packets; pretend it counted 30 for 24 frames.
    monkeypatch.setattr(video_module, "_count_packets", lambda path: 30)
    assert_frames_match(read_video(videos["webm"], num_frames=4), [3, 9, 15, 21])


def test_min_frames(videos):
    with pytest.raises(VideoError, match=r"ramp\.mp4: 1 frames sampled, at least 2 needed; sample more densely"):
        read_video(videos["mp4"], fps=0.2, min_frames=2)  # 3 s at one frame per 5 s: only t = 0


# --- image folders --------------------------------------------------------------------------------------------------


def make_folder(path, sizes):
    """Write random PNGs frame_1.png … frame_N.png of the given (width, height) sizes; return their pixels."""
    path.mkdir()
    rng = np.random.default_rng(0)
    pixels = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for w, h in sizes]
    for i, image in enumerate(pixels, start=1):
        Image.fromarray(image).save(path / f"frame_{i}.png")
    return pixels


def test_image_folder_in_natural_order(tmp_path):
    pixels = make_folder(tmp_path / "frames", [(14, 10)] * 12)
    (tmp_path / "frames" / "notes.txt").write_text("not a frame")
    video = read_video(tmp_path / "frames")
    np.testing.assert_array_equal(video.frames, np.stack(pixels))  # frame_10 after frame_9, not after frame_1
    np.testing.assert_array_equal(video.indices, np.arange(12))
    np.testing.assert_array_equal(video.timestamps, np.arange(12.0))
    assert (video.source_frames, video.fps, video.path) == (12, 1.0, str(tmp_path / "frames"))

    three = read_video(tmp_path / "frames", num_frames=3)
    np.testing.assert_array_equal(three.indices, [2, 6, 10])
    np.testing.assert_array_equal(three.frames, np.stack([pixels[2], pixels[6], pixels[10]]))

    at_two = read_video(tmp_path / "frames", fps=2, max_frames=4)  # images 0.5 s apart, all selected, then capped
    np.testing.assert_array_equal(at_two.indices, [1, 4, 7, 10])
    np.testing.assert_array_equal(at_two.timestamps, [0.5, 2.0, 3.5, 5.0])
    assert at_two.fps == 2.0


def test_image_folder_of_mixed_sizes(tmp_path):
    make_folder(tmp_path / "frames", [(14, 10)] * 3 + [(16, 10)] + [(14, 10)] * 8)
    with pytest.raises(VideoError, match=r"frame_4\.png: is 16x10 pixels but frame_1\.png is 14x10; .* resize"):
        read_video(tmp_path / "frames")


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(VideoError, match=r"empty: the folder has no images \(\.jpg .*\); put the frames in it"):
        read_video(tmp_path / "empty")


# --- errors ---------------------------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(VideoError, match=r"nope\.mp4: not found; check the path"):
        read_video(tmp_path / "nope.mp4")


def test_random_bytes(tmp_path):
    path = tmp_path / "noise.mp4"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(VideoError, match=r"noise\.mp4: cannot decode the video \(Invalid data.*\); .*re-encode"):
        read_video(path)


def test_truncated_file(videos, tmp_path):
    data = open(videos["mp4"], "rb").read()
    path = tmp_path / "half.mp4"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoError, match=r"half\.mp4: cannot decode the video .*truncated"):
        read_video(path, num_frames=4)


def test_unsupported_extension(tmp_path):
    path = tmp_path / "clip.gif"
    path.write_bytes(b"GIF89a")
    with pytest.raises(VideoError, match=r"clip\.gif: unsupported file type '\.gif'; give a video \(\.mp4 \.webm"):
        read_video(path)


def test_too_few_frames(videos):
    with pytest.raises(VideoError, match=r"ramp\.avi: the video has only 24 frames, 50 requested; ask for fewer"):
        read_video(videos["avi"], num_frames=50)


def test_no_video_stream(tmp_path):
    path = tmp_path / "speech.mp4"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    with pytest.raises(VideoError, match=r"speech\.mp4: has no video stream"):
        read_video(path)


def test_read_video_argument_errors(videos):
    with pytest.raises(InputError, match="num_frames .* or fps .*, not both"):
        read_video(videos["mp4"], num_frames=4, fps=2)
    with pytest.raises(InputError, match="max_frames must be a positive integer"):
        read_video(videos["mp4"], max_frames=0)


def test_write_video_errors(tmp_path):
    with pytest.raises(InputError, match=r"31x48 \(height x width\) but 4:2:0 video needs even sides; .* to 30x48"):
        write_video(tmp_path / "odd.mp4", GREY[:, :31])
    with pytest.raises(InputError, match=r"unsupported extension '\.gif'; use one of \.mp4"):
        write_video(tmp_path / "clip.gif", GREY)
    with pytest.raises(InputError, match=r"\(F, Himg, Wimg, 3\) uint8 RGB array, got float64"):
        write_video(tmp_path / "float.mp4", GREY / 255.0)
