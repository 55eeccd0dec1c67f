import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segdistill.cli import main
from segdistill.inference.predictor import Predictor

from .helpers import HANG_GUARD_S


def test_predict_rgb_jpeg_keeps_its_size(tmp_path, synth_dir):
    # An RGB model, then a 500x333 RGB JPEG.
    from segdistill.data.synth import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "rgb", count=6, size=48, rgb=True, vary_size=True)
    assert main(["-q", "train", "--data", str(data), "--output-dir", str(tmp_path), "--name", "m", "--epochs", "1",
                 "--input-size", "32", "--set", "model.args.base=4", "--set", "model.args.depth=2"]) == 0
    model = tmp_path / "m" / "model.safetensors"
    img = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (333, 500, 3), dtype=np.uint8)).save(img)
    assert main(["-q", "predict", str(model), str(img), "--out", str(tmp_path / "p"), "--probs", "--overlay"]) == 0
    mask = Image.open(tmp_path / "p" / "photo" / "photo.png")
    assert mask.size == (500, 333) and mask.mode == "L"
    assert set(np.unique(np.asarray(mask))) <= {0, 255}
    assert Image.open(tmp_path / "p" / "photo" / "probs" / "photo.png").size == (500, 333)
    assert Image.open(tmp_path / "p" / "photo" / "overlays" / "photo.png").mode == "RGB"


def test_predict_folder_recursive_and_glob(tiny_model, synth_dir, tmp_path):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    imgs = sorted((synth_dir / "images").glob("*.png"))
    for p in imgs[:3]:
        (src / p.name).write_bytes(p.read_bytes())
    (src / "sub" / "deep.png").write_bytes(imgs[3].read_bytes())
    assert main(["-q", "predict", str(tiny_model), str(src), "--out", str(tmp_path / "o")]) == 0
    assert len(list((tmp_path / "o" / "in").glob("*.png"))) == 3
    assert main(["-q", "predict", str(tiny_model), str(src), "-r", "--out", str(tmp_path / "o"), "--name", "rec"]) == 0
    assert (tmp_path / "o" / "rec" / "sub" / "deep.png").is_file()
    assert main(["-q", "predict", str(tiny_model), str(src / "00*.png"), "--out", str(tmp_path / "o"), "--name", "g"]) == 0
    assert len(list((tmp_path / "o" / "g").glob("*.png"))) == 3


def test_predictor_matches_between_batched_and_single(tiny_model, synth_dir):
    p = Predictor(tiny_model, device="cpu")
    files = sorted((synth_dir / "images").glob("*.png"))[:5]
    streamed = [prob for _, prob in p.stream(files, batch_size=4)]
    single = [p.predict_image(f) for f in files]
    for a, b in zip(streamed, single):
        assert a.shape == (64, 64) and np.allclose(a, b, atol=1e-5)


def _mosaic(path, side: int, cell: int = 64, seed: int = 0):
    """A ``side`` x ``side`` gray PNG of synthetic ``cell``-pixel scenes (what the tiny model saw)."""
    from segdistill.data.synth import synth_pair

    rng = np.random.default_rng(seed)
    n = side // cell
    rows = [np.concatenate([synth_pair(rng, cell, cell)[0] for _ in range(n)], axis=1) for _ in range(n)]
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)
    return path


def test_tiled_prediction_close_to_whole_image(tiny_model, synth_dir, tmp_path):
    f = sorted((synth_dir / "images").glob("*.png"))[0]
    whole = Predictor(tiny_model, device="cpu").predict_image(f)
    tiled = Predictor(tiny_model, device="cpu", tile=32, tile_overlap=0.5).predict_image(f)
    assert tiled.shape == whole.shape
    assert ((tiled > 0.5) == (whole > 0.5)).mean() > 0.9
    # A 1024x1024 image in 256-pixel windows, 3 per forward pass: the masks agree on >= 99.9% of pixels.
    big = _mosaic(tmp_path / "big.png", 1024)
    whole = Predictor(tiny_model, device="cpu").predict_image(big)
    tiled = Predictor(tiny_model, device="cpu", tile=256, tile_batch=3).predict_image(big)
    assert tiled.shape == whole.shape == (1024, 1024)
    assert ((tiled > 0.5) == (whole > 0.5)).mean() >= 0.999


