"""The argument parser, one function per command: each adds its subcommand, its flags and the
function (cli/commands.py) that runs it."""

from __future__ import annotations

import argparse

from ..config import Config
from ..recipes import list_recipes
from . import flags
from .commands import (
    cmd_benchmark,
    cmd_config_init,
    cmd_data_check,
    cmd_data_download,
    cmd_data_list,
    cmd_data_synth,
    cmd_demo,
    cmd_distill,
    cmd_evaluate,
    cmd_export,
    cmd_import_keras,
    cmd_models,
    cmd_predict,
    cmd_report,
    cmd_train,
)
from .flags import COUNT, MINUTES, POSITIVE, PROBABILITY, SIDE

SEED = flags.integer(0, 2**32 - 1)
UNIT = flags.number(0, 1, low_open=False, what="a fraction")
SYNTH_SIDE = flags.integer(8, 4096, what="pixels")


class Subcommands:
    """Adds subcommand parsers that also take -q after the command, and know themselves (so that an
    unknown flag is reported with that command's usage and a "did you mean")."""

    def __init__(self, action: argparse._SubParsersAction) -> None:
        self.action = action

    def add_parser(self, name: str, **kwargs: object) -> argparse.ArgumentParser:
        p = self.action.add_parser(name, **kwargs)  # type: ignore[arg-type]
        # SUPPRESS: unless given here, the top-level -q (or its default) stands.
        p.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="only warnings and errors")
        p.set_defaults(parser=p)
        return p


def _add_config_args(p: argparse.ArgumentParser, student: bool = False) -> None:
    p.add_argument("--config", "-c", help=f"YAML config file, or a shipped recipe's name ({', '.join(list_recipes())})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set train.lr=3e-4 (repeatable)")
    p.add_argument("--name", help="run name (folder under output_dir)")
    p.add_argument("--output-dir", type=flags.output_folder, help="where run folders go (default runs/)")
    d = Config()
    p.add_argument("--epochs", type=COUNT, help=f"epochs to train (train.epochs, default {d.train.epochs})")
    p.add_argument("--batch-size", type=COUNT, help=f"crops per step (train.batch_size, default {d.train.batch_size})")
    if student:  # distill trains the student at distill.lr, so that is what --lr sets there
        p.add_argument("--lr", dest="student_lr", type=POSITIVE,
                       help=f"student learning rate (distill.lr, default train.lr {d.train.lr:g})")
    else:
        p.add_argument("--lr", type=POSITIVE, help=f"peak learning rate (train.lr, default {d.train.lr:g})")
    p.add_argument("--device", type=flags.device, help="auto, cpu, cuda, cuda:N (device, default auto)")
    p.add_argument("--seed", type=SEED, help=f"random seed, also of the validation split (seed, default {d.seed})")
    p.add_argument("--time", type=MINUTES, metavar="MINUTES",
                   help="time budget (train.time_budget): fit the epochs so the run ends within it")
    _add_threads_arg(p)


def _add_threads_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=flags.threads, metavar="N",
                   help="CPU threads (default auto: the free cores this process may use; docs/training.md)")




