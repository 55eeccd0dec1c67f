"""The subcommands: each turns its parsed flags into settings (a Config, paths) and calls one job
(segdistill/jobs/); no logic of its own."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..config import Config, ConfigError, load_config
from ..jobs import model_file
from ..version import STARTED

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
    from ..jobs import train

    if args.resume:
        _check_resume_alone(args)
        train.resume(args.resume, started=STARTED)
        return 0
    train.train(_config_from_args(args), overwrite=args.overwrite, skip_check=args.skip_check, started=STARTED)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..jobs.evaluate import run_evaluate

    run_evaluate(model_file(args.model), args.data, args.config, args.overrides, threads=args.threads,
                 threshold=args.threshold, device=args.device, out=args.out, invert=args.invert,
                 max_side=args.max_side, tta=args.tta, all_images=args.all, backend=args.backend,
                 precision=args.precision, store_threshold=args.store_threshold)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from ..jobs.report import report

    report(args.run_dir, device=args.device, threads=args.threads)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ..jobs.export import export

    export(model_file(args.model), args.out, args.check, int8=args.int8, calibrate=args.calibrate,
           calibration_images=args.calibration_images, threads=args.threads, fmt=args.format)
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    from ..jobs.benchmark import run_benchmark

    run_benchmark(args.models, backend=args.backend, size=args.size, batch_sizes=args.batch_sizes, runs=args.runs,
                  data=args.data, json_out=args.json, threads=args.threads)
    return 0


def cmd_import_keras(args: argparse.Namespace) -> int:
    from ..jobs.import_keras import import_keras

    import_keras(args.model, args.out, args.max_side)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from ..jobs.predict import run_predict

    return run_predict(model_file(args.model), args.input, args.config, args.overrides, out=args.out, name=args.name,
                       overwrite=args.overwrite, threshold=args.threshold, probs=args.probs, save_overlay=args.overlay,
                       frames=args.frames, batch_size=args.batch_size, recursive=args.recursive, tile=args.tile,
                       tta=args.tta, device=args.device, backend=args.backend, precision=args.precision,
                       threads=args.threads)


def cmd_distill(args: argparse.Namespace) -> int:
    from ..jobs.distill import distill

    if args.resume:
        _check_resume_alone(args)
        distill(None, resume=args.resume, started=STARTED)  # type: ignore[arg-type]
        return 0
    if args.teacher:
        args.teacher = model_file(args.teacher)
    result = distill(_config_from_args(args), overwrite=args.overwrite, started=STARTED)
    print(f"results: {result.run_dir}")
    return 0


def cmd_data_synth(args: argparse.Namespace) -> int:
    from ..jobs import data

    data.synth(args.out, args.count, args.size, args.seed, args.rgb, args.vary_size, args.overwrite)
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from ..jobs import data

    return data.check(args.dir, args.config, args.overrides, invert=args.invert, max_lines=args.max_lines)


def cmd_data_list(args: argparse.Namespace) -> int:
    from ..jobs import data

    data.list_standard()
    return 0


def cmd_data_download(args: argparse.Namespace) -> int:
    from ..jobs import data

    data.download(args.name, args.dir, mirror=args.mirror, progress=not getattr(args, "quiet", False))
    return 0


def cmd_config_init(args: argparse.Namespace) -> int:
    from ..jobs.config_init import config_init

    config_init(args.path, args.force, args.recipe)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from ..jobs.models import models

    models()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ..jobs.demo import run_demo

    overrides = list(args.overrides) + ([_override("threads", args.threads)] if args.threads else [])
    run_demo(Path(args.dir), teacher_epochs=args.epochs, student_epochs=args.student_epochs, overrides=overrides,
             started=STARTED)
    return 0