def test_tiles_run_in_batches_with_the_same_logits(tiny_model):
    """predict_tiled hands the backend ``batch_size`` windows at a time (from any image of the batch)
    and blends to what one window at a time gives."""
    from segdistill.checkpoint import load_model
    from segdistill.inference.tiling import predict_tiled

    model, _ = load_model(tiny_model)
    x = torch.randn(2, 1, 150, 170, generator=torch.Generator().manual_seed(0))
    sizes: list[int] = []

    def fn(batch: torch.Tensor) -> torch.Tensor:
        sizes.append(batch.shape[0])
        with torch.no_grad():
            return model(batch)

    one = torch.cat([predict_tiled(fn, xi[None], 64, 0.25, batch_size=1) for xi in x])  # 3 x 4 windows each
    assert sizes == [1] * 24
    sizes.clear()
    batched = predict_tiled(fn, x, 64, 0.25, batch_size=5)
    assert sizes == [5, 5, 5, 5, 4]  # 24 windows, across both images
    assert batched.shape == (2, 1, 150, 170)
    torch.testing.assert_close(batched, one, rtol=0, atol=1e-5)



def test_stream_predicts_tiled_images_one_at_a_time(tiny_model, synth_dir, monkeypatch):
    """With tiles, an image's windows are its batch: images are not also gathered into batches, so
    no more than one image's full-size arrays exist at once."""
    files = sorted((synth_dir / "images").glob("*.png"))[:5]
    for tile, expected in ((None, [4, 1]), (32, [1] * 5)):
        p = Predictor(tiny_model, device="cpu", tile=tile)
        calls: list[int] = []
        real = p.predict_arrays
        monkeypatch.setattr(p, "predict_arrays", lambda images, real=real, calls=calls: calls.append(len(images)) or real(images))
        assert len(list(p.stream(files, batch_size=4))) == 5
        assert calls == expected

_PEAK_RSS = """
import sys
from segdistill.inference.predictor import Predictor

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key)) / 1024  # MB

predictor = Predictor(sys.argv[1], device="cpu", tile=1024, tile_overlap=0.0, tile_batch=4)  # 16 windows, 4 a pass
before = status("VmRSS:")
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak (VmHWM) starts again from here
except OSError:
    pass  # then VmHWM also counts the imports: the growth reads larger, never smaller
prob = predictor.predict_image(sys.argv[2])
mask = prob > predictor.threshold
print(status("VmHWM:") - before, prob.shape, prob.dtype)
"""


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads peak memory from /proc (Linux)")
def test_4096_image_predicts_through_tiles_in_bounded_memory(tmp_path):
    """A 4096x4096 image through the tiled path adds less than 2 GB at its peak (measured: 0.36-0.48
    GB: the image, its normalised copy, the accumulator and weight sum, the probabilities, all float32,
    64 MB each; and one batch of windows). A fresh process, so that no earlier test's memory counts."""
    import subprocess
    import sys

    from segdistill.checkpoint import ModelInfo, save_model
    from segdistill.data.preprocess import Preprocess
    from segdistill.models import create_model, resolved_args

    args = resolved_args("unet", base=1, depth=1)  # the smallest model: this is about the pipeline's arrays
    model = save_model(tmp_path / "m.safetensors", create_model("unet", **args), ModelInfo("unet", args, Preprocess()))
    rng = np.random.default_rng(0)
    image = tmp_path / "big.png"
    Image.fromarray(np.kron(rng.integers(0, 255, (256, 256), dtype=np.uint8), np.ones((16, 16), np.uint8))).save(image)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", _PEAK_RSS, str(model), str(image)], env=env, capture_output=True,
                         text=True, timeout=HANG_GUARD_S)
    assert out.returncode == 0, out.stderr[-2000:]
    growth_mb, shape = out.stdout.split(maxsplit=1)
    assert shape.startswith("(4096, 4096)")
    assert float(growth_mb) < 2048, f"peak memory grew by {float(growth_mb):.0f} MB"