def _train_parser(sub: Subcommands) -> None:
    p = sub.add_parser("train", help="train a U-Net on images + masks")
    _add_config_args(p)
    p.add_argument("--data", help="data folder (images/+masks/, train/+val/, or Keras layout)")
    p.add_argument("--model", help="registered model name (see 'segdistill models')")
    p.add_argument("--input-size", type=SIDE, help="training crop size (train.input_size, default 256)")
    p.add_argument("--invert", action="store_true", default=None, help="foreground = mask zeros")
    p.add_argument("--unlabelled", metavar="DIR", help="folder of unlabelled images to self-train on (semi.images)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    p.add_argument("--overwrite", action="store_true", help="reuse runs/NAME instead of runs/NAME-2")
    p.add_argument("--skip-check", action="store_true", help="skip the data check before training")
    p.set_defaults(fn=cmd_train)


def _evaluate_parser(sub: Subcommands) -> None:
    p = sub.add_parser("evaluate", help="metrics of a model on labelled data")
    p.add_argument("model", help="model file: .safetensors (or a run folder: its model.safetensors), an exported .onnx or "
                                     "OpenVINO .xml, or an https:// URL of one (#sha256=HEX to verify it)")
    p.add_argument("--data", required=True, help="data folder with images and masks")
    p.add_argument("--out", type=flags.output_file, help="per-image CSV (default: <model folder>/eval_<data name>.csv)")
    p.add_argument("--config", "-c", help="YAML config file (supplies device, threads, predict.threshold)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set predict.threshold=0.4 (repeatable)")
    p.add_argument("--all", action="store_true",
                   help="score every image; default: of an images/+masks/ folder, only the validation images "
                        "the model's training held out (the val part of train/+val/ and Keras layouts)")
    p.add_argument("--threshold", type=PROBABILITY, help="probability threshold (default: the model's own, usually 0.5)")
    p.add_argument("--device", type=flags.device, help="auto, cpu, cuda, cuda:N (default auto)")
    p.add_argument("--invert", action=argparse.BooleanOptionalAction, default=None,
                   help="override the model's invert setting (--no-invert turns it off)")
    p.add_argument("--max-side", type=flags.max_side, default=None, help="override the model's max_side")
    p.add_argument("--tta", type=int, choices=[1, 2, 4, 8], default=None,
                   help="test-time augmentation views (default: the model's own, train.tta)")
    p.add_argument("--store-threshold", action="store_true",
                   help="store the threshold with the best IoU on these images in the model file (old -> new)")
    _add_backend_arg(p)
    _add_threads_arg(p)
    p.set_defaults(fn=cmd_evaluate, combination=flags.check_backend_device)


def _report_parser(sub: Subcommands) -> None:
    p = sub.add_parser("report", help="(re)write a run folder's report.html")
    p.add_argument("run_dir", help="run folder (what train and distill print)")
    p.add_argument("--device", type=flags.device, help="where the best and worst images are predicted again (default auto)")
    _add_threads_arg(p)
    p.set_defaults(fn=cmd_report)


def _predict_parser(sub: Subcommands) -> None:
    p = sub.add_parser("predict", help="masks for a file, folder or glob")
    p.add_argument("model", help="model file: .safetensors (or a run folder: its model.safetensors), an exported .onnx or "
                                     "OpenVINO .xml, or an https:// URL of one (#sha256=HEX to verify it)")
    p.add_argument("input", nargs="+", help="image or video files, folders or globs (all go to one output folder)")
    p.add_argument("--config", "-c", help="YAML config file (its predict section)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set predict.tile_overlap=0.5 (repeatable)")
    p.add_argument("--out", type=flags.output_folder, help="output root (default predictions/)")
    p.add_argument("--name", help="subfolder name (default: the input's name; NAME-2, -3... when it holds files)")
    p.add_argument("--overwrite", action="store_true",
                   help="reuse predictions/NAME after removing its previous masks, probs and overlays")
    p.add_argument("--threshold", type=PROBABILITY, help="probability threshold (default: the model's own, usually 0.5)")
    p.add_argument("--probs", action="store_true", help="also write 8-bit probability maps")
    p.add_argument("--overlay", action="store_true", help="also write overlays")
    p.add_argument("--frames", action="store_true", help="videos: also write each frame's mask as PNG (in NAME/)")
    p.add_argument("--batch-size", type=COUNT, help="images (with --tile: tiles) per forward pass (default 4)")
    p.add_argument("--recursive", "-r", action="store_true", help="also images in subfolders")
    p.add_argument("--tile", type=SIDE, help="predict large images in tiles of this size")
    p.add_argument("--tta", type=int, choices=[1, 2, 4, 8], default=None,
                   help="test-time augmentation views (default: the model's own, train.tta; 1 = off)")
    p.add_argument("--device", type=flags.device, help="auto, cpu, cuda, cuda:N (default auto)")
    _add_backend_arg(p)
    _add_threads_arg(p)
    p.set_defaults(fn=cmd_predict, combination=flags.check_backend_device)


def _export_parser(sub: Subcommands) -> None:
    p = sub.add_parser("export", help="export a model file for another runtime (ONNX, OpenVINO), checked against PyTorch")
    p.add_argument("model", help="model .safetensors file (or a run folder: its model.safetensors)")
    p.add_argument("--format", choices=["onnx", "openvino"], default="onnx",
                   help="onnx (default), or openvino: an IR, MODEL.xml + MODEL.bin (the [openvino] extra)")
    p.add_argument("--out", type=flags.output_file, help="output file (default: beside the model, MODEL.onnx or MODEL.xml)")
    p.add_argument("--check", metavar="DIR",
                   help="images to compare the export with PyTorch on (default: the model's training data)")
    p.add_argument("--int8", action="store_true",
                   help="static int8 quantization (QDQ; ONNX Runtime and OpenVINO), calibrated on --calibrate")
    p.add_argument("--calibrate", metavar="DIR", help="images for the int8 activation ranges (real images of the task)")
    p.add_argument("--calibration-images", type=COUNT, default=32, metavar="N", help="at most N of them (default 32)")
    _add_threads_arg(p)
    p.set_defaults(fn=cmd_export, combination=flags.check_export)


def _benchmark_parser(sub: Subcommands) -> None:
    p = sub.add_parser("benchmark", help="how fast models run here: latency, throughput, memory, GFLOP/s per backend")
    p.add_argument("models", nargs="+", help="model files (.safetensors, .onnx, .xml, URLs, run folders); the first is the "
                                             "reference for speed-ups (e.g. the teacher, then its students). One run "
                                             "folder alone: its models (a distillation's teacher, student and twin), "
                                             "IoU on its data, saved as RUN/speed.json and in its report.html")
    p.add_argument("--backend", type=flags.backend(("all", "auto", "torch", "onnxruntime", "openvino")), default="all",
                   help="all (default): every installed backend and precision, marking what auto picks")
    p.add_argument("--size", type=SIDE, nargs="+", default=None, metavar="PX",
                   help="input height [width] (default: the model's working size, else 512)")
    p.add_argument("--batch-sizes", type=COUNT, nargs="+", default=[1, 2, 4, 8], metavar="B",
                   help="batch sizes tried for throughput (default 1 2 4 8)")
    p.add_argument("--runs", type=COUNT, default=20, help="timed runs per backend at batch 1 (default 20)")
    p.add_argument("--data", help="labelled data: also each backend's IoU on it (evaluate; default for a run "
                                  "folder: its labelled data)")
    p.add_argument("--json", type=flags.output_file, metavar="FILE", help="also write the results as JSON")
    _add_threads_arg(p)
    p.set_defaults(fn=cmd_benchmark, combination=flags.check_benchmark)


def _import_keras_parser(sub: Subcommands) -> None:
    p = sub.add_parser("import-keras", help="convert a U-Net .h5 of the original Keras tool into a model file")
    p.add_argument("model", help="Keras .h5 model file (model.save of the original tool's train.py/distill.py)")
    p.add_argument("out", nargs="?", type=flags.output_file, help="model file to write (default: beside it, MODEL.safetensors)")
    p.add_argument("--max-side", type=flags.max_side, metavar="PX",
                   help="longer image side the model works at (default: the Keras model's input size, "
                        "where fixed; 0: the images' own size)")
    p.set_defaults(fn=cmd_import_keras)


def _distill_parser(sub: Subcommands) -> None:
    p = sub.add_parser("distill", help="distil a trained teacher into a small student")
    _add_config_args(p, student=True)
    p.add_argument("--teacher", help="teacher model file (or a run folder: its model.safetensors, or an https:// URL)")
    p.add_argument("--images", help="folder of transfer images or videos (labels not needed)")
    p.add_argument("--data", help="optional labelled data for validation (and alpha)")
    p.add_argument("--student", help="student model name")
    p.add_argument("--targets", choices=["cached", "online"],
                   help="cached: the teacher predicts each image once (default); online: on every augmented batch")
    p.add_argument("--baseline", action="store_true", default=None, help="also train the student from labels alone")
    p.add_argument("--loss", dest="kd_loss", choices=["soft_bce", "soft_bce+dice", "cwd", "soft_bce+cwd"], help="distillation loss")
    p.add_argument("--temperature", type=POSITIVE, help="soft-target temperature T")
    p.add_argument("--alpha", type=UNIT, help="weight of the supervised loss on labels (0-1)")
    p.add_argument("--search", type=flags.search, metavar="keep=F|latency=Nms",
                   help="find the student: the fastest keeping share F of the teacher's IoU, or the most accurate "
                        "under N ms here (distill.search; docs/distillation.md)")
    p.add_argument("--search-budget", type=MINUTES, metavar="MINUTES",
                   help="minutes for the whole search (default: about twice one full distillation)")
    p.add_argument("--input-size", type=SIDE, help="training crop size (train.input_size, default 256)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    p.add_argument("--overwrite", action="store_true", help="reuse runs/NAME instead of runs/NAME-2")
    p.set_defaults(fn=cmd_distill)


def _data_parser(sub: Subcommands) -> None:
    data = Subcommands(sub.add_parser("data", help="data tools").add_subparsers(dest="data_command", required=True))
    p = data.add_parser("synth", help="write a procedural data set")
    p.add_argument("out", type=flags.output_folder, help="folder to write OUT/images and OUT/masks into")
    p.add_argument("--count", type=COUNT, default=64, help="image/mask pairs (default 64)")
    p.add_argument("--size", type=SYNTH_SIDE, default=128, help="image side in pixels (default 128)")
    p.add_argument("--seed", type=SEED, default=0, help="random seed (default 0)")
    p.add_argument("--rgb", action="store_true", help="colour images (default grey)")
    p.add_argument("--vary-size", action="store_true", help="vary image sizes (0.75x-1.25x)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT/images and OUT/masks of a folder that holds files")
    p.set_defaults(fn=cmd_data_synth)
    p = data.add_parser("check", help="check a data folder before training")
    p.add_argument("dir", help="data folder (images/+masks/, train/+val/, or Keras layout)")
    p.add_argument("--config", "-c", help="YAML config file (its data section and train.input_size)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set data.val_fraction=0.1 (repeatable)")
    p.add_argument("--invert", action="store_true", help="foreground = mask zeros")
    p.add_argument("--max-lines", type=flags.integer(0), default=20, help="warnings and errors shown of each (default 20)")
    p.set_defaults(fn=cmd_data_check)
    p = data.add_parser("list", help="standard data sets that 'data download' fetches")
    p.set_defaults(fn=cmd_data_list)
    p = data.add_parser("download", help="download a standard data set and convert it to images + masks")
    p.add_argument("name", help="data set name ('segdistill data list' shows them)")
    p.add_argument("dir", nargs="?", type=flags.output_folder, help="folder to write (default: ./NAME); an interrupted download resumes here")
    p.add_argument("--mirror", metavar="URL",
                   help="base URL (or file:// folder) holding URL/NAME/FILE instead of the official sources "
                        "(default $SEGDISTILL_DATA_MIRROR)")
    p.set_defaults(fn=cmd_data_download)


def _config_parser(sub: Subcommands) -> None:
    cfg = Subcommands(sub.add_parser("config", help="config tools").add_subparsers(dest="config_command", required=True))
    p = cfg.add_parser("init", help="write a commented default config, or a shipped recipe")
    p.add_argument("path", nargs="?", type=flags.output_file, help="file to write (default: print)")
    p.add_argument("--recipe", metavar="NAME", help=f"a shipped recipe instead of the defaults ({', '.join(list_recipes())})")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.set_defaults(fn=cmd_config_init)


def _models_parser(sub: Subcommands) -> None:
    p = sub.add_parser("models", help="list registered models")
    p.set_defaults(fn=cmd_models)


def _demo_parser(sub: Subcommands) -> None:
    p = sub.add_parser("demo", help="built-in data -> train -> evaluate -> predict -> distill")
    p.add_argument("--dir", type=flags.output_folder, default="runs/demo", help="where the demo writes everything")
    p.add_argument("--epochs", type=COUNT, default=8, help="teacher epochs (default 8)")
    p.add_argument("--student-epochs", type=COUNT, default=24, help="student epochs, distilled and labels-only (default 24)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key in every stage, e.g. --set train.precision=fp32")
    _add_threads_arg(p)
    p.set_defaults(fn=cmd_demo)


def _add_backend_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", type=flags.backend(("auto", "torch", "onnxruntime", "openvino")), default="auto",
                   help="inference backend; auto: the fastest measured on this machine (cached; measured for jobs of "
                        "32+ images), else torch for a .safetensors model, onnxruntime for an .onnx, openvino for an .xml")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="inference precision; auto: measured with --backend auto, else fp32 (an int8 export runs int8)")


PARSERS = (
    _train_parser,
    _evaluate_parser,
    _report_parser,
    _predict_parser,
    _export_parser,
    _benchmark_parser,
    _import_keras_parser,
    _distill_parser,
    _data_parser,
    _config_parser,
    _models_parser,
    _demo_parser,
)
"""Adds each command, in the order --help lists them."""
