"""One typed config, the single source of truth for a run.

Precedence: the defaults below, then a YAML file, then ``key=value`` overrides (CLI flags are turned
into such overrides). Unknown keys are errors with a close-match suggestion, values are checked
against their declared type, and the resolved config is written into the run folder.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import ConfigError
from .recipes import config_file, list_recipes
from .typed import build, commented_yaml, leaf_keys, leaf_values, override


@dataclass
class DataConfig:
    root: str | None = None
    """Folder holding images/+masks/, train/+val/, or the Keras layout (train_images/0/, ...)."""
    layout: Literal["auto", "flat", "split", "keras", "explicit"] = "auto"
    """auto (detect), flat (images/+masks/), split (train/+val/), keras, or explicit (train_images/... paths)."""
    train_images: str | None = None
    """Explicit layout: folder of training images (relative to root when root is set); also
    train_masks, val_images, val_masks."""
    train_masks: str | None = None
    """Explicit layout: folder of training masks."""
    val_images: str | None = None
    """Explicit layout: folder of validation images (optional; else val_fraction splits)."""
    val_masks: str | None = None
    """Explicit layout: folder of validation masks."""
    keras_names: list[str] = field(
        default_factory=lambda: ["train_images", "train_masks", "val_images", "val_masks"]
    )
    """Folder names of the Keras layout, in the order train images, train masks, val images, val masks."""
    val_fraction: float = 0.2
    """Fraction split off (seeded, deterministic) when there is no validation set."""
    val_stems: list[str] | None = None
    """Explicit validation file stems (the rest trains); overrides val_fraction."""
    invert: bool = False
    """Swap foreground and background (membrane data marks the structure of interest as 0)."""
    label_offset: list[float] = field(default_factory=lambda: [0.0, 0.0])
    """Where the labels sit relative to the structures they mark, (dy, dx) pixels, negative = above /
    left (``benchmarks/label_offset.py`` measures it). Stored with the model so that test-time
    augmentation turns its views back into agreement."""
    channels: Literal["auto", "gray", "rgb"] = "auto"
    """Input channels: auto picks gray if every training image is gray, else rgb."""
    max_side: int | None = None
    """Downscale images whose longer side exceeds this (predictions are scaled back)."""
    recursive: bool = False
    """Also read images in subfolders (pairs then match by relative path)."""
    cache: bool = True
    """Keep decoded images in memory during training (small data sets, avoids re-decoding)."""


@dataclass
class ModelConfig:
    name: str = "unet"
    """A registered model (segdistill models lists them with their sizes)."""
    args: dict[str, Any] = field(default_factory=dict)
    """Constructor arguments of the named model (checked against its signature)."""
    pretrained: str = "auto"
    """ImageNet weights for an encoder_unet's encoder: auto (an installed weights package, the cache,
    else the hub where there is a network; none found: from scratch, with a notice), none, a weights
    file or folder (.safetensors, or a .pth state dict), or an installed package's name."""


@dataclass
class AugmentConfig:
    enabled: bool = True
    """Augment training crops at all (false: plain random crops)."""
    hflip: float = 0.5
    """Probability of a horizontal flip."""
    vflip: float = 0.5
    """Probability of a vertical flip."""
    rot90: float = 0.5
    """Probability of a random quarter turn."""
    affine: float = 0.3
    """Probability of a random scale and rotation."""
    scale: list[float] = field(default_factory=lambda: [0.8, 1.25])
    """Range of the affine scale factor."""
    rotate: float = 30.0
    """Largest affine rotation, in degrees (either way)."""
    elastic: float = 0.0
    """Probability of an elastic deformation (0 = off)."""
    elastic_alpha: float = 12.0
    """Strength of the elastic deformation, in pixels."""
    elastic_sigma: float = 8.0
    """Smoothness of the elastic deformation field, in pixels."""
    brightness: float = 0.15
    """Largest brightness change (fraction of the range)."""
    contrast: float = 0.15
    """Largest contrast change (fraction)."""
    gamma: float = 0.15
    """Largest gamma change (fraction)."""
    color_p: float = 0.5
    """Probability of the brightness/contrast/gamma change."""
    noise: float = 0.02
    """Standard deviation of the Gaussian noise added (fraction of the range)."""
    noise_p: float = 0.2
    """Probability of adding noise."""
    blur_p: float = 0.1
    """Probability of a slight Gaussian blur."""