def test_predict_streams_with_bounded_queue(tiny_model, synth_dir, monkeypatch):
    """However many files, at most `prefetch` decoded images are alive at once."""
    import segdistill.inference.predictor as pred_mod

    alive, peak = 0, 0
    real = pred_mod.read_image

    class Tracked(np.ndarray):
        def __del__(self):
            nonlocal alive
            alive -= 1

    def reading(path, channels):
        nonlocal alive, peak
        alive += 1
        peak = max(peak, alive)
        return real(path, channels).view(Tracked)

    monkeypatch.setattr(pred_mod, "read_image", reading)
    p = Predictor(tiny_model, device="cpu")
    files = sorted((synth_dir / "images").glob("*.png")) * 10  # 120 images
    n = 0
    for _item, prob in p.stream(files, batch_size=2, prefetch=4):
        n += 1
        del _item, prob
    assert n == 120
    assert peak <= 4 + 2 + 2  # queue + current batch + one in flight


@pytest.mark.parametrize("threshold", [0.0001, 0.9999])
def test_threshold_changes_masks(tiny_model, synth_dir, tmp_path, threshold):
    img = sorted((synth_dir / "images").glob("*.png"))[0]
    assert main(["-q", "predict", str(tiny_model), str(img), "--out", str(tmp_path), "--threshold", str(threshold)]) == 0
    frac = (np.asarray(Image.open(tmp_path / img.stem / img.name)) > 0).mean()
    assert frac > 0.9 if threshold < 0.5 else frac < 0.1


def test_evaluate_cli(tiny_model, synth_dir, tmp_path, capsys):
    out = tmp_path / "e.csv"
    assert main(["evaluate", str(tiny_model), "--data", str(synth_dir), "--out", str(out), "--all"]) == 0
    text = capsys.readouterr().err  # the library reports through logging (stderr)
    assert "iou" in text and "per-image mean" in text
    lines = out.read_text().strip().splitlines()
    assert len(lines) == 13 and lines[0].startswith("image,iou,dice,precision,recall,accuracy")
    import json

    summary = json.loads(out.with_suffix(".json").read_text())
    assert 0 <= summary["iou"] <= 1 and summary["images"] == 12


def test_dotted_names_do_not_overwrite_each_other(tiny_model, synth_dir, tmp_path):
    src = tmp_path / "stack"
    src.mkdir()
    img = sorted((synth_dir / "images").glob("*.png"))[0]
    for name in ("s.001.png", "s.002.png"):
        (src / name).write_bytes(img.read_bytes())
    assert main(["-q", "predict", str(tiny_model), str(src), "--out", str(tmp_path / "o")]) == 0
    assert sorted(p.name for p in (tmp_path / "o" / "stack").glob("*.png")) == ["s.001.png", "s.002.png"]


def test_prediction_folder_name_is_safe(tiny_model, synth_dir, tmp_path, capsys, monkeypatch):
    img = sorted((synth_dir / "images").glob("*.png"))[0]
    assert main(["-q", "predict", str(tiny_model), str(img), "--out", str(tmp_path), "--name", "../x"]) == 2
    assert "must be a plain folder name" in capsys.readouterr().err
    (tmp_path / "imgs" / "sub").mkdir(parents=True)
    (tmp_path / "imgs" / img.name).write_bytes(img.read_bytes())
    monkeypatch.chdir(tmp_path / "imgs" / "sub")
    assert main(["-q", "predict", str(tiny_model), "..", "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "imgs" / img.name).is_file()  # the folder's real name, not '..'
    assert main(["-q", "predict", str(tiny_model), str(synth_dir / "images" / "000*.png"), "--out", str(tmp_path / "g")]) == 0
    assert len(list((tmp_path / "g" / "glob").glob("*.png"))) == 10


def test_resume_refuses_other_settings(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path), "--epochs", "9"]) == 2
    assert "--resume takes no other settings (got --epochs)" in capsys.readouterr().err
