"""``segdistill import-keras``: U-Nets written by Keras itself, in the original tool's layout, give
the same probabilities in segdistill; files that do not fit fail naming the layer; the imported
model predicts and teaches a student like any segdistill model.

Keras (3, on its torch backend) only writes the test files; segdistill reads them with h5py alone.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

os.environ["KERAS_BACKEND"] = "torch"  # before keras is imported: no TensorFlow needed
try:
    import keras
    from keras import layers as L
except Exception as e:  # keras absent, or its backend fails to start
    pytest.skip(f"keras (the test extras' keras>=3) cannot be imported: {type(e).__name__}: {e}", allow_module_level=True)
if keras.backend.backend() != "torch":
    pytest.skip(f"keras runs on the {keras.backend.backend()} backend; these tests need torch", allow_module_level=True)

from segdistill.checkpoint import load_model, read_model_info  # noqa: E402
from segdistill.cli import main  # noqa: E402
from segdistill.deploy.keras_h5 import import_keras  # noqa: E402
from segdistill.errors import ModelFileError  # noqa: E402
from segdistill.inference.predictor import Predictor  # noqa: E402

logging.getLogger("absl").setLevel(logging.ERROR)  # keras' "HDF5 is a legacy format" on every model.save
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:keras.*")  # keras' own, on numpy 2

SHAPE = (32, 48)  # (H, W): not square, so a swapped axis shows
TOLERANCE = 1e-4


def original_unet(init_channels: int, channels: int = 1, shape: tuple[int, int] = SHAPE, *, input_norm: bool = True,
                  up_kernel: int = 2, head: str = "sigmoid", extra_head: bool = False) -> keras.Model:
    """The original tool's unet.py, written as a loop: batch norm on the input and after each
    encoder convolution, dropout 0.5 at the two deepest levels, UpSampling2D + 2x2 convolution,
    skip first in the concatenation, a convolution of half the base width, a sigmoid 1x1 head.
    The keyword arguments make layouts that do not fit, for the error tests."""
    inputs = L.Input((*shape, channels))
    x = L.BatchNormalization()(inputs) if input_norm else inputs
    skips = []
    for level in range(5):
        if level:
            x = L.MaxPooling2D(pool_size=(2, 2))(x)
        for _ in range(2):
            x = L.Conv2D(init_channels * 2**level, 3, activation="relu", padding="same", kernel_initializer="he_normal")(x)
            x = L.BatchNormalization()(x)
        if level >= 3:
            x = L.Dropout(0.5)(x)
        skips.append(x)
    skips.pop()
    for level in reversed(range(4)):
        width = init_channels * 2**level
        up = L.Conv2D(width, up_kernel, activation="relu", padding="same", kernel_initializer="he_normal")(
            L.UpSampling2D(size=(2, 2))(x))
        x = L.concatenate([skips.pop(), up], axis=3)
        x = L.Conv2D(width, 3, activation="relu", padding="same", kernel_initializer="he_normal")(x)
        x = L.Conv2D(width, 3, activation="relu", padding="same", kernel_initializer="he_normal")(x)
    x = L.Conv2D(init_channels // 2, 3, activation="relu", padding="same", kernel_initializer="he_normal")(x)
    out = L.Conv2D(1, 1, activation=head)(x)
    if extra_head:
        out = L.Conv2D(1, 1, activation="sigmoid")(out)
    return keras.Model(inputs, out)


def randomise(model: keras.Model, seed: int) -> None:
    """Random weights everywhere, batch-norm statistics included (fresh ones are 0 and 1, which
    would hide a mix-up of mean and variance)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        w = layer.get_weights()
        if isinstance(layer, L.BatchNormalization):
            c = w[0].shape
            layer.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.2, c), rng.normal(0.3, 0.3, c),
                               rng.uniform(0.2, 2.0, c)])
        elif isinstance(layer, L.Conv2D):
            kh, kw, cin, _ = w[0].shape
            gain = 6.0 if layer is model.layers[-1] else 1.0  # logits of a few units: probabilities across (0, 1)
            layer.set_weights([gain * rng.normal(0, np.sqrt(2 / (kh * kw * cin)), w[0].shape),
                               rng.normal(0, 0.1, w[1].shape)])


def keras_probs(model: keras.Model, x: np.ndarray) -> np.ndarray:
    """(B, H, W, C) in [0, 1] -> (B, H, W) probabilities, as Keras computes them."""
    return keras.ops.convert_to_numpy(model(x, training=False))[..., 0]


