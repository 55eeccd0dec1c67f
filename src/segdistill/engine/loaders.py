"""The data each loop builds: the supervised run's datasets and loaders (``RunData``), and the
distillation's transfer images with the teacher's targets (``DistillData``)."""

from __future__ import annotations

import copy
import functools
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from ..checkpoint import ModelInfo, file_sha256
from ..config import Config
from ..data.check import crop_warning, image_sizes
from ..data.dataset import Item, SegDataset
from ..data.discovery import Split, collect_images, discover
from ..data.imageio import read_mask
from ..data.preprocess import Preprocess, compute_stats, infer_channels
from ..data.video import extract_frames, split_videos
from ..distributed import is_main_process, world_size
from ..errors import ConfigError, SegdistillError
from ..inference.choose import working_size
from ..inference.sources import safe_relative_name
from ..models.encoders import encoder_info
from ..runtime import resolve_workers
from .semi import MixedDataset, pseudo_paths, unlabelled_images
from .targets import build_target_cache, default_cache_dir

log = logging.getLogger("segdistill")


@dataclass
class RunData:
    split: Split
    pre: Preprocess
    train_set: SegDataset | MixedDataset
    val_set: SegDataset | None
    train_loader: DataLoader
    val_loader: DataLoader | None
    unlabelled: list[Path] = field(default_factory=list)
    """Images for self-training (semi.images); their pseudo-labels live in RUN/pseudo/."""


def build_preprocess(cfg: Config, train_images: list[Path]) -> Preprocess:
    channels = cfg.data.channels if cfg.data.channels != "auto" else infer_channels(train_images)
    if cfg.model.name == "encoder_unet":  # the normalisation the encoder's (ImageNet) weights expect
        enc = encoder_info(str(cfg.model.args.get("encoder", "efficientnet_lite0")))
        mean, std = (list(enc.mean), list(enc.std)) if channels == "rgb" else ([sum(enc.mean) / 3], [sum(enc.std) / 3])
    else:
        mean, std = compute_stats(train_images, channels, cfg.data.max_side)
    return Preprocess(channels=channels, mean=mean, std=std, max_side=cfg.data.max_side, invert=cfg.data.invert)


def make_loaders(
    cfg: Config, train_set: SegDataset, val_set: SegDataset | None, device: torch.device
) -> tuple[DataLoader, DataLoader | None]:
    workers = resolve_workers(cfg.train.num_workers)
    # The dataset shuffles itself per epoch (seeded), so the sampler only shards across ranks.
    sampler = DistributedSampler(train_set, shuffle=False) if world_size() > 1 else None
    train_loader = DataLoader(
        train_set,
        batch_size=cfg.train.batch_size,
        shuffle=False,
        sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        # Each rank's share decides: a share no bigger than one batch must not be dropped whole.
        drop_last=(len(sampler) if sampler is not None else len(train_set)) > cfg.train.batch_size,
    )
    val_loader = None
    if val_set is not None and len(val_set):
        # Whole images of varied sizes: one per batch.
        val_loader = DataLoader(val_set, batch_size=1, shuffle=False, num_workers=workers)
    return train_loader, val_loader


