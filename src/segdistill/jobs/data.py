"""``segdistill data synth|check|list|download``: write, check and fetch data sets."""

from __future__ import annotations

import json

from ..config import load_config
from ..data.check import check_data
from ..data.standard import download_dataset, list_datasets
from ..data.synth import make_synthetic_dataset
from ..engine.autoplan import plan_run
from ..reports.tables import format_table


def synth(out: str, count: int = 64, size: int = 128, seed: int = 0, rgb: bool = False, vary_size: bool = False,
          overwrite: bool = False) -> None:
    """Write ``count`` procedural image/mask pairs into ``out``/images and ``out``/masks."""
    folder = make_synthetic_dataset(out, count, size, seed, rgb, vary_size, overwrite)
    pairs = "pair" if count == 1 else "pairs"
    print(f"{count} image/mask {pairs} written to {folder}/images and {folder}/masks")


def check(folder: str, config: str | None = None, overrides: list[str] = (), invert: bool = False,  # type: ignore[assignment]
          max_lines: int = 20) -> int:
    """Print the data check of ``folder`` and the training plan; 0 when training can use the data."""
    root = f"data.root={json.dumps(folder, ensure_ascii=False)}"
    cfg = load_config(config, [root] + (["data.invert=true"] if invert else []) + list(overrides))
    report = check_data(cfg.data, cfg.seed)
    # What training would do: the crop it would plan (or was given) decides the crop warning.
    planned, plan = plan_run(cfg, report.train_fingerprint()) if report.train_read[0] else (cfg, None)
    report.warn_crops(planned.train.input_size)
    _print_capped("warning", report.warnings, max_lines)
    _print_capped("error", report.errors, max_lines)
    if report.layout:  # discovery failed otherwise: the error says why, and a table would be blank
        rows = [{"check": k, "result": v} for k, v in report.summary().items()]
        print(format_table(rows, title=f"\nData check: {folder}"))
    if plan is not None and report.ok:
        rows = [{"setting": k, "planned": "native" if v is None else v, "why": plan["reasons"][k]}
                for k, v in plan["applied"].items()]
        print(format_table(rows, title="\nTraining plan (train.plan: auto; a configured key is kept)"))
    print("OK: training can use this data" if report.ok else "FAILED: training would stop on the errors above")
    return 0 if report.ok else 1


def _print_capped(kind: str, lines: list[str], max_lines: int) -> None:
    for line in lines[:max_lines]:
        print(f"{kind}: {line}")
    if len(lines) > max_lines:
        print(f"... and {len(lines) - max_lines} more {kind}s")


def list_standard() -> None:
    """Print the standard data sets that ``data download`` fetches."""
    rows = [{"name": d.name, "download": d.download_size, "licence": d.licence, "source": d.homepage, "about": d.title}
            for d in list_datasets()]
    print(format_table(rows))
    print("\n'segdistill data download NAME [DIR]' downloads one and converts it to images + 0/255 masks (docs/data.md)")


def download(name: str, folder: str | None = None, mirror: str | None = None, progress: bool = True) -> None:
    """Download the standard data set ``name`` into ``folder`` (default ./NAME) and convert it."""
    result = download_dataset(name, folder, mirror=mirror, progress=progress)
    if result.conversion is None:
        print(f"{result.path} already holds {result.dataset.name} (see its README.txt); nothing downloaded")
    else:
        print(f"{result.dataset.name}: {result.conversion.describe()} written to {result.path} "
              f"(licence: {result.dataset.licence}; mask semantics and sources in {result.path / 'README.txt'})")