def write_h5(model: keras.Model, path: Path) -> Path:
    model.save(path)  # the legacy .h5 format of the original tool's model.save / ModelCheckpoint
    return path


@pytest.fixture(autouse=True)
def _fresh_keras():
    keras.backend.clear_session()  # layer names restart at conv2d, batch_normalization, ...
    yield


@pytest.mark.parametrize("init_channels", [4, 16])
@pytest.mark.parametrize("channels", [1, 3])
def test_probabilities_match_keras(init_channels, channels, tmp_path):
    km = original_unet(init_channels, channels)
    randomise(km, seed=init_channels + channels)
    out = import_keras(write_h5(km, tmp_path / "unet.h5"), tmp_path / "unet.safetensors").path

    model, info = load_model(out)
    assert info.arch == "unet_keras" and info.args == {"in_channels": channels, "base": init_channels, "depth": 4,
                                                       "dropout": 0.5}
    assert (info.preprocess.channels, info.preprocess.mean, info.preprocess.std) == (
        "gray" if channels == 1 else "rgb", [0.0] * channels, [1.0] * channels)
    assert info.preprocess.max_side == max(SHAPE)  # the Keras model's fixed input size
    assert info.summary["keras_input_shape"] == [*SHAPE, channels]

    x = np.random.default_rng(0).random((3, *SHAPE, channels), dtype=np.float32)  # images / 255
    want = keras_probs(km, x)
    with torch.no_grad():
        got = torch.sigmoid(model(info.preprocess.normalise(torch.from_numpy(x).permute(0, 3, 1, 2))))[:, 0].numpy()
    diff = float(np.abs(got - want).max())
    print(f"init_channels {init_channels}, {channels} channel(s): max probability difference {diff:.2e}")
    assert diff < TOLERANCE
    assert np.ptp(want) > 0.3  # the probabilities vary: not two constant outputs agreeing

    # an image file through segdistill's own reading and preprocessing: Keras' rescale=1/255
    pixels = np.random.default_rng(1).integers(0, 256, (*SHAPE, channels), dtype=np.uint8)
    png = tmp_path / "image.png"
    Image.fromarray(pixels[..., 0] if channels == 1 else pixels).save(png)
    prob = Predictor(out, device="cpu").predict_image(png)
    diff = float(np.abs(prob - keras_probs(km, pixels[None].astype(np.float32) / 255)[0]).max())
    print(f"init_channels {init_channels}, {channels} channel(s): image file, max probability difference {diff:.2e}")
    assert diff < TOLERANCE


def test_weights_file_of_keras_2_layout_and_cli(tmp_path, capsys):
    """A weights-only .h5 (Keras 2's save_weights layout: layer_names at the root) imports too, and
    the command line writes the model file beside it by default."""
    import h5py

    km = original_unet(4)
    randomise(km, seed=3)
    full = write_h5(km, tmp_path / "full.h5")
    weights_only = tmp_path / "weights.h5"
    with h5py.File(full, "r") as src, h5py.File(weights_only, "w") as dst:
        for key, value in src["model_weights"].attrs.items():
            dst.attrs[key] = value
        for name in src["model_weights"]:
            src.copy(src["model_weights"][name], dst, name)
    assert main(["import-keras", str(weights_only)]) == 0
    assert "imported: " in capsys.readouterr().out
    info = read_model_info(tmp_path / "weights.safetensors")
    assert info.preprocess.max_side is None  # no architecture in the file: images at their own size
    model, _ = load_model(tmp_path / "weights.safetensors")
    x = np.random.default_rng(2).random((1, *SHAPE, 1), dtype=np.float32)
    with torch.no_grad():
        got = torch.sigmoid(model(torch.from_numpy(x).permute(0, 3, 1, 2)))[0, 0].numpy()
    assert np.abs(got - keras_probs(km, x)[0]).max() < TOLERANCE
    # --max-side 0 keeps the images' own size even for a fixed-size Keras model
    assert main(["-q", "import-keras", str(full), str(tmp_path / "own.safetensors"), "--max-side", "0"]) == 0
    assert read_model_info(tmp_path / "own.safetensors").preprocess.max_side is None


def _first(model: keras.Model, kind: type, after: type | None = None) -> str:
    seen = after is None
    for layer in model.layers:
        if after is not None and isinstance(layer, after):
            seen = True
        elif seen and isinstance(layer, kind):
            return layer.name
    raise AssertionError("no such layer")