def build_run_data(cfg: Config, device: torch.device, run_dir: Path | None = None, state: dict | None = None) -> RunData:
    """Datasets and loaders; with ``semi.images`` set, the training set mixes in pseudo-labelled
    crops (their labels under ``run_dir/pseudo/``) once they exist. A resumed run (``state``) keeps
    the normalisation statistics its model was trained with."""
    split = discover(cfg.data, cfg.seed)
    if state is not None:
        pre = Preprocess.from_dict(state["preprocess"])
    else:
        pre = build_preprocess(cfg, [p.image for p in split.train])
    length = cfg.train.samples_per_epoch or len(split.train)
    crops = crop_warning(cfg.train.input_size, image_sizes([p.image for p in split.train]))
    if crops and is_main_process() and state is None:  # once, when the run starts
        log.warning(crops)

    def crops(items: list[Item], seed: int) -> SegDataset:
        return SegDataset(items, pre, train=True, input_size=cfg.train.input_size, augment=cfg.augment,
                          length=length, seed=seed, cache=cfg.data.cache)

    train_set: SegDataset | MixedDataset = crops([Item(p.image, p.mask) for p in split.train], cfg.seed)
    labelled = {p.image.resolve() for p in split.train + split.val}
    unlabelled = unlabelled_images(cfg, labelled) if cfg.semi.images else []
    if unlabelled:
        if length < 2:
            raise ConfigError("semi.images needs train.samples_per_epoch of at least 2 (labelled and pseudo-labelled crops)")
        folder = (run_dir if run_dir is not None else cfg.run_dir) / "pseudo"
        pseudo = crops([Item(p, soft=t) for p, t in zip(unlabelled, pseudo_paths(folder, len(unlabelled)))],
                       cfg.seed + 1)  # other augmentations than the labelled crops at the same index
        train_set = MixedDataset(train_set, pseudo, length, cfg.semi.fraction, cfg.seed)
    val_set = (
        SegDataset([Item(p.image, p.mask) for p in split.val], pre, train=False, cache=cfg.data.cache, resize_masks=False)
        if split.val
        else None
    )
    train_loader, val_loader = make_loaders(cfg, train_set, val_set, device)
    return RunData(split, pre, train_set, val_set, train_loader, val_loader, unlabelled)


