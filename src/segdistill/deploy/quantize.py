"""``segdistill export --int8 --calibrate DIR``: static post-training int8 quantization of the ONNX
export, calibrated on real images.

The graph is QDQ (QuantizeLinear/DequantizeLinear pairs around each convolution, ONNX Runtime's
recommended format for CPUs), which OpenVINO also reads and runs in int8, so one file serves both
runtimes. Weights are int8 per output channel, activations uint8 with ranges from the calibration
images. Whether int8 pays is the machine's business: ``segdistill benchmark --backend all`` times
it against fp32 and ``--backend auto`` only picks it where it is faster and agrees with fp32.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ..checkpoint import ONNX_PRECISION_KEY, load_model
from ..data.discovery import collect_images
from ..data.imageio import read_image, resize_for_model
from ..errors import SegdistillError
from ..inference.backends import OnnxRuntimeBackend, pad_multiple
from ..models.blocks import pad_to_multiple
from .export import FORMATS, exported_bytes, onnx_bytes, write_exported

log = logging.getLogger("segdistill")

CALIBRATION_IMAGES = 32
"""Images the activation ranges are taken from (the first of the folder in name order; more cost
time and rarely move min/max ranges)."""
MIN_AGREEMENT = 0.9
"""Below this share of pixels whose mask agrees with fp32 on the calibration images, the int8 graph
is broken rather than slightly less accurate: an error, and no file."""


@dataclass
class QuantizeResult:
    path: Path
    agreement: float
    """Share of pixels whose int8 mask matches fp32's on the calibration images."""
    images: int


class _DropAdvice(logging.Filter):
    """ONNX Runtime's quantizer advises pre-processing on the root logger: not the user's concern
    (the check below says how the int8 model fares)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Please consider")


def _calibration_inputs(calibrate: Path, info, limit: int) -> list[torch.Tensor]:
    pre = info.preprocess
    images = calibrate / "images" if (calibrate / "images").is_dir() else calibrate
    files = [images] if images.is_file() else collect_images([images], False)[:limit]
    if not files:
        raise SegdistillError(f"{calibrate}: no images to calibrate the int8 model on")
    m = pad_multiple(info)
    out = []
    for f in files:
        x = torch.from_numpy(resize_for_model(read_image(f, pre.channels), pre.max_side)).permute(2, 0, 1)[None]
        x = pre.normalise(x)
        out.append(pad_to_multiple(x, m)[0])  # the graph takes multiples of 2**depth, as the backends feed it
    return out


def export_int8(model_path: str | Path, out: str | Path | None, calibrate: str | Path,
                images: int = CALIBRATION_IMAGES, fmt: str = "onnx") -> QuantizeResult:
    """Quantize ``model_path`` (a ``.safetensors`` model file) to an int8 QDQ ONNX file at ``out``
    (default: beside it, ``.int8.onnx``; ``fmt="openvino"``: that graph as an OpenVINO IR,
    ``.int8.xml`` + ``.bin``, which OpenVINO runs in int8), calibrated on up to ``images`` images of
    ``calibrate``."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    model_path = Path(model_path)
    if model_path.suffix.lower() == ".onnx":
        raise SegdistillError(f"{model_path}: give the .safetensors model file to quantize (the export is made from it)")
    out = Path(out) if out is not None else model_path.with_suffix(".int8" + FORMATS[fmt])
    model, info = load_model(model_path, "cpu")
    inputs = _calibration_inputs(Path(calibrate), info, images)
    blob = onnx_bytes(model, info)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(inputs)

        def get_next(self):  # noqa: ANN201 - onnxruntime's interface
            x = next(self.it, None)
            return None if x is None else {"image": x.numpy()}

    with tempfile.TemporaryDirectory(prefix="segdistill-int8-") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(blob)
        advice = _DropAdvice()
        logging.getLogger().addFilter(advice)  # its advice to pre-process goes to the root logger
        try:
            quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        except Exception as e:  # onnxruntime's quantizer raises many kinds; the first line says what failed
            raise SegdistillError(f"{model_path}: int8 quantization failed ({str(e).strip().splitlines()[0][:200]})") from None
        finally:
            logging.getLogger().removeFilter(advice)
        proto = onnx.load(str(dst))
    del proto.metadata_props[:]
    for key, value in {"segdistill": info.to_json(), ONNX_PRECISION_KEY: "int8"}.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    data = proto.SerializeToString()

    agreement = _mask_agreement(model, OnnxRuntimeBackend(data, pad_multiple(info), precision="int8"), inputs,
                                info.threshold)
    if agreement < MIN_AGREEMENT:
        raise SegdistillError(f"{model_path}: the int8 model's masks agree with fp32 on only {agreement:.1%} of the "
                              f"pixels of {len(inputs)} calibration image(s); nothing written")
    write_exported(data, {"segdistill": info.to_json(), ONNX_PRECISION_KEY: "int8"}, out)
    log.info("int8 export %s -> %s (%.2f MB), calibrated on %d image(s) of %s; masks agree with fp32 on %.2f%% of pixels",
             model_path, out, exported_bytes(out) / 1e6, len(inputs), calibrate, 100 * agreement)
    return QuantizeResult(out, agreement, len(inputs))


def _mask_agreement(model: torch.nn.Module, runtime: OnnxRuntimeBackend, inputs: list[torch.Tensor],
                    threshold: float) -> float:
    """The check: the share of pixels whose int8 mask matches fp32's on the calibration images."""
    agree = total = 0
    with torch.inference_mode():
        for x in inputs:
            ref = torch.sigmoid(model(x)) > threshold
            got = torch.sigmoid(runtime(x)) > threshold
            agree += int((ref == got).sum())
            total += ref.numel()
    return agree / total