@dataclass
class TrainConfig:
    plan: Literal["auto", "off"] = "auto"
    """auto: the working resolution, crop, flips and turns, model width and depth, epochs and crops
    per epoch are planned from the data's fingerprint and the time budget (docs/training.md), except
    the keys set in the config file or by flags; off: the defaults below."""
    epochs: int = 30
    """Epochs to train (with time_budget: measured and fitted instead)."""
    time_budget: float | None = None
    """Minutes for the whole run (--time): the first epochs are timed, and the number of epochs and
    the learning-rate schedule are fitted so that the run, final evaluation included, ends within
    it. null = run train.epochs."""
    batch_size: int = 4
    """Crops per optimiser step."""
    input_size: int = 256
    """Side of the square training crops, in pixels (images smaller than this are reflect-padded)."""
    samples_per_epoch: int | None = None
    """Random crops per epoch; default: one per training image (raise it for small data sets)."""
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    """adamw, adam or sgd."""
    lr: float = 1e-3
    """Peak learning rate (after warm-up)."""
    weight_decay: float = 1e-4
    """Weight decay of the optimiser."""
    scheduler: Literal["cosine", "plateau", "none"] = "cosine"
    """Learning-rate schedule: cosine (to min_lr), plateau (cut on a stalled validation IoU) or none."""
    warmup_epochs: int = 1
    """Epochs of linear warm-up to lr."""
    plateau_patience: int = 5
    """plateau scheduler: validations without a better IoU before the rate is cut."""
    plateau_factor: float = 0.5
    """plateau scheduler: what the rate is multiplied by at each cut."""
    min_lr: float = 1e-6
    """Lowest learning rate of the schedules."""
    encoder_lr: float = 0.1
    """A pretrained encoder's learning rate as a fraction of lr: fine-tuned gently, it keeps what the
    ImageNet weights know while the decoder learns at the full rate."""
    loss: Literal["bce", "dice", "jaccard", "focal", "bce_dice", "lovasz", "bce_lovasz"] = "bce_dice"
    """Task loss: bce, dice, jaccard, focal, bce_dice, lovasz or bce_lovasz (losses.py)."""
    pos_weight: float | Literal["auto"] | None = None
    """Weight of the positive class in BCE; "auto" = background/foreground pixel ratio (capped)."""
    early_stopping: int = 0
    """Stop after this many validations without a better IoU (0 = never)."""
    grad_clip: float | None = 1.0
    """Clip the gradient norm to this (null = no clipping)."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """auto (chosen for the device; docs/training.md), fp32, bf16 or fp16."""
    channels_last: Literal["auto", "true", "false"] = "auto"
    """auto, true or false: channels-last memory format (auto: chosen for the device; docs/training.md)."""
    num_workers: int | Literal["auto"] = "auto"
    """Data-loading worker processes; auto picks from the free cores."""
    val_every: int = 1
    """Validate every this many epochs (and always after the last)."""
    threshold: float = 0.5
    """Probability above which a pixel is foreground; stored with the model."""
    tta: int = 1
    """Test-time augmentation views for the finished model (1, 2, 4 or 8 flips/turns): stored with
    it, so evaluate and predict use them; the best checkpoint is also evaluated with them at the end
    of training. Per-epoch validation stays a single pass (it picks the checkpoint, cheaply)."""
    compile: bool = False
    """Run the model through torch.compile (a GPU with long runs gains; first epoch slower)."""
    ema: float | None = None
    """Keep an exponential moving average of the weights with this decay (e.g. 0.99) and validate
    and save the average; None = off."""


@dataclass
class DistillConfig:
    teacher: str | None = None
    """The trained teacher's model file (--teacher)."""
    images: list[str] | str | None = None
    """Folder(s) of transfer images (labels not needed; a single 0/ subfolder is tolerated)."""
    student: ModelConfig = field(
        default_factory=lambda: ModelConfig(name="unet", args={"base": 4, "norm": "batch"})
    )
    """The student model: a registered name and its arguments (segdistill models)."""
    targets: Literal["cached", "online"] = "cached"
    """cached: the teacher predicts each transfer image once; online: on every augmented batch."""
    loss: Literal["soft_bce", "soft_bce+dice", "cwd", "soft_bce+cwd"] = "soft_bce+dice"
    """soft_bce: per-pixel BCE on the teacher's probabilities; +dice adds a soft Dice on them;
    cwd: spatial-softmax KL (channel-wise distillation)."""
    temperature: float = 1.0
    """Temperature of the soft-target BCE (the loss is scaled by T^2)."""
    cwd_weight: float = 1.0
    """Weight of the CWD term in the soft_bce+cwd loss."""
    cwd_temperature: float = 4.0
    """Temperature of the spatial softmax in the CWD loss (Shu et al. use 4 for segmentation)."""
    feature_weight: float = 0.0
    """Weight of feature distillation between matching decoder levels (1x1 adapters); 0 = off."""
    alpha: float = 0.0
    """Weight of the supervised loss on labels (only where labelled data is given)."""
    val_fraction: float = 0.2
    """Without labelled data: fraction of the transfer images held out to validate by agreement with the teacher."""
    baseline: bool = False
    """Also train the same student from labels alone, for the report."""
    cache_dir: str | None = None
    """Teacher-target cache; default ``~/.cache/segdistill/targets``."""
    balance: bool = False
    """Re-weight the teacher's foreground in soft BCE by sqrt(background/foreground) (class balance).
    Off by default: measured no better than the Dice term, which already balances (docs/distillation.md)."""
    mixup: float = 0.0
    """Online targets only: blend each batch with a shuffled copy, weight ~ Beta(mixup, mixup), and let
    the teacher label the blend (function matching); 0 = off, 0.2-1.0 typical."""
    lr: float | None = 0.01
    """Student learning rate; small students want a higher one than teachers (None: train.lr)."""
    video_stride: int = 10
    """Videos among the transfer images: every this many-th frame is a transfer image (neighbouring
    frames are near copies); decoded once into PNG files beside the target cache."""
    search: str | None = None
    """Find the student (--search): keep=FRACTION (the fastest student keeping at least this share of
    the teacher's validation IoU) or latency=NUMBERms (the most accurate student at most this slow
    here); successive halving over width, depth and design, the winner distilled fully
    (docs/distillation.md). null = distil distill.student."""
    search_budget: float | None = None
    """Minutes for the whole search, the winner's distillation included (--search-budget); null =
    about twice one full distillation, estimated from the first measured epochs."""


