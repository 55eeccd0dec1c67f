"""``segdistill export``: a model file as ONNX or an OpenVINO IR (fp32, or int8 calibrated on
images), checked against PyTorch before it is declared written."""

from __future__ import annotations

from pathlib import Path

from ..config import ConfigError
from ..deploy.export import export_onnx
from ..fileio import check_writable
from ..runtime import set_threads


def export(model: str, out: str | None = None, check: str | None = None, int8: bool = False,
           calibrate: str | None = None, calibration_images: int = 32, threads: int | str | None = None,
           fmt: str = "onnx") -> None:
    """Export ``model`` (beside it by default) and print what was written and how it was checked."""
    check_writable(Path(out).parent if out else Path(model).parent, "export")
    set_threads(threads or "auto")
    if int8:
        from ..deploy.quantize import export_int8  # onnxruntime's quantizer, only for int8

        if not calibrate:
            raise ConfigError("--int8 needs --calibrate DIR: images to take the activation ranges from")
        q = export_int8(model, out, calibrate, calibration_images, fmt)
        print(f"exported: {q.path} (int8; masks agree with fp32 on {q.agreement:.2%} of the pixels of "
              f"{q.images} calibration image(s))")
        return
    result = export_onnx(model, out, check, fmt=fmt)
    print(f"exported: {result.path} (max probability difference from PyTorch {result.max_abs_diff:.1e}, "
          f"checked on {result.checked_on})")
