"""Peak memory of streaming prediction does not grow with the number of images.

Writes N small images, predicts them all with ``predict_to_folder`` and samples this process's
resident memory every 100 images.

    python benchmarks/predict_memory.py [--count 2000]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import common
import numpy as np
from PIL import Image

from segdistill.checkpoint import ModelInfo, save_model
from segdistill.data.preprocess import Preprocess
from segdistill.inference.predictor import Predictor
from segdistill.jobs.predict import predict_to_folder
from segdistill.models import create_model, resolved_args


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--size", type=int, default=96)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    rng = np.random.default_rng(0)
    (tmp / "in").mkdir()
    for i in range(args.count):
        Image.fromarray(rng.integers(0, 255, (args.size, args.size), dtype=np.uint8)).save(tmp / "in" / f"{i:05d}.png")
    args_m = resolved_args("unet", base=8)
    save_model(tmp / "m.safetensors", create_model("unet", **args_m), ModelInfo("unet", args_m, Preprocess()))
    predictor = Predictor(tmp / "m.safetensors", device="cpu")
    samples: list[tuple[int, float]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            n = len(list((tmp / "out").glob("*.png"))) if (tmp / "out").is_dir() else 0
            samples.append((n, common.rss_mb()))
            time.sleep(0.5)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    t0 = time.perf_counter()
    summary = predict_to_folder(predictor, tmp / "in", tmp / "out", batch_size=8)
    seconds = time.perf_counter() - t0
    done.set()
    t.join()
    rows = []
    for mark in [args.count // 10, args.count // 4, args.count // 2, (3 * args.count) // 4, args.count]:
        upto = [rss for n, rss in samples if n <= mark]
        rows.append({"images done": mark, "peak RSS MB so far": max(upto) if upto else float("nan")})
    growth = rows[-1]["peak RSS MB so far"] - rows[1]["peak RSS MB so far"]
    common.finish("predict_memory", rows, {"count": args.count, "written": summary.written, "seconds": seconds,
                                            "images_per_s": summary.written / seconds, "growth_mb_after_25pct": growth},
                  title=f"Streaming prediction of {args.count} {args.size}x{args.size} images")
    print(f"peak RSS growth from 25% to 100% of the images: {growth:.1f} MB; {summary.written / seconds:.1f} images/s")


if __name__ == "__main__":
    main()
