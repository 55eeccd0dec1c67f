"""Command line: each subcommand parses, builds a config, calls one library function.

Errors caused by input (data, config, model files) print one line, ``error: ...``, and exit 2.
"""


from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .config import Config, ConfigError, default_config_yaml, load_config
from .errors import SegdistillError
from .version import STARTED, __version__

log = logging.getLogger("segdistill")

DESCRIPTION = """Binary segmentation with a U-Net: train a model on images and masks, measure it, predict masks for
new images, and distil it into a small, fast student.

First steps:
  segdistill data download kvasir-seg                     a standard data set ('data list' shows them)
  segdistill data check DATA_DIR                          is the data usable? (images/ + masks/)
  segdistill train --data DATA_DIR                        train; prints the run folder
  segdistill evaluate runs/NAME --data DATA_DIR           scores on the images training held out
  segdistill predict runs/NAME new_images/                masks into predictions/new_images
  segdistill distill --teacher runs/NAME --images DIR     a small student that copies the model
  segdistill demo                                         all of it on built-in data
'segdistill COMMAND -h' shows a command's options; docs/first-hour.md walks through them."""


def _add_config_args(p: argparse.ArgumentParser, student: bool = False) -> None:
    p.add_argument("--config", "-c", help="YAML config file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set train.lr=3e-4 (repeatable)")
    p.add_argument("--name", help="run name (folder under output_dir)")
    p.add_argument("--output-dir", help="where run folders go (default runs/)")
    d = Config()
    p.add_argument("--epochs", type=int, help=f"epochs to train (train.epochs, default {d.train.epochs})")
    p.add_argument("--batch-size", type=int, help=f"crops per step (train.batch_size, default {d.train.batch_size})")
    if student:  # distill trains the student at distill.lr, so that is what --lr sets there
        p.add_argument("--lr", dest="student_lr", type=float,
                       help=f"student learning rate (distill.lr, default train.lr {d.train.lr:g})")
    else:
        p.add_argument("--lr", type=float, help=f"peak learning rate (train.lr, default {d.train.lr:g})")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N (device, default auto)")
    p.add_argument("--seed", type=int, help=f"random seed, also of the validation split (seed, default {d.seed})")
    p.add_argument("--time", type=float, metavar="MINUTES",
                   help="time budget (train.time_budget): fit the epochs so the run ends within it")
    _add_threads_arg(p)


def _add_threads_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=_threads_value, metavar="N",
                   help="CPU threads (default auto: the free cores this process may use; docs/training.md)")


def _threads_value(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"'{text}' is not a thread count (a whole number >= 1, or auto)")
    return n


# CLI flag -> config key; flags left unset do not override the file.
_FLAG_KEYS = {
    "name": "name", "output_dir": "output_dir", "epochs": "train.epochs", "batch_size": "train.batch_size",
    "lr": "train.lr", "device": "device", "seed": "seed", "data": "data.root", "model": "model.name",
    "input_size": "train.input_size", "invert": "data.invert", "teacher": "distill.teacher",
    "images": "distill.images", "student": "distill.student.name", "targets": "distill.targets",
    "baseline": "distill.baseline", "kd_loss": "distill.loss", "temperature": "distill.temperature",
    "alpha": "distill.alpha", "student_lr": "distill.lr", "unlabelled": "semi.images",
    "search": "distill.search", "search_budget": "distill.search_budget",
    "time": "train.time_budget", "threads": "threads",
}
# Flags whose argparse dest differs from the flag's name.
_FLAG_NAMES = {"kd_loss": "loss", "student_lr": "lr"}


def _override(key: str, value: object) -> str:
    """A ``key=value`` override for a flag's value; strings are quoted so that YAML keeps a folder
    or run name such as ``2024_01``, ``010`` or ``yes`` a string (unquoted: 202401, 8, true)."""
    return f"{key}={json.dumps(value, ensure_ascii=False) if isinstance(value, str) else value}"


def _config_from_args(args: argparse.Namespace) -> Config:
    overrides = []
    for attr, key in _FLAG_KEYS.items():
        value = getattr(args, attr, None)
        if value is not None and value is not False:
            overrides.append(_override(key, value))
    return load_config(args.config, overrides + list(args.overrides))