@dataclass
class SemiConfig:
    images: list[str] | str | None = None
    """Folder(s) of unlabelled images for self-training with pseudo-labels; null = off."""
    start_epoch: int = 10
    """First epoch that trains on pseudo-labels (made by the model, its EMA when on, as it stands
    after the previous epoch)."""
    refresh_every: int = 10
    """Remake the pseudo-labels every this many epochs (0 = keep the first ones)."""
    fraction: float = 0.3
    """Share of each epoch's crops (train.samples_per_epoch) drawn from pseudo-labelled images."""
    tta: bool = True
    """Average the model's probabilities over flips when making pseudo-labels (4 passes, not 1)."""


@dataclass
class PredictConfig:
    output_dir: str = "predictions"
    """Where prediction folders go (predictions/NAME, NAME-2... when taken)."""
    threshold: float | None = None
    """None: the threshold stored in the model file."""
    save_probs: bool = False
    """Also write 8-bit probability maps (probs/)."""
    overlay: bool = False
    """Also write the masks drawn over the images (overlays/)."""
    batch_size: int = 4
    """Images per forward pass; with ``tile``, windows of one image per forward pass."""
    num_workers: int | Literal["auto"] = "auto"
    """Background threads reading images ahead of the model; auto = 2."""
    recursive: bool = False
    """Also predict images in subfolders."""
    tile: int | None = None
    """Predict large images in overlapping tiles of this size (None: whole image at once)."""
    tile_overlap: float = 0.25
    """Overlap of neighbouring tiles (fraction of a tile)."""
    frames: bool = False
    """Videos: also write each frame's mask (probability, overlay) as PNG, besides the mask video."""


