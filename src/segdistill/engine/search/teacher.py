"""The search's teacher: its targets cached once (the only teacher passes of a search) and its
validation scores read from that cache."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ...checkpoint import load_model
from ...config import Config
from ...errors import ConfigError
from ...losses import prob_to_logit
from ..evaluate import evaluate
from ..loaders import build_distill_data
from .book import Book


class _SoftAsImage(Dataset):
    """A validation set whose "image" is the teacher's cached probability map."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = self.dataset[i]
        return {**item, "image": item["soft"]}


class _CachedTeacher(nn.Module):
    """The teacher's cached predictions as a model: probabilities in, logits out."""

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        return prob_to_logit(p)


def score_teacher(cfg: Config, book: Book, device: torch.device) -> None:
    """Fill the target cache (the only teacher passes of the search) and score the teacher on the
    validation images from its cached predictions."""
    path = Path(cfg.distill.teacher)  # type: ignore[arg-type]
    teacher, tinfo = load_model(path, device)
    data = build_distill_data(cfg, teacher, tinfo, path, device)
    del teacher
    if data.val_loader is None:
        raise ConfigError("--search compares students on validation images, and there are none")
    metrics = {"iou": 1.0, "dice": 1.0}  # without labels students are scored by agreement with the teacher
    if data.val_key == "mask":
        loader = DataLoader(_SoftAsImage(data.val_loader.dataset), batch_size=1)
        m = evaluate(_CachedTeacher(), loader, torch.device("cpu"), tinfo.threshold).metrics
        metrics = {"iou": round(m["iou"], 6), "dice": round(m["dice"], 6)}
    book.data["validation"] = "labels" if data.val_key == "mask" else "agreement with the teacher"
    book.data["teacher"] = {"file": str(path), "arch": tinfo.arch, "val_iou": metrics["iou"], "val_dice": metrics["dice"],
                            "forward_passes": data.teacher_passes}
    book.save()