def _check_resume_alone(args: argparse.Namespace) -> None:
    """--resume continues a run exactly as configured; other settings would silently not apply."""
    given = [k for k in (*_FLAG_KEYS, "config") if getattr(args, k, None) not in (None, False)] + (["set"] if args.overrides else [])
    if given:
        raise ConfigError(
            f"--resume takes no other settings (got --{_FLAG_NAMES.get(given[0], given[0]).replace('_', '-')}); "
            "edit RUN_DIR/config.yaml to change a resumed run (e.g. train.epochs to extend it)"
        )


def cmd_train(args: argparse.Namespace) -> int:
    from .data.check import check_data
    from .distributed import is_main_process
    from .engine.train import fit

    if args.resume:
        _check_resume_alone(args)
        fit(None, resume=args.resume, started=STARTED)  # type: ignore[arg-type]
        return 0
    cfg = _config_from_args(args)
    if not args.skip_check:
        report = check_data(cfg.data, cfg.seed)
        if not report.ok:
            more = f" (and {len(report.errors) - 1} more; run 'segdistill data check')" if len(report.errors) > 1 else ""
            raise SegdistillError(report.errors[0] + more)
    result = fit(cfg, overwrite=args.overwrite, started=STARTED)
    if is_main_process():
        print(f"results: {result.run_dir}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .jobs.evaluate import evaluate_model
    from .runtime import set_threads

    cfg = load_config(args.config, list(args.overrides))
    set_threads(args.threads or cfg.threads)
    threshold = args.threshold if args.threshold is not None else cfg.predict.threshold
    evaluate_model(_model_file(args.model), args.data, out=args.out, threshold=threshold, device=args.device or cfg.device,
                   invert=args.invert, max_side=args.max_side, tta=args.tta, all_images=args.all, backend=args.backend,
                   precision=args.precision, store_threshold=args.store_threshold)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .html_report import write_run_report
    from .runtime import set_threads

    set_threads(args.threads or "auto")
    print(f"report: {write_run_report(args.run_dir, device=args.device or 'auto')}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .deploy.export import export_onnx
    from .runtime import set_threads

    set_threads(args.threads or "auto")
    if args.int8:
        from .deploy.quantize import export_int8

        if not args.calibrate:
            raise ConfigError("--int8 needs --calibrate DIR: images to take the activation ranges from")
        q = export_int8(_model_file(args.model), args.out, args.calibrate, args.calibration_images)
        print(f"exported: {q.path} (int8; masks agree with fp32 on {q.agreement:.2%} of the pixels of "
              f"{q.images} calibration image(s))")
        return 0
    result = export_onnx(_model_file(args.model), args.out, args.check)
    print(f"exported: {result.path} (max probability difference from PyTorch {result.max_abs_diff:.1e}, "
          f"checked on {result.checked_on})")
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    from .jobs.benchmark import benchmark_models
    from .runtime import set_threads

    set_threads(args.threads or "auto")
    run_dir = Path(args.models[0])
    if len(args.models) == 1 and (run_dir / "config.yaml").is_file() and (run_dir / "model.safetensors").is_file():
        from .jobs.benchmark import benchmark_run

        benchmark_run(run_dir, backend=args.backend, size=args.size, batch_sizes=args.batch_sizes, runs=args.runs,
                      data=args.data, json_out=args.json)
        return 0
    benchmark_models([_model_file(m) for m in args.models], backend=args.backend, size=args.size,
                     batch_sizes=args.batch_sizes, runs=args.runs, json_out=args.json, data=args.data)
    return 0


def cmd_import_keras(args: argparse.Namespace) -> int:
    from .deploy.keras_h5 import import_keras

    result = import_keras(args.model, args.out, args.max_side)
    pre = result.info.preprocess
    print(f"imported: {result.path} ({result.info.arch}, base {result.info.args['base']}, depth "
          f"{result.info.args['depth']}, {pre.channels}, {result.parameters / 1e6:.3f}M parameters)")
    return 0


def _max_side_value(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n != 0 and n < 16:
        raise argparse.ArgumentTypeError(f"'{text}' is not a max side (pixels >= 16, or 0 for the images' own size)")
    return n


def _model_file(path: str) -> str:
    """A model file; a run folder (what ``train`` prints) stands for its model.safetensors."""
    p = Path(path)
    if p.is_dir() and (p / "model.safetensors").is_file():
        log.info("%s is a run folder: using its model %s", p, p / "model.safetensors")
        return str(p / "model.safetensors")
    return path


def cmd_predict(args: argparse.Namespace) -> int:
    from .jobs.predict import run_predict

    return run_predict(_model_file(args.model), args.input, args.config, args.overrides, out=args.out, name=args.name,
                       overwrite=args.overwrite, threshold=args.threshold, probs=args.probs, save_overlay=args.overlay,
                       frames=args.frames, batch_size=args.batch_size, recursive=args.recursive, tile=args.tile,
                       tta=args.tta, device=args.device, backend=args.backend, precision=args.precision,
                       threads=args.threads)


def cmd_distill(args: argparse.Namespace) -> int:
    from .jobs.distill import distill

    if args.resume:
        _check_resume_alone(args)
        distill(None, resume=args.resume, started=STARTED)  # type: ignore[arg-type]
        return 0
    if args.teacher:
        args.teacher = _model_file(args.teacher)
    cfg = _config_from_args(args)
    result = distill(cfg, overwrite=args.overwrite, started=STARTED)
    print(f"results: {result.run_dir}")
    return 0


def cmd_data_synth(args: argparse.Namespace) -> int:
    from .data.synth import make_synthetic_dataset

    out = make_synthetic_dataset(args.out, args.count, args.size, args.seed, args.rgb, args.vary_size, args.overwrite)
    pairs = "pair" if args.count == 1 else "pairs"
    print(f"{args.count} image/mask {pairs} written to {out}/images and {out}/masks")
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from .data.check import check_data
    from .engine.planning import plan_run
    from .report import format_table

    overrides = [_override("data.root", args.dir)] + (["data.invert=true"] if args.invert else []) + list(args.overrides)
    cfg = load_config(args.config, overrides)
    report = check_data(cfg.data, cfg.seed)
    # What training would do: the crop it would plan (or was given) decides the crop warning.
    planned, plan = plan_run(cfg, report.train_fingerprint()) if report.train_read[0] else (cfg, None)
    report.warn_crops(planned.train.input_size)
    for w in report.warnings[: args.max_lines]:
        print(f"warning: {w}")
    if len(report.warnings) > args.max_lines:
        print(f"... and {len(report.warnings) - args.max_lines} more warnings")
    for e in report.errors[: args.max_lines]:
        print(f"error: {e}")
    if len(report.errors) > args.max_lines:
        print(f"... and {len(report.errors) - args.max_lines} more errors")
    if report.layout:  # discovery failed otherwise: the error says why, and a table would be blank
        rows = [{"check": k, "result": v} for k, v in report.summary().items()]
        print(format_table(rows, title=f"\nData check: {args.dir}"))
    if plan is not None and report.ok:
        rows = [{"setting": k, "planned": "native" if v is None else v, "why": plan["reasons"][k]}
                for k, v in plan["applied"].items()]
        print(format_table(rows, title="\nTraining plan (train.plan: auto; a configured key is kept)"))
    print("OK: training can use this data" if report.ok else "FAILED: training would stop on the errors above")
    return 0 if report.ok else 1


def cmd_data_list(args: argparse.Namespace) -> int:
    from .data.standard import list_datasets
    from .report import format_table

    rows = [{"name": d.name, "download": d.download_size, "licence": d.licence, "source": d.homepage, "about": d.title}
            for d in list_datasets()]
    print(format_table(rows))
    print("\n'segdistill data download NAME [DIR]' downloads one and converts it to images + 0/255 masks (docs/data.md)")
    return 0


def cmd_data_download(args: argparse.Namespace) -> int:
    from .data.standard import download_dataset

    result = download_dataset(args.name, args.dir, mirror=args.mirror, progress=not getattr(args, "quiet", False))
    if result.conversion is None:
        print(f"{result.path} already holds {result.dataset.name} (see its README.txt); nothing downloaded")
    else:
        print(f"{result.dataset.name}: {result.conversion.describe()} written to {result.path} "
              f"(licence: {result.dataset.licence}; mask semantics and sources in {result.path / 'README.txt'})")
    return 0


def cmd_config_init(args: argparse.Namespace) -> int:
    from .fileio import write_text

    text = default_config_yaml()
    if args.path in (None, "-"):
        sys.stdout.write(text)
        return 0
    path = Path(args.path)
    if path.exists() and not args.force:
        raise ConfigError(f"{path}: already exists (use --force to overwrite)")
    write_text(path, text)
    print(f"default config written to {path}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from .models import create_model, list_models, model_description, resolved_args
    from .report import format_table

    rows = []
    for name in list_models():
        m = create_model(name)
        args = resolved_args(name)
        rows.append({"model": name, "width (base)": args.get("base", ""), "depth": args.get("depth", ""),
                     "params (1 channel)": f"{sum(p.numel() for p in m.parameters()) / 1e6:.3f}M",
                     "about": model_description(name)})
    print(format_table(rows))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .jobs.demo import run_demo

    overrides = list(args.overrides) + ([_override("threads", args.threads)] if args.threads else [])
    run_demo(Path(args.dir), teacher_epochs=args.epochs, student_epochs=args.student_epochs, overrides=overrides,
             started=STARTED)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segdistill", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"segdistill {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = _Subcommands(parser.add_subparsers(dest="command", required=True))

    p = sub.add_parser("train", help="train a U-Net on images + masks")
    _add_config_args(p)
    p.add_argument("--data", help="data folder (images/+masks/, train/+val/, or Keras layout)")
    p.add_argument("--model", help="registered model name (see 'segdistill models')")
    p.add_argument("--input-size", type=int, help="training crop size (train.input_size, default 256)")
    p.add_argument("--invert", action="store_true", default=None, help="foreground = mask zeros")
    p.add_argument("--unlabelled", metavar="DIR", help="folder of unlabelled images to self-train on (semi.images)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    p.add_argument("--overwrite", action="store_true", help="reuse runs/NAME instead of runs/NAME-2")
    p.add_argument("--skip-check", action="store_true", help="skip the data check before training")
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("evaluate", help="metrics of a model on labelled data")
    p.add_argument("model", help="model file: .safetensors (or a run folder: its model.safetensors), or an exported .onnx")
    p.add_argument("--data", required=True, help="data folder with images and masks")
    p.add_argument("--out", help="per-image CSV (default: <model folder>/eval_<data name>.csv)")
    p.add_argument("--config", "-c", help="YAML config file (supplies device, threads, predict.threshold)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set predict.threshold=0.4 (repeatable)")
    p.add_argument("--all", action="store_true",
                   help="score every image; default: of an images/+masks/ folder, only the validation images "
                        "the model's training held out (the val part of train/+val/ and Keras layouts)")
    p.add_argument("--threshold", type=float, help="probability threshold (default: the model's own, usually 0.5)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N (default auto)")
    p.add_argument("--invert", action=argparse.BooleanOptionalAction, default=None,
                   help="override the model's invert setting (--no-invert turns it off)")
    p.add_argument("--max-side", type=int, default=None, help="override the model's max_side")
    p.add_argument("--tta", type=int, choices=[1, 2, 4, 8], default=None,
                   help="test-time augmentation views (default: the model's own, train.tta)")
    p.add_argument("--store-threshold", action="store_true",
                   help="store the threshold with the best IoU on these images in the model file (old -> new)")
    _add_backend_arg(p)
    _add_threads_arg(p)
    p.set_defaults(fn=cmd_evaluate)

    p = sub.add_parser("report", help="(re)write a run folder's report.html")
    p.add_argument("run_dir", help="run folder (what train and distill print)")
    p.add_argument("--device", help="where the best and worst images are predicted again (default auto)")
    _add_threads_arg(p)
    p.set_defaults(fn=cmd_report)

    p = sub.add_parser("predict", help="masks for a file, folder or glob")
    p.add_argument("model", help="model file: .safetensors (or a run folder: its model.safetensors), or an exported .onnx")
    p.add_argument("input", nargs="+", help="image or video files, folders or globs (all go to one output folder)")
    p.add_argument("--config", "-c", help="YAML config file (its predict section)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set predict.tile_overlap=0.5 (repeatable)")
    p.add_argument("--out", help="output root (default predictions/)")
    p.add_argument("--name", help="subfolder name (default: the input's name; NAME-2, -3... when it holds files)")
    p.add_argument("--overwrite", action="store_true",
                   help="reuse predictions/NAME after removing its previous masks, probs and overlays")
    p.add_argument("--threshold", type=float, help="probability threshold (default: the model's own, usually 0.5)")
    p.add_argument("--probs", action="store_true", help="also write 8-bit probability maps")
    p.add_argument("--overlay", action="store_true", help="also write overlays")
    p.add_argument("--frames", action="store_true", help="videos: also write each frame's mask as PNG (in NAME/)")
    p.add_argument("--batch-size", type=int, help="images (with --tile: tiles) per forward pass (default 4)")
    p.add_argument("--recursive", "-r", action="store_true", help="also images in subfolders")
    p.add_argument("--tile", type=int, help="predict large images in tiles of this size")
    p.add_argument("--tta", type=int, choices=[1, 2, 4, 8], default=None,
                   help="test-time augmentation views (default: the model's own, train.tta; 1 = off)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N (default auto)")
    _add_backend_arg(p)
    _add_threads_arg(p)
    p.set_defaults(fn=cmd_predict)

    p = sub.add_parser("export", help="export a model file for another runtime (ONNX), checked against PyTorch")
    p.add_argument("model", help="model .safetensors file (or a run folder: its model.safetensors)")
    p.add_argument("--format", choices=["onnx"], default="onnx", help="onnx (default)")
    p.add_argument("--out", help="output file (default: beside the model, MODEL.onnx)")
    p.add_argument("--check", metavar="DIR",
                   help="images to compare the export with PyTorch on (default: the model's training data)")
    p.add_argument("--int8", action="store_true",
                   help="static int8 quantization (QDQ; ONNX Runtime and OpenVINO), calibrated on --calibrate")
    p.add_argument("--calibrate", metavar="DIR", help="images for the int8 activation ranges (real images of the task)")
    p.add_argument("--calibration-images", type=int, default=32, metavar="N", help="at most N of them (default 32)")
    _add_threads_arg(p)
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("benchmark", help="how fast models run here: latency, throughput, memory, GFLOP/s per backend")
    p.add_argument("models", nargs="+", help="model files (.safetensors, .onnx, run folders); the first is the "
                                             "reference for speed-ups (e.g. the teacher, then its students). One run "
                                             "folder alone: its models (a distillation's teacher, student and twin), "
                                             "IoU on its data, saved as RUN/speed.json and in its report.html")
    p.add_argument("--backend", choices=["all", "auto", "torch", "onnxruntime", "openvino"], default="all",
                   help="all (default): every installed backend and precision, marking what auto picks")
    p.add_argument("--size", type=int, nargs="+", default=None, metavar="PX",
                   help="input height [width] (default: the model's working size, else 512)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8], metavar="B",
                   help="batch sizes tried for throughput (default 1 2 4 8)")
    p.add_argument("--runs", type=int, default=20, help="timed runs per backend at batch 1 (default 20)")
    p.add_argument("--data", help="labelled data: also each backend's IoU on it (evaluate; default for a run "
                                  "folder: its labelled data)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    _add_threads_arg(p)
    p.set_defaults(fn=cmd_benchmark)
    p = sub.add_parser("import-keras", help="convert a U-Net .h5 of the original Keras tool into a model file")
    p.add_argument("model", help="Keras .h5 model file (model.save of the original tool's train.py/distill.py)")
    p.add_argument("out", nargs="?", help="model file to write (default: beside it, MODEL.safetensors)")
    p.add_argument("--max-side", type=_max_side_value, metavar="PX",
                   help="longer image side the model works at (default: the Keras model's input size, "
                        "where fixed; 0: the images' own size)")
    p.set_defaults(fn=cmd_import_keras)

    p = sub.add_parser("distill", help="distil a trained teacher into a small student")
    _add_config_args(p, student=True)
    p.add_argument("--teacher", help="teacher model file (or a run folder: its model.safetensors)")
    p.add_argument("--images", help="folder of transfer images or videos (labels not needed)")
    p.add_argument("--data", help="optional labelled data for validation (and alpha)")
    p.add_argument("--student", help="student model name")
    p.add_argument("--targets", choices=["cached", "online"],
                   help="cached: the teacher predicts each image once (default); online: on every augmented batch")
    p.add_argument("--baseline", action="store_true", default=None, help="also train the student from labels alone")
    p.add_argument("--loss", dest="kd_loss", choices=["soft_bce", "soft_bce+dice", "cwd", "soft_bce+cwd"], help="distillation loss")
    p.add_argument("--temperature", type=float, help="soft-target temperature T")
    p.add_argument("--alpha", type=float, help="weight of the supervised loss on labels (0-1)")
    p.add_argument("--search", metavar="keep=F|latency=Nms",
                   help="find the student: the fastest keeping share F of the teacher's IoU, or the most accurate "
                        "under N ms here (distill.search; docs/distillation.md)")
    p.add_argument("--search-budget", type=float, metavar="MINUTES",
                   help="minutes for the whole search (default: about twice one full distillation)")
    p.add_argument("--input-size", type=int, help="training crop size (train.input_size, default 256)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    p.add_argument("--overwrite", action="store_true", help="reuse runs/NAME instead of runs/NAME-2")
    p.set_defaults(fn=cmd_distill)

    data = _Subcommands(sub.add_parser("data", help="data tools").add_subparsers(dest="data_command", required=True))
    p = data.add_parser("synth", help="write a procedural data set")
    p.add_argument("out", help="folder to write OUT/images and OUT/masks into")
    p.add_argument("--count", type=int, default=64, help="image/mask pairs (default 64)")
    p.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
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
    p.add_argument("--max-lines", type=int, default=20, help="warnings and errors shown of each (default 20)")
    p.set_defaults(fn=cmd_data_check)
    p = data.add_parser("list", help="standard data sets that 'data download' fetches")
    p.set_defaults(fn=cmd_data_list)
    p = data.add_parser("download", help="download a standard data set and convert it to images + masks")
    p.add_argument("name", help="data set name ('segdistill data list' shows them)")
    p.add_argument("dir", nargs="?", help="folder to write (default: ./NAME); an interrupted download resumes here")
    p.add_argument("--mirror", metavar="URL",
                   help="base URL (or file:// folder) holding URL/NAME/FILE instead of the official sources "
                        "(default $SEGDISTILL_DATA_MIRROR)")
    p.set_defaults(fn=cmd_data_download)

    cfg = _Subcommands(sub.add_parser("config", help="config tools").add_subparsers(dest="config_command", required=True))
    p = cfg.add_parser("init", help="write a commented default config")
    p.add_argument("path", nargs="?", help="file to write (default: print)")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.set_defaults(fn=cmd_config_init)

    p = sub.add_parser("models", help="list registered models")
    p.set_defaults(fn=cmd_models)

    p = sub.add_parser("demo", help="built-in data -> train -> evaluate -> predict -> distill")
    p.add_argument("--dir", default="runs/demo", help="where the demo writes everything")
    p.add_argument("--epochs", type=int, default=8, help="teacher epochs (default 8)")
    p.add_argument("--student-epochs", type=int, default=24, help="student epochs, distilled and labels-only (default 24)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key in every stage, e.g. --set train.precision=fp32")
    _add_threads_arg(p)
    p.set_defaults(fn=cmd_demo)
    return parser


def _add_backend_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=["auto", "torch", "onnxruntime", "openvino"], default="auto",
                   help="inference backend; auto: the fastest measured on this machine (cached; measured for jobs of "
                        "32+ images), else torch for a .safetensors model and onnxruntime for an .onnx")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="inference precision; auto: measured with --backend auto, else fp32 (an int8 export runs int8)")


class _Subcommands:
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


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """parse_args, except that arguments the subcommand does not know are reported by the
    subcommand (its usage), with the closest of its flags."""
    import difflib

    args, extra = parser.parse_known_args(argv)
    if extra:
        own: argparse.ArgumentParser = getattr(args, "parser", parser)
        flags = [s for a in own._actions for s in a.option_strings if s.startswith("--")]
        unknown = next((e for e in extra if e.startswith("-")), None)
        close = difflib.get_close_matches(unknown.split("=")[0], flags, n=1) if unknown else []
        hint = f" (did you mean {close[0]}?)" if close else ""
        own.error(f"unrecognized arguments: {' '.join(extra)}{hint}")
    return args


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = _parse(parser, argv)
    from .distributed import is_main_process

    level = logging.WARNING if args.quiet or not is_main_process() else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr, force=True)
    try:
        return int(args.fn(args) or 0)
    except SegdistillError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # full disk, permissions, a file where a folder should be, ...
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        resumable = args.fn in (cmd_train, cmd_distill)
        more = "; completed epochs are saved (resume with --resume RUN_DIR)" if resumable else ""
        if args.fn is cmd_data_download:
            more = "; run the same command again to resume the download"
        print("interrupted" + more, file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
