"""Are the labels offset from the images? A check that decides which flips a recipe may use.

Flips and 90-degree turns are symmetries of most images, but not of labels drawn with a consistent
sub-pixel offset: a vertical flip turns "labels 0.5 px above the structure" into "0.5 px below", so
a model trained with it sees both and learns boundaries blurred by the difference. This script
estimates the offset two ways on a data set described by a config (segdistill.data.alignment):

* image vs labels (no model): the correlation between the image intensity (``--foreground dark``
  or ``bright``) and the mask shifted by -2..2 pixels per axis; a parabola through the peak gives
  the sub-pixel shift that lines the labels up with the image.
* model vs labels (``--model``): the IoU of the model's masks against the labels shifted by -1..1
  pixels per axis, the same parabola: how far the model's boundaries sit from the drawn ones.

    python benchmarks/label_offset.py -c configs/membrane.yaml --foreground dark [--model M ...]

Shifts are (dy, dx) in pixels, positive = the labels would have to move down / right.
"""

from __future__ import annotations

import argparse

import common  # noqa: F401  (puts src/ on the path)
import numpy as np
import torch

from segdistill.checkpoint import load_model
from segdistill.config import load_config
from segdistill.data.alignment import intensity_label_offset, shifted, subpixel_peak
from segdistill.data.discovery import discover
from segdistill.data.imageio import read_image, read_mask


@torch.no_grad()
def model_profile(path: str, images: list[np.ndarray], masks: list[np.ndarray]) -> tuple[dict[str, dict[int, float]], float]:
    """IoU of the model's masks against the labels shifted along each axis (1 px either way)."""
    model, info = load_model(path)
    model.eval()
    pre = info.preprocess
    inter: dict[tuple[int, int], float] = {}
    union: dict[tuple[int, int], float] = {}
    for img, m in zip(images, masks):
        x = pre.normalise(torch.from_numpy(img).permute(2, 0, 1).float())[None]
        pred = torch.sigmoid(model(x))[0, 0] >= info.threshold
        t = torch.from_numpy(m)
        for d in ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)):
            ts = shifted(t, *d, 2)
            p = pred[2:-2, 2:-2]
            inter[d] = inter.get(d, 0.0) + float((p & ts).sum())
            union[d] = union.get(d, 0.0) + float((p | ts).sum())
    iou = {d: inter[d] / max(union[d], 1.0) for d in inter}
    prof = {"dy": {s: iou[(s, 0)] for s in (-1, 0, 1)}, "dx": {s: iou[(0, s)] for s in (-1, 0, 1)}}
    return prof, iou[(0, 0)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-c", "--config", required=True)
    ap.add_argument("--foreground", choices=["dark", "bright"], default="dark", help="how the foreground looks in the images")
    ap.add_argument("--split", choices=["train", "val", "all"], default="all")
    ap.add_argument("--model", nargs="*", default=[], help="trained models to compare with the labels (on the validation split)")
    args = ap.parse_args()

    cfg = load_config(args.config)
    split = discover(cfg.data, cfg.seed)
    pairs = {"train": split.train, "val": split.val, "all": split.train + split.val}[args.split]

    def load(ps: list) -> tuple[list[np.ndarray], list[np.ndarray]]:
        imgs = [read_image(p.image, "gray") for p in ps]
        masks = [read_mask(p.mask) for p in ps]
        return imgs, [~m if cfg.data.invert else m for m in masks]

    images, masks = load(pairs)
    dy, dx, prof = intensity_label_offset(images, masks, args.foreground)
    rows = [
        {
            "what": f"image vs labels ({args.split}, {len(pairs)} images)",
            "offset dy (px)": round(dy, 2),
            "offset dx (px)": round(dx, 2),
            "note": "correlation peak",
        }
    ]
    extra: dict = {"image_profile": prof}
    if args.model:
        vimgs, vmasks = load(split.val)
        for path in args.model:
            mp, iou = model_profile(path, vimgs, vmasks)
            extra[path] = mp
            rows.append(
                {
                    "what": f"{path} vs labels (val)",
                    "offset dy (px)": round(subpixel_peak(mp["dy"]), 2),
                    "offset dx (px)": round(subpixel_peak(mp["dx"]), 2),
                    "note": f"IoU {iou:.4f}; shifted 1 px: dy {mp['dy'][-1]:.4f}/{mp['dy'][1]:.4f}, dx {mp['dx'][-1]:.4f}/{mp['dx'][1]:.4f}",
                }
            )
    common.finish("label_offset", rows, extra, title="Label offset: shift (dy, dx) that best lines the labels up")


if __name__ == "__main__":
    main()