@dataclass
class Config:
    name: str = "run"
    """Run name: results go to output_dir/name (name-2, name-3... when taken)."""
    output_dir: str = "runs"
    """Where run folders go."""
    seed: int = 0
    """Seeds weights, the validation split, crops and augmentation."""
    device: str = "auto"
    """auto (a GPU when there is one), cpu, cuda or cuda:N."""
    threads: int | Literal["auto"] = "auto"
    """CPU threads for torch and data loading; auto = OMP_NUM_THREADS if set, else the cores this
    process may use (affinity, container quota) less those other processes keep busy."""
    data: DataConfig = field(default_factory=DataConfig)
    """The labelled data: where it is and how it is read and split."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The model to train."""
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    """Random changes to the training crops, each with its probability or range."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """The training loop: epochs, optimiser, schedule, loss, precision."""
    distill: DistillConfig = field(default_factory=DistillConfig)
    """Distillation (segdistill distill): teacher, transfer images, student and loss."""
    semi: SemiConfig = field(default_factory=SemiConfig)
    """Self-training on unlabelled images with pseudo-labels (train --unlabelled)."""
    predict: PredictConfig = field(default_factory=PredictConfig)
    """segdistill predict (and evaluate's threshold)."""

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


def config_from_dict(data: dict[str, Any] | None) -> Config:
    cfg = build(Config, data or {})
    validate(cfg)
    cfg._given = leaf_keys(data or {})  # type: ignore[attr-defined]  # what the plan must not change
    return cfg


def given_keys(cfg: Config) -> set[str]:
    """The dotted keys the user set: those in the file, flags and overrides the config was loaded
    from, and any value that differs from its default (a Config changed in code)."""
    now, default = leaf_values(dataclasses.asdict(cfg)), leaf_values(dataclasses.asdict(Config()))
    return set(getattr(cfg, "_given", set())) | {k for k, v in now.items() if k not in default or default[k] != v}


def as_config(cfg: Config | dict[str, Any], what: str) -> Config:
    """``cfg`` as a Config: a dict of config keys (nested as in the YAML file) is built and checked
    like a file; anything else is a one-line error naming what ``what`` takes."""
    if isinstance(cfg, Config):
        return cfg
    if isinstance(cfg, dict):
        return config_from_dict(cfg)
    raise ConfigError(f"{what} takes a Config (segdistill.load_config(...)) or a dict of config keys, "
                      f"not {type(cfg).__name__}")


def config_to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML scalars) to a nested dict of config keys."""
    return override(data, overrides, Config)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file at ``path`` (if any), then ``key=value`` overrides."""
    data: dict[str, Any] = {}
    """The labelled data: where it is and how it is read and split."""
    if path is not None:
        path = config_file(path)  # a file, or a shipped recipe's name (-c membrane)
        if not path.is_file():
            recipes = f" (nor a recipe: {', '.join(list_recipes())})" if path.parent == Path(".") else ""
            raise ConfigError(f"{path}: config file not found{recipes}")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not a text file (a YAML config is UTF-8 text)") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = f" line {mark.line + 1}" if mark is not None else ""
            problem = " ".join(str(getattr(e, "problem", None) or e).split())  # PyYAML's own text spans lines
            raise ConfigError(f"{path}:{line} is not valid YAML ({problem})") from None
        except RecursionError:
            raise ConfigError(f"{path}: not a usable YAML config (nested too deeply)") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
        data = loaded or {}
    data = apply_overrides(data, overrides or [])
    try:
        return config_from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path is not None else str(e)) from None