def foreground_fraction(masks: list[Path], invert: bool, limit: int = 200) -> float:
    step = max(1, len(masks) // limit)
    fractions = []
    for m in masks[::step]:
        arr = read_mask(m)
        fractions.append(float((~arr if invert else arr).mean()))
    return float(np.mean(fractions)) if fractions else 0.5


def resolve_pos_weight(cfg: Config, split: Split) -> float | None:
    pw = cfg.train.pos_weight
    if pw != "auto":
        return pw
    f = foreground_fraction([p.mask for p in split.train if p.mask is not None], cfg.data.invert)
    # Capped: huge weights on rare classes make BCE unstable.
    return float(min(max((1 - f) / max(f, 1e-6), 1.0), 10.0))


@dataclass
class DistillData:
    """Transfer images with their teacher targets, and what validation compares the student with."""

    transfer: list[Path]
    train_set: SegDataset
    train_loader: DataLoader
    val_loader: DataLoader | None
    val_key: str
    """"mask" (labels given: ``data.*``) or "soft" (agreement with the teacher on held-out images)."""
    targets: dict[Path, Path]
    teacher_passes: int
    cache_folder: Path


def build_distill_data(cfg: Config, teacher: nn.Module, tinfo: ModelInfo, teacher_path: Path,
                       device: torch.device) -> DistillData:
    """Transfer and validation images (validation images never transfer), the teacher's targets for
    them (cached, or for validation only with online targets) and the loaders (under torchrun, each
    rank draws its share of the crops, as in training)."""
    d = cfg.distill
    transfer, val_items, label_of = _split_transfer(cfg)
    need = [p for p, _ in val_items] + (transfer if d.targets == "cached" else [])
    targets, stats = build_target_cache(teacher, tinfo, teacher_path, need, Path(d.cache_dir) if d.cache_dir else None,
                                        cfg.device)
    pre = copy.deepcopy(tinfo.preprocess)  # the student sees exactly what the teacher saw
    _warn_cache(cfg, transfer, pre)
    items = [Item(p, label_of.get(p.resolve()) if d.alpha > 0 else None, targets[p] if d.targets == "cached" else None)
             for p in transfer]
    train_set = SegDataset(items, pre, train=True, input_size=cfg.train.input_size, augment=cfg.augment,
                           length=cfg.train.samples_per_epoch or len(items), seed=cfg.seed, cache=cfg.data.cache)
    val_set = SegDataset([Item(p, m, targets[p]) for p, m in val_items], pre, train=False, cache=True, resize_masks=False)
    train_loader, val_loader = make_loaders(cfg, train_set, val_set, device)
    labelled = cfg.data.root is not None or cfg.data.train_images is not None
    val_key = "mask" if labelled and val_loader is not None else "soft"
    return DistillData(transfer, train_set, train_loader, val_loader, val_key, targets, stats.forward_passes, stats.folder)


def _split_transfer(cfg: Config) -> tuple[list[Path], list[tuple[Path, Path | None]], dict[Path, Path]]:
    """(transfer images, validation (image, mask or None) pairs, label of each labelled image)."""
    d = cfg.distill
    transfer = transfer_images(cfg)
    label_of: dict[Path, Path] = {}
    if cfg.data.root is not None or cfg.data.train_images is not None:
        split = discover(cfg.data, cfg.seed)
        label_of = {p.image.resolve(): p.mask for p in split.train if p.mask is not None}
        held_out = {p.image.resolve() for p in split.val}
        before = len(transfer)
        transfer = [p for p in transfer if p.resolve() not in held_out]
        if before != len(transfer):
            log.info("left %d validation images out of the transfer set", before - len(transfer))
        val_items: list[tuple[Path, Path | None]] = [(p.image, p.mask) for p in split.val]
    else:
        ordered = sorted(transfer)
        random.Random(cfg.seed).shuffle(ordered)
        n_val = max(1, round(len(ordered) * d.val_fraction)) if len(ordered) > 1 and d.val_fraction > 0 else 0
        val_items, transfer = [(p, None) for p in ordered[:n_val]], ordered[n_val:]
        log.info("no labelled data: validating by agreement with the teacher on %d held-out images", n_val)
    if not transfer:
        raise SegdistillError("no transfer images left for training")
    if d.alpha > 0:
        missing = [p for p in transfer if p.resolve() not in label_of]
        if missing:
            raise ConfigError(f"distill.alpha > 0 needs a label for every transfer image; {missing[0]} has none")
    return transfer, val_items, label_of


def transfer_images(cfg: Config) -> list[Path]:
    """The images of ``distill.images``, and every ``distill.video_stride``-th frame of the videos
    named there or found in its folders. Frames are decoded once into PNG files in
    ``CACHE/frames/<video stem>-<SHA-256 of the video>-stride<N>/frame_NNNNNN.png`` (CACHE: the
    target cache's folder), so that from then on they are images like any other: the dataset reads
    them from disk, the target cache keys them by content, and a second run decodes nothing."""
    d = cfg.distill
    sources, videos = split_videos(d.images or [], cfg.data.recursive)
    images = collect_images(sources, cfg.data.recursive) if sources else []
    root = Path(d.cache_dir) / "frames" if d.cache_dir else default_cache_dir().parent / "frames"
    for video in videos:
        stat = video.stat()
        folder = f"{safe_relative_name(video, None).name}-{_content_key(video.resolve(), stat.st_size, stat.st_mtime_ns)}"
        images += extract_frames(video, root / f"{folder}-stride{d.video_stride}", d.video_stride,
                                 progress=is_main_process())
    return images


@functools.lru_cache(maxsize=64)
def _content_key(path: Path, size: int, mtime_ns: int) -> str:
    """A video's content hash, read once per process (a new run asks twice: to plan, and for the data)."""
    return file_sha256(path)[:16]


def _warn_cache(cfg: Config, transfer: list[Path], pre: Preprocess) -> None:
    """Say so when ``data.cache`` would keep more decoded transfer images in memory than is wise
    (thousands of video frames): each data-loading worker holds its own copy."""
    if not cfg.data.cache or not transfer:
        return
    pixels = [w * h * min(1.0, (pre.max_side / max(w, h)) ** 2 if pre.max_side else 1.0)
              for w, h in image_sizes(transfer, limit=20)]
    gib = float(np.mean(pixels)) * len(transfer) * pre.in_channels * 4 / 2**30 if pixels else 0.0
    if gib > 4 and is_main_process():
        log.warning("the %d transfer images take %.0f GiB decoded, kept in memory by each data-loading worker "
                    "(data.cache: true): set data.cache: false to read them from disk as needed (video frames: "
                    "or a larger distill.video_stride)", len(transfer), gib)


def latency_size(cfg: Config, tinfo: ModelInfo) -> tuple[tuple[int, int], str]:
    """(h, w) a distillation's models are timed at (the search's candidates, the report's teacher
    and student): a transfer image at the model's working resolution, else the training crop, and
    which of the two."""
    images = sorted(transfer_images(cfg))
    hw = working_size(images[0], tinfo) if images else None
    if hw is not None:
        return hw, f"the working size of the transfer images, as {images[0].name}"
    return (cfg.train.input_size, cfg.train.input_size), "train.input_size"