@pytest.mark.parametrize("variant", ["no_input_norm", "up_kernel_3", "linear_head", "extra_layer"])
def test_a_file_that_does_not_fit_names_its_first_odd_layer(variant, tmp_path, capsys):
    km = original_unet(4, input_norm=variant != "no_input_norm", up_kernel=3 if variant == "up_kernel_3" else 2,
                       head="linear" if variant == "linear_head" else "sigmoid", extra_head=variant == "extra_layer")
    h5 = write_h5(km, tmp_path / "odd.h5")
    convs = [layer.name for layer in km.layers if isinstance(layer, L.Conv2D)]
    name, why = {
        "no_input_norm": (convs[0], "where the layout has a BatchNormalization with weights 1 1 1 1"),
        "up_kernel_3": (_first(km, L.Conv2D, after=L.UpSampling2D), "where the layout has a Conv2D with weights 2x2x64x32 32"),
        "linear_head": (convs[-1], "activation linear, the layout's is sigmoid"),
        "extra_layer": (convs[-1], "is beyond the Keras U-Net layout"),
    }[variant]
    with pytest.raises(ModelFileError, match=f"layer '{name}' .*{why}"):
        import_keras(h5, tmp_path / "odd.safetensors")
    assert not (tmp_path / "odd.safetensors").exists()
    assert main(["-q", "import-keras", str(h5), str(tmp_path / "odd.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and f"'{name}'" in err


def test_files_that_are_not_keras_models(tmp_path):
    import h5py

    text = tmp_path / "notes.h5"
    text.write_text("not a model\n")
    with pytest.raises(ModelFileError, match="not an HDF5 file"):
        import_keras(text)
    empty = tmp_path / "data.h5"
    with h5py.File(empty, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(ModelFileError, match="without Keras model weights"):
        import_keras(empty)
    km = original_unet(4)
    km.save_weights(tmp_path / "k3.weights.h5")  # Keras 3's own weights format: no layer order
    with pytest.raises(ModelFileError, match="Keras 3 weights file"):
        import_keras(tmp_path / "k3.weights.h5")
    km.save(tmp_path / "k3.keras")
    archive = tmp_path / "k3.keras"
    with pytest.raises(ModelFileError, match=r"\.keras archive"):
        import_keras(archive)
    with pytest.raises(ModelFileError, match="not found"):
        import_keras(tmp_path / "missing.h5")


def test_imported_teacher_predicts_and_distils_end_to_end(synth_dir, tmp_path):
    km = original_unet(4, shape=(64, 64))
    randomise(km, seed=5)
    teacher = tmp_path / "teacher.safetensors"
    assert main(["-q", "import-keras", str(write_h5(km, tmp_path / "teacher.h5")), str(teacher)]) == 0
    assert main(["-q", "predict", str(teacher), str(synth_dir / "images"), "--out", str(tmp_path / "pred")]) == 0
    assert len(list((tmp_path / "pred" / "images").glob("*.png"))) == 12
    assert main(["-q", "evaluate", str(teacher), "--data", str(synth_dir), "--all", "--out", str(tmp_path / "e.csv")]) == 0
    assert main(["-q", "distill", "--teacher", str(teacher), "--images", str(synth_dir / "images"), "--output-dir",
                 str(tmp_path), "--name", "student", "--epochs", "2", "--batch-size", "4", "--input-size", "32",
                 "--set", "train.samples_per_epoch=8", "--set", "distill.student.args.base=2",
                 "--set", "distill.student.args.depth=2", "--set", f"distill.cache_dir={tmp_path / 'cache'}"]) == 0
    report = json.loads((tmp_path / "student" / "distill_report.json").read_text())
    assert report["epochs"] == 2 and report["teacher_forward_passes"] == 12 and report["compression"] > 1
    student = read_model_info(tmp_path / "student" / "model.safetensors")
    assert student.arch == "unet" and student.preprocess == read_model_info(teacher).preprocess


@pytest.mark.slow
def test_imported_model_exports_to_onnx(synth_dir, tmp_path):
    """About 10 s (the ONNX exporter's tracing): the Keras layout (its bottom/right padding, skip
    first) exports and matches eager PyTorch on real images."""
    pytest.importorskip("onnxruntime")
    km = original_unet(4, shape=(64, 64))
    randomise(km, seed=6)
    model = import_keras(write_h5(km, tmp_path / "unet.h5")).path
    assert main(["-q", "export", str(model), "--check", str(synth_dir / "images")]) == 0
    assert read_model_info(model.with_suffix(".onnx")) == read_model_info(model)
