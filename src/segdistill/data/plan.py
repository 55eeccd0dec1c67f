"""The training plan: settings read off the data's fingerprint and the time budget (``train.plan:
auto``), like nnU-Net's experiment planning, so that a new kind of data trains well without tuning.

A pure function of a :class:`Fingerprint` and the budget (tested on fingerprints alone); ``apply``
then writes the plan into a config, skipping every key the user set (a config file, a flag or
``--set``): an explicit value always wins. The rules and their reasons are in docs/training.md.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from .fingerprint import Fingerprint

CROP = 256
"""The largest training crop: big enough for context, small enough for a 2-core CPU."""
CONTEXT_FILL = 0.9
"""The large objects (the 90th percentile of each image's largest) should span at most this much of
a crop: a network that only ever sees part of an object cannot learn its outline."""
MIN_WIDTH = 8.0
"""Downscaling stops where the foreground would get thinner than this many pixels (membranes, thin
structures): below it a 2-pixel boundary error is a quarter of the structure."""
DETAIL_WIDTH = ((90, 32.0), (360, 48.0))
"""(budget up to this many minutes, px): the finest detail (the thinner class's width) is shrunk
to about this many pixels when that is smaller than the large objects' rule asks; 64 px with a
longer budget or none. Pixels cost time: a polyp 109 px thick is still 32 px thick at a third of
the resolution, where a 30-minute run sees its images 3x as often."""
DETAIL_WIDTH_UNBOUNDED = 64.0
DEEP_EXTENT = 96
"""Objects whose typical extent at the working resolution exceeds this many pixels get a fifth
level (a depth-4 U-Net's receptive field is about 200 px; the effective one about half of it)."""
TARGET_SAMPLES = 8_000
"""Training crops over a run without a time budget (the tuned recipes saw 5-22 thousand)."""
EPOCHS = (30, 150)
"""Fewest and most planned epochs without a time budget."""
MIN_SAMPLES = 64
"""Fewest crops per epoch (a handful of images would otherwise make an epoch a few steps long)."""
PHOTO_ENCODER = "efficientnet_lite0"
"""The encoder for colour images: ImageNet-pretrained, MobileNet-class, the fastest to fine-tune on
a CPU of the encoders with weights to be had (docs/training.md, "Pretrained encoders")."""
STUDENT_ENCODER = {"encoder": PHOTO_ENCODER, "depth": 4, "decoder": [24, 16, 12, 8], "block": "dwsep", "input_scale": 0.5}
"""The photo student: the same pretrained encoder, cut after its stride-16 stage, at half the
teacher's resolution under a thin depthwise-separable decoder. Half resolution is a quarter of the
pixels; the cut drops 5 of the encoder's 16 blocks and a decoder step, which is what pays once the
pixels are few: such a network's CPU time follows its layer count (docs/distillation.md)."""


@dataclass
class Plan:
    max_side: int | None
    """data.max_side: the working resolution (None: native)."""
    input_size: int
    """train.input_size: the crop side."""
    hflip: float
    vflip: float
    rot90: float
    base: int
    """model.args.base (unet): channels at full resolution."""
    depth: int
    """model.args.depth (unet): resolution levels."""
    samples_per_epoch: int
    epochs: int
    """train.epochs (a time budget fits the epochs instead, by measuring them)."""
    reasons: dict[str, str] = field(default_factory=dict)
    encoder: dict[str, Any] | None = None
    """encoder_unet's arguments (a pretrained encoder, for colour images), or None: a unet of
    ``base`` and ``depth``."""
    tta: int = 1
    """train.tta: the test-time views the model file asks predict and evaluate for (a teacher's;
    a student's plan leaves it to the teacher's model file)."""

    def settings(self, model: str = "model.args") -> dict[str, tuple[Any, str]]:
        """The plan as dotted config keys -> (value, reason); ``model``: where the width and depth
        go (``distill.student.args`` for a student)."""
        r = self.reasons
        if self.encoder is None:
            arch = {f"{model}.base": (self.base, r["base"]), f"{model}.depth": (self.depth, r["depth"])}
        else:
            arch = {f"{model.removesuffix('.args')}.name": ("encoder_unet", r["encoder"]),
                    **{f"{model}.{k}": (v, r["encoder"]) for k, v in self.encoder.items()}}
        return {"data.max_side": (self.max_side, r["max_side"]), "train.input_size": (self.input_size, r["input_size"]),
                "augment.hflip": (self.hflip, r["flips"]), "augment.vflip": (self.vflip, r["flips"]),
                "augment.rot90": (self.rot90, r["flips"]), **arch,
                "train.samples_per_epoch": (self.samples_per_epoch, r["samples_per_epoch"]),
                "train.epochs": (self.epochs, r["epochs"]),
                **({"train.tta": (self.tta, r["tta"])} if model == "model.args" and "tta" in r else {})}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _round32(x: float) -> int:
    return max(32, int(round(x / 32)) * 32)


def _ceil32(x: float) -> int:
    return max(32, int(math.ceil(x / 32)) * 32)


def _detail_width(budget_minutes: float | None, pretrained: bool = False) -> float:
    """How thick the finest detail is kept on a budget; a pretrained encoder gets the next tier up
    (it needs a few epochs, not dozens: measured on Kvasir, 95% of its final validation IoU after a
    quarter of the run, so its budget buys resolution rather than epochs)."""
    tiers = [px for _, px in DETAIL_WIDTH] + [DETAIL_WIDTH_UNBOUNDED]
    for i, (limit, _) in enumerate(DETAIL_WIDTH):
        if budget_minutes is not None and budget_minutes <= limit:
            return tiers[min(i + int(pretrained), len(tiers) - 1)]
    return DETAIL_WIDTH_UNBOUNDED


def _budget_words(budget_minutes: float | None) -> str:
    return "a run without a time budget" if budget_minutes is None else f"a {budget_minutes:g}-minute budget"


def make_plan(fp: Fingerprint, budget_minutes: float | None = None, student: bool = False, encoder: bool = True) -> Plan:
    """The plan for data with fingerprint ``fp`` and a run of ``budget_minutes`` (None: no budget).
    ``student``: a distillation, whose students learn for longer (twice the crops: on held-out
    photos a 30-epoch distillation was still improving at its end). ``encoder``: a pretrained
    encoder may be planned (False where the user chose the architecture)."""
    w, h = fp.median_size
    longer, short = max(w, h, 1), max(min(w, h), 1)
    pretrained = encoder and _is_photo(fp)
    reasons: dict[str, str] = {}
    max_side, scale, reasons["max_side"] = _resolution(fp, longer, short, budget_minutes, pretrained)
    work_longer, work_short = longer * scale, short * scale
    # Crop: the standard crop, or the whole (working) image when the images are smaller.
    input_size = min(CROP, _ceil32(work_longer))
    reasons["input_size"] = ("the standard crop" if input_size == CROP else
                             f"the images are {work_longer:.0f} px at the working resolution: cropped whole")
    (hflip, vflip, rot90), reasons["flips"] = _flips(fp)
    tta = 2 if fp.upright else 8
    # Test-time views: those the model was trained on, averaged; a free ensemble of one model
    # (Kvasir-SEG: test IoU 0.764 with one view, 0.803 with 8), paid at prediction time, not in
    # training. Predict's --tta 1 (or the student) is the fast path.
    reasons["tta"] = (f"{tta} views at prediction, the flips{' and turns' if tta == 8 else ''} the model "
                      "trained on, averaged")
    depth, reasons["depth"] = _depth(fp.object_extent * work_short, input_size)
    base, reasons["base"] = _width(budget_minutes)
    per_image = min(8, max(1, round(work_longer * work_short / (input_size * input_size))))
    samples, epochs, reasons["samples_per_epoch"], reasons["epochs"] = _length(fp.images, per_image, budget_minutes,
                                                                               student)
    args = _encoder(student, reasons) if pretrained else None
    return Plan(max_side, input_size, hflip, vflip, rot90, base, depth, samples, epochs, reasons, args, tta)


def _resolution(fp: Fingerprint, longer: float, short: float, budget_minutes: float | None,
                pretrained: bool) -> tuple[int | None, float, str]:
    """The working resolution: shrink until the large objects fit a crop, or (with a short budget)
    until the finest detail is as thin as the budget affords; never below the finest detail's
    minimum. ``longer``, ``short``: the median image's sides. Returns data.max_side (None: native),
    the scale the working sizes follow, and the reason."""
    large_px = fp.large_extent * short
    detail = _detail_width(budget_minutes, pretrained)
    fit = min(1.0, CONTEXT_FILL * CROP / large_px) if large_px > 0 else 1.0
    cheap = min(1.0, detail / fp.feature_width) if fp.feature_width > 0 else 1.0
    scale = min(fit, cheap)
    floor = min(1.0, MIN_WIDTH / fp.feature_width) if fp.feature_width > 0 else 1.0
    floored = scale < floor
    if floored:
        scale = floor
    max_side = _round32(longer * scale) if scale < 1 else None
    if max_side is not None and max_side >= longer:
        max_side = None
    if max_side is not None:
        scale = max_side / longer  # the rounded side's own scale
    if floored:
        return max_side, scale, (f"large objects span {large_px:.0f} px (p90) but the finest detail is "
                                 f"{fp.feature_width:.1f} px thick: downscaled only to keep it {MIN_WIDTH:g} px")
    if max_side is None:
        return None, scale, (f"native resolution: the large objects span {large_px:.0f} px of {longer} (p90), they "
                             f"fit a {CROP} px crop; the finest detail is {fp.feature_width:.1f} px")
    why = (f"the finest detail ({fp.feature_width:.0f} px) stays {fp.feature_width * scale:.0f} px thick, enough for "
           f"{_budget_words(budget_minutes)}" if cheap < fit else
           f"the large objects span {large_px:.0f} px (p90), {large_px * scale:.0f} px after, so a crop shows them whole")
    return max_side, scale, f"downscaled to {max_side} px (x{scale:.2f}): {why}"


def _flips(fp: Fingerprint) -> tuple[tuple[float, float, float], str]:
    """(hflip, vflip, rot90) and the reason: flips and turns only where the masks have no up and down."""
    if fp.upright:
        return (0.5, 0.0, 0.0), (f"left-right flips only: the masks have an up and a down (vertical z "
                                 f"{fp.vertical_z:+.1f}), so vertical flips and turns would show the model images "
                                 "that do not occur")
    return (0.5, 0.5, 0.5), f"flips and turns: no preferred orientation (vertical z {fp.vertical_z:+.1f})"


def _depth(extent_px: float, input_size: int) -> tuple[int, str]:
    """A fifth level for objects (``extent_px``: their typical extent at the working resolution)
    larger than a depth-4 network sees; never more levels than the crop allows."""
    depth = 5 if extent_px > DEEP_EXTENT else 4
    depth = max(2, min(depth, int(math.log2(input_size / 8))))
    return depth, f"typical objects span {extent_px:.0f} px at the working resolution"


def _width(budget_minutes: float | None) -> tuple[int, str]:
    """The U-Net's base width: what the time allows (the budget's epochs are then fitted by
    measuring them)."""
    if budget_minutes is None:
        return 16, "no time budget"
    why = f"a {budget_minutes:g}-minute budget"
    if budget_minutes < 10:
        return 8, why
    if budget_minutes <= 90:
        return 16, why
    if budget_minutes <= 360:
        return 24, why
    return 32, why


def _length(images: int, per_image: int, budget_minutes: float | None, student: bool) -> tuple[int, int, str, str]:
    """Crops per epoch and epochs, with their reasons: about one crop per crop-sized piece of each
    image (``per_image``), and enough crops over the run."""
    samples = max(MIN_SAMPLES, images * per_image)
    target = TARGET_SAMPLES * (2 if student else 1)
    epochs = min(EPOCHS[1], max(EPOCHS[0], round(target / samples)))
    samples_why = f"{per_image} per training image" + (f", at least {MIN_SAMPLES}" if samples == MIN_SAMPLES else "")
    epochs_why = ("fitted to the time budget by measuring the first epochs" if budget_minutes is not None
                  else f"about {target} crops over the run")
    return samples, epochs, samples_why, epochs_why


def _is_photo(fp: Fingerprint) -> bool:
    """Mostly colour images: the ones an ImageNet-pretrained encoder is planned for (not gray
    ones, nor gray content saved as RGB: see :func:`_encoder`)."""
    return fp.photos


def _encoder(student: bool, reasons: dict[str, str]) -> dict[str, Any]:
    """The pretrained encoder for colour images (the teacher's, or the photo student's); gray ones
    keep the U-Net from scratch, which keeps its measured accuracy there (docs/training.md)."""
    if student:
        reasons["encoder"] = (f"colour images: the student keeps the ImageNet-pretrained {PHOTO_ENCODER} encoder (cut "
                              "after stride 16) at half the teacher's resolution, under a thin depthwise-separable decoder")
        return dict(STUDENT_ENCODER)
    reasons["encoder"] = (f"colour images: an ImageNet-pretrained {PHOTO_ENCODER} encoder (too few photos to learn "
                          "edges and textures from scratch)")
    return {"encoder": PHOTO_ENCODER}


def apply_plan(values: dict[str, Any], settings: dict[str, tuple[Any, str]], given: set[str]) -> tuple[dict[str, Any], list[str]]:
    """``values`` (a config as a nested dict) with the ``settings`` (Plan.settings) written in,
    except the dotted keys in ``given`` (the user's); returns the new dict and the keys written."""
    out = copy.deepcopy(values)
    applied = []
    for key, (value, _) in settings.items():
        if key in given:
            continue
        *parents, last = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
        applied.append(key)
    return out, applied
