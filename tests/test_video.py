"""Video files: predict writes mask videos (and frames), distill takes frames as transfer images."""

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from segdistill.cli import main
from segdistill.config import ConfigError, load_config
from segdistill.data.video import MASK_CODEC, VideoReader, split_videos, video_writer
from segdistill.errors import DataError
from segdistill.inference.predictor import Predictor
from segdistill.jobs.predict import predict_to_folder

NTSC = Fraction(30000, 1001)


def make_video(path: Path, frames: int = 12, width: int = 64, height: int = 48, rate: Fraction = NTSC) -> Path:
    """A bright disc moving across a dark, slightly textured background, as H.264 in ``path``."""
    yy, xx = np.mgrid[:height, :width]
    background = (20 + 10 * np.sin(xx / 5.0) * np.cos(yy / 7.0)).astype(np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv444p" if width % 2 or height % 2 else "yuv420p"
        for i in range(frames):
            cx, cy = 10 + 4 * i, height // 2 + (i % 3)
            disc = (xx - cx) ** 2 + (yy - cy) ** 2 < 10**2
            rgb = np.repeat(np.where(disc, 220, background)[..., None], 3, axis=-1).astype(np.uint8)
            rgb[..., 0] = np.where(disc, 240, rgb[..., 0])  # a little colour
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def decode(path: Path, fmt: str = "gray") -> tuple[list[np.ndarray], Fraction]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [f.to_ndarray(format=fmt) for f in container.decode(stream)], Fraction(stream.average_rate)


def test_predict_video_round_trip_matches_frames_as_images(tiny_model, tmp_path, capsys):
    video = make_video(tmp_path / "clip.mp4")
    # The frames as PNG images, decoded as predict decodes them; a threshold that splits frame 0's
    # probabilities in half, so that the masks compared have both values.
    pngs = tmp_path / "pngs"
    pngs.mkdir()
    rgb_frames, _ = decode(video, "rgb24")
    for i, rgb in enumerate(rgb_frames):
        Image.fromarray(rgb).save(pngs / f"frame_{i:06d}.png")
    prob0 = Predictor(tiny_model, device="cpu").predict_image(pngs / "frame_000000.png")
    threshold = str(float(np.median(prob0)))

    out = tmp_path / "pred"
    common = ["--out", str(out), "--threshold", threshold, "--device", "cpu"]
    assert main(["-q", "predict", str(tiny_model), str(video), *common, "--frames", "--probs", "--overlay"]) == 0
    assert "12 frames" in capsys.readouterr().out
    assert main(["-q", "predict", str(tiny_model), str(pngs), *common]) == 0

    masks, rate = decode(out / "clip" / "clip_mask.mkv")
    assert len(masks) == 12 and masks[0].shape == (48, 64) and rate == NTSC
    assert set(np.unique(np.stack(masks))) == {0, 255}
    for i, mask in enumerate(masks):
        as_image = np.asarray(Image.open(out / "pngs" / f"frame_{i:06d}.png"))
        as_frame = np.asarray(Image.open(out / "clip" / "clip" / f"frame_{i:06d}.png"))
        assert np.array_equal(mask, as_image) and np.array_equal(mask, as_frame)  # lossless: exact
    probs, _ = decode(out / "clip" / "clip_probs.mkv")
    overlays, overlay_rate = decode(out / "clip" / "clip_overlay.mp4", "rgb24")
    assert len(probs) == len(overlays) == 12 and overlays[0].shape == (48, 64, 3) and overlay_rate == NTSC
    assert len(list((out / "clip" / "overlays" / "clip").glob("frame_*.png"))) == 12
    assert not [p for p in (out / "clip").rglob(".*")]  # no temporary files left


def test_folder_with_images_and_videos(tiny_model, synth_dir, tmp_path, capsys):
    folder = tmp_path / "mixed"
    folder.mkdir()
    make_video(folder / "a.mov", frames=5, width=63, height=47)  # odd sides: the overlay goes 4:4:4
    make_video(folder / "b.mkv", frames=4)
    image = sorted((synth_dir / "images").glob("*.png"))[0]
    (folder / image.name).write_bytes(image.read_bytes())
    args = ["-q", "predict", str(tiny_model), str(folder), "--out", str(tmp_path / "p"), "--overlay", "--device", "cpu"]
    assert main(args) == 0
    assert "1 mask and 2 mask videos (9 frames)" in capsys.readouterr().out
    out = tmp_path / "p" / "mixed"
    assert len(decode(out / "a_mask.mkv")[0]) == 5 and decode(out / "a_overlay.mp4", "rgb24")[0][0].shape == (47, 63, 3)
    assert len(decode(out / "b_mask.mkv")[0]) == 4 and (out / image.name).is_file()
    assert main([*args, "--overwrite"]) == 0  # the folder holds only what predict writes: it may be cleared


def test_corrupt_video_is_a_one_line_error(tiny_model, tmp_path, capsys):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all " * 50)
    assert main(["-q", "predict", str(tiny_model), str(bad), "--out", str(tmp_path / "p"), "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1  # the summary names the first (here: only) file skipped
    assert err[-1].startswith("error: 1 file(s) could not be read; first: ") and str(bad) in err[-1]
    assert "not a video file" in err[-1]
    assert not any((tmp_path / "p").rglob("*.*"))
    for content, message in [(b"", "empty file"), (None, "file not found")]:
        path = tmp_path / f"x{len(message)}.mkv"
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(DataError, match=message):
            VideoReader(path)


def test_error_halfway_leaves_no_output(tiny_model, tmp_path, monkeypatch):
    """A frame that cannot be decoded after some were written: no mask video, no frame folder."""
    video = make_video(tmp_path / "clip.mp4")
    real = VideoReader.read

    def breaks_at_frame_7(self, stride=1):
        for index, rgb in real(self, stride):
            if index == 7:
                raise DataError(f"{self.path}: corrupt video, frame 7 cannot be decoded (test)")
            yield index, rgb

    monkeypatch.setattr(VideoReader, "read", breaks_at_frame_7)
    out = tmp_path / "out"
    summary = predict_to_folder(Predictor(tiny_model, device="cpu"), video, out, batch_size=2, save_probs=True,
                                save_overlay=True, save_frames=True)
    assert summary.videos == 0 and len(summary.failed) == 1 and "frame 7" in summary.failed[0]
    assert not [p for p in out.rglob("*") if p.is_file() or p.name.startswith(".")]  # at most empty probs/, overlays/


def test_video_writer_is_atomic_and_lossless(tmp_path):
    target = tmp_path / "m.mkv"
    masks = [np.random.default_rng(i).integers(0, 2, (9, 11), dtype=np.uint8) * 255 for i in range(3)]
    with pytest.raises(RuntimeError), video_writer(target, MASK_CODEC, 11, 9, Fraction(25)) as write:
        write(masks[0])
        raise RuntimeError("stop")
    assert list(tmp_path.iterdir()) == []
    with video_writer(target, MASK_CODEC, 11, 9, Fraction(25)) as write:
        for m in masks:
            write(m)
    decoded, rate = decode(target)
    assert rate == 25 and all(np.array_equal(a, b) for a, b in zip(decoded, masks))


def test_split_videos(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"")
    (folder / "v.MP4").write_bytes(b"")
    only = tmp_path / "only"
    only.mkdir()
    (only / "w.avi").write_bytes(b"")
    (only / "old").mkdir()  # a lone subfolder is not descended into while videos are there
    rest, videos = split_videos([str(folder), str(only), str(only / "w.avi"), str(tmp_path / "x.png")])
    assert rest == [str(folder), str(tmp_path / "x.png")]  # a folder of videos only is not an image source
    assert videos == [folder / "v.MP4", only / "w.avi"]  # each once


def test_distill_from_a_video(tiny_model, tmp_path, monkeypatch):
    video = make_video(tmp_path / "clip.mkv", frames=20, width=64, height=64)
    tiny = ["--epochs", "1", "--batch-size", "4", "--input-size", "32", "--set", "train.samples_per_epoch=8",
            "--set", "distill.student.args.base=2", "--set", "distill.student.args.depth=2",
            "--set", "distill.video_stride=3", "--set", f"distill.cache_dir={tmp_path / 'cache'}"]

    def distill(name):
        assert main(["-q", "distill", "--teacher", str(tiny_model), "--images", str(video), "--output-dir",
                     str(tmp_path), "--name", name, *tiny]) == 0
        import json

        return json.loads((tmp_path / name / "distill_report.json").read_text())

    report = distill("v")
    frames = sorted((tmp_path / "cache" / "frames").glob("clip-*-stride3/frame_*.png"))
    assert [p.name for p in frames] == [f"frame_{i:06d}.png" for i in range(0, 20, 3)]  # 7 frames, stable names
    assert report["teacher_forward_passes"] == 7 and "agreement" in report["validation"]
    # A second run decodes nothing and asks the teacher nothing.
    monkeypatch.setattr(VideoReader, "__init__", lambda *a: pytest.fail("decoded the video again"))
    assert distill("v2")["teacher_forward_passes"] == 0
    assert "clip.mkv" in (tmp_path / "v2" / "config.yaml").read_text()  # the config names the video itself


def test_video_stride_must_be_positive():
    with pytest.raises(ConfigError, match="video_stride"):
        load_config(None, ["distill.video_stride=0"])


def test_a_stream_without_a_decoder_is_a_one_line_error(tmp_path, monkeypatch):
    # What a fuzzed .mkv header gave: a video stream whose codec FFmpeg has no decoder for.
    class Stream:
        codec_context = None
        codec_tag = "XXXX"

    class Container:
        class streams:  # noqa: N801 (PyAV's attribute name)
            video = [Stream()]

        def close(self):
            self.closed = True

    path = tmp_path / "odd.mkv"
    path.write_bytes(b"\x1a\x45\xdf\xa3" + bytes(60))
    monkeypatch.setattr(av, "open", lambda *a, **k: Container())
    with pytest.raises(DataError, match=r"odd\.mkv: no decoder for its video stream"):
        VideoReader(path)