def validate(cfg: Config) -> None:
    """Checks that types alone cannot express."""
    t = cfg.train
    if len(cfg.augment.scale) != 2:
        raise ConfigError("augment.scale must be [min, max]")
    checks = [
        (t.epochs >= 1, "train.epochs must be at least 1"),
        (t.time_budget is None or t.time_budget > 0, "train.time_budget must be positive (minutes), or null"),
        (cfg.threads == "auto" or cfg.threads >= 1, "threads must be at least 1, or auto"),
        (t.batch_size >= 1, "train.batch_size must be at least 1"),
        (t.input_size >= 16, "train.input_size must be at least 16"),
        (t.lr > 0, "train.lr must be positive"),
        (0 < t.threshold < 1, "train.threshold must lie between 0 and 1"),
        (0 <= cfg.data.val_fraction < 1, "data.val_fraction must lie in [0, 1)"),
        (len(cfg.data.keras_names) == 4, "data.keras_names must name 4 folders"),
        (cfg.distill.temperature > 0, "distill.temperature must be positive"),
        (cfg.distill.cwd_temperature > 0, "distill.cwd_temperature must be positive"),
        (cfg.distill.mixup >= 0, "distill.mixup must not be negative (0 = off)"),
        (cfg.distill.video_stride >= 1, "distill.video_stride must be at least 1 (1 = every frame)"),
        (t.val_every >= 1, "train.val_every must be at least 1"),
        (t.warmup_epochs >= 0, "train.warmup_epochs must not be negative"),
        (t.ema is None or 0 < t.ema < 1, "train.ema must lie between 0 and 1 (e.g. 0.99), or be null"),
        (cfg.augment.scale[0] > 0 and cfg.augment.scale[1] >= cfg.augment.scale[0], "augment.scale must be [min, max] with 0 < min <= max"),
        (0 <= cfg.predict.tile_overlap < 1, "predict.tile_overlap must lie in [0, 1)"),
        (cfg.predict.batch_size >= 1, "predict.batch_size must be at least 1"),
        (cfg.predict.tile is None or cfg.predict.tile >= 16, "predict.tile must be at least 16"),
        (cfg.distill.lr is None or cfg.distill.lr > 0, "distill.lr must be positive"),
        (0 <= cfg.distill.alpha <= 1, "distill.alpha must lie in [0, 1]"),
        (0 < cfg.semi.fraction < 1, "semi.fraction must lie between 0 and 1 (exclusive)"),
        (cfg.semi.start_epoch >= 1, "semi.start_epoch must be at least 1"),
        (cfg.semi.refresh_every >= 0, "semi.refresh_every must not be negative (0 = never)"),
        (cfg.data.max_side is None or cfg.data.max_side >= 16, "data.max_side must be at least 16"),
        (t.tta in (1, 2, 4, 8), "train.tta must be 1, 2, 4 or 8 (views: none, + mirror, + turned, all flips and turns)"),
        (len(cfg.data.label_offset) == 2, "data.label_offset must be [dy, dx] in pixels"),
        (cfg.distill.feature_weight == 0 or cfg.distill.targets == "online",
         "feature distillation (distill.feature_weight > 0) needs distill.targets: online"),
        (cfg.distill.mixup == 0 or cfg.distill.targets == "online",
         "distill.mixup needs distill.targets: online (the teacher must label the blended images)"),
        (cfg.distill.search_budget is None or cfg.distill.search_budget > 0, "distill.search_budget must be positive (minutes)"),
        (cfg.distill.search is None or cfg.distill.targets == "cached",
         "distill.search needs distill.targets: cached (the candidates learn from the cached targets)"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    if cfg.distill.search is not None:
        parse_search(cfg.distill.search)
    if any(ch in cfg.name for ch in "/\\") or cfg.name in ("", ".", ".."):
        raise ConfigError(f"name {cfg.name!r} must be a plain folder name (no slashes)")


def parse_search(text: str) -> tuple[str, float]:
    """``distill.search`` as (kind, value): ``keep=0.97`` -> ("keep", 0.97), ``latency=8ms`` ->
    ("latency", 8.0) (milliseconds); anything else is a one-line error."""
    kind, _, value = str(text).replace(" ", "").partition("=")
    number = value[:-2] if kind == "latency" and value.endswith("ms") else value if kind == "keep" else ""
    try:
        x = float(number)
    except ValueError:
        x = float("nan")
    if not (0 < x <= 1 if kind == "keep" else 0 < x < float("inf")):
        raise ConfigError(f"--search: expected keep=FRACTION or latency=NUMBERms (distill.search), got {text!r}")
    return kind, x


def validate_distill(cfg: Config) -> None:
    """What distillation needs beyond a valid config: a teacher and transfer images."""
    if cfg.distill.teacher is None:
        raise ConfigError("distill.teacher is not set: give the teacher model file (--teacher MODEL)")
    if not cfg.distill.images:
        raise ConfigError("distill.images is not set: give a folder of images (--images DIR)")


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def default_config_yaml() -> str:
    """The default config as YAML, each key followed by the comment from its docstring."""
    return commented_yaml(Config(), "# segdistill config. Every key is optional; CLI flags and --set key=value override it.")
