"""The best and worst images of a report, predicted again by each model (the report itself never
runs a model: the job that writes it calls :func:`predict_cases` and hands the panels over)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import Config
from ..data.imageio import read_image, read_mask
from ..metrics import confusion, scores
from ..reports.html import Case, error_overlay, reference_panel, rgb
from .predictor import Predictor


@dataclass
class ModelRef:
    """A model whose predictions the best and worst images show."""

    label: str
    path: Path
    threshold: float | None = None
    tta: int | None = None
    backend: str = "auto"


def run_models(run_dir: Path, cfg: Config, distill: dict[str, Any] | None) -> list[ModelRef]:
    """The run's model; for a distillation the teacher first, and the labels-only twin last."""
    if not distill:
        return [ModelRef("prediction", run_dir / "model.safetensors")]
    refs = [ModelRef("teacher", Path(cfg.distill.teacher)), ModelRef("student, distilled", run_dir / "model.safetensors")]  # type: ignore[arg-type]
    if (run_dir / "baseline" / "model.safetensors").is_file():
        refs.append(ModelRef("student, labels only", run_dir / "baseline" / "model.safetensors"))
    return refs


def predict_cases(chosen: list[tuple[str, dict[str, Any]]], models: list[ModelRef], device: str, invert: bool,
                  max_side: int | None = None) -> list[Case] | str:
    """The image, its reference and each model's prediction, for each chosen per-image row; a
    sentence instead when a model or the images are no longer where the run found them."""
    gone = [m for m in models if not m.path.is_file()]
    if gone:
        return f"{gone[0].path}: model file not found, so the images are not predicted again."
    predictors = []
    for m in models:
        p = Predictor(m.path, device=device, threshold=m.threshold, tta=m.tta, backend=m.backend)
        if max_side is not None:
            p.info.preprocess.max_side = max_side
        predictors.append((m.label, p))
    channels = predictors[0][1].info.preprocess.channels
    cases, missing = [], []
    for end, row in chosen:
        image_file, mask_file = Path(row.get("image_file") or ""), row.get("mask_file") or ""
        if not row.get("image_file") or not image_file.is_file() or (mask_file and not Path(mask_file).is_file()):
            missing.append(str(row.get("image_file") or row["image"]))
            continue
        image = read_image(image_file, channels)  # (H, W, C) in [0, 1]
        masks = [(label, p.predict_arrays([image])[0] > p.threshold) for label, p in predictors]
        if mask_file:
            ref_label, ref = "ground truth", read_mask(mask_file) ^ invert
        else:  # validated by agreement: the teacher (the first model) is the reference
            ref_label, ref = f"{masks[0][0]} (reference)", masks[0][1]
            masks = masks[1:]
        case = Case(f"{end}: {row['image']} (IoU {float(row['iou']):.3f})",
                    [("image", rgb(image)), (ref_label, reference_panel(image, ref))])
        for label, pred in masks:
            iou = float(scores(confusion(torch.from_numpy(pred)[None], torch.from_numpy(ref)[None]))["iou"][0])
            case.panels.append((f"{label}: IoU {iou:.3f}", error_overlay(image, pred, ref)))
        cases.append(case)
    if missing and not cases:
        return f"The images are no longer where the run found them (first: {missing[0]}), so none is shown."
    return cases
