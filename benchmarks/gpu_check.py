"""The CUDA path end to end on tiny data: train, distill, predict and export with ``--device cuda``,
asserting that each stage really ran on the GPU (its peak CUDA memory, and the predictor's device),
and that the GPU-trained files load and export on the CPU as any other.

    python benchmarks/gpu_check.py [--dir DIR] [--keep]

A machine without CUDA gets one line, "gpu_check: no CUDA device ...", and exit code 2: nothing here
can stand in for a GPU. Takes well under a minute on one GPU (synthetic 64x64 data, tiny models).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import common  # noqa: F401  (puts src/ on the path, sets up logging)
import torch

from segdistill.cli import main as cli
from segdistill.data.synth import make_synthetic_dataset

TINY = ["--epochs", "2", "--batch-size", "4", "--input-size", "64", "--set", "train.samples_per_epoch=16",
        "--device", "cuda"]


def on_gpu(stage: str, run: Callable[[], object]) -> float:
    """Run ``stage`` and assert it allocated CUDA memory; returns its seconds."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    result = run()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated()
    assert result in (0, None), f"{stage}: exit code {result}"
    assert peak > 0, f"{stage}: no CUDA memory was allocated: it did not run on the GPU"
    print(f"gpu_check: {stage}: ok on {torch.cuda.get_device_name()} ({seconds:.1f} s, peak {peak / 2**20:.1f} MiB)")
    return seconds


def check(root: Path) -> None:
    data = make_synthetic_dataset(root / "data", count=16, size=64, seed=0)
    runs = root / "runs"
    on_gpu("train", lambda: cli(["-q", "train", "--data", str(data), "--output-dir", str(runs), "--name", "teacher",
                                 "--set", "model.args.base=8", "--set", "model.args.depth=3", *TINY]))
    teacher = runs / "teacher" / "model.safetensors"
    on_gpu("distill", lambda: cli(["-q", "distill", "--teacher", str(teacher), "--images", str(data / "images"),
                                   "--data", str(data), "--output-dir", str(runs), "--name", "student",
                                   "--set", "distill.student.args.base=4", *TINY]))
    student = runs / "student" / "model.safetensors"

    import segdistill as sd

    def predict() -> None:
        predictor = sd.Predictor(student, device="cuda")
        assert predictor.device.type == "cuda", f"predictor on {predictor.device}"
        prob = predictor.predict_image(next((data / "images").glob("*.png")))
        assert prob.shape == (64, 64) and 0 <= prob.min() <= prob.max() <= 1

    on_gpu("predict (library)", predict)
    on_gpu("predict (CLI)", lambda: cli(["-q", "predict", str(student), str(data / "images"), "--device", "cuda",
                                         "--out", str(root / "preds"), "--name", "p"]))
    assert len(list((root / "preds" / "p").glob("*.png"))) == 16
    # Export runs on the CPU by design (the graph is for CPU runtimes): the GPU-trained file must export
    # and match its eager self there.
    assert cli(["-q", "export", str(student)]) == 0 and (runs / "student" / "model.onnx").is_file()
    print("gpu_check: export of the GPU-trained student: ok (checked against eager PyTorch)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", type=Path, help="work folder (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device (torch {torch.__version__}, torch.cuda.is_available() is False): "
              "nothing was run", file=sys.stderr)
        return 2
    root = args.dir or Path(tempfile.mkdtemp(prefix="gpu_check-"))
    try:
        check(root)
    finally:
        if not args.keep and args.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    print("gpu_check: all stages ran on CUDA")
    return 0


if __name__ == "__main__":
    sys.exit(main())
