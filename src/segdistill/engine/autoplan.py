"""``train.plan: auto``: read the training masks' fingerprint, plan the run (data/plan.py), and
write the plan into the config wherever the user set nothing."""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any

from ..checkpoint import read_model_info
from ..config import Config, config_from_dict, config_to_dict, given_keys
from ..data.check import CheckReport, check_pair
from ..data.discovery import discover
from ..data.fingerprint import Fingerprint, fingerprint
from ..data.plan import Plan, apply_plan, make_plan
from ..distributed import is_main_process
from ..models.unet import STEM_SCALE

log = logging.getLogger("segdistill")

def train_fingerprint(cfg: Config) -> Fingerprint:
    """The fingerprint of the training split's masks (the validation images stay unseen)."""
    report = CheckReport()
    for pair in discover(cfg.data, cfg.seed).train:
        check_pair(pair, cfg.data.invert, report)
    return fingerprint(report.mask_stats, report.sizes, report.channels, report.colourful)


def plan_run(cfg: Config, fp: Fingerprint | None = None) -> tuple[Config, dict[str, Any] | None]:
    """``cfg`` with the plan written in (keys the user set are kept) and the record of it for
    plan.json and the model file; ``(cfg, None)`` with ``train.plan: off``."""
    if cfg.train.plan == "off":
        return cfg, None
    fp = fp if fp is not None else train_fingerprint(cfg)
    return _apply(cfg, fp, make_plan(fp, cfg.train.time_budget, encoder=not _chosen(cfg, "model")), "model", skip=set())


def _chosen(cfg: Config, model: str) -> bool:
    """Whether the user chose the architecture at ``model`` (its name or any argument): the plan
    then never swaps it for an encoder's."""
    return any(k == f"{model}.name" or k.startswith(f"{model}.args.") for k in given_keys(cfg))


def plan_student(cfg: Config, transfer_images: int) -> tuple[Config, dict[str, Any] | None]:
    """The distillation's plan: from the fingerprint in the teacher's model file (else from the
    labelled data, when given) and the number of transfer images. The student inherits the
    teacher's working resolution (its preprocessing), and its width is the compression the user
    chose (distill.student): the plan sets its depth, crop, flips and length."""
    if cfg.train.plan == "off":
        return cfg, None
    saved = read_model_info(Path(cfg.distill.teacher)).summary.get("plan")  # type: ignore[arg-type]
    if saved is not None:
        fp = Fingerprint.from_dict(saved["fingerprint"])
    elif cfg.data.root is not None or cfg.data.train_images is not None:
        fp = train_fingerprint(cfg)
    else:
        log.info("no plan for the student: the teacher's file has no fingerprint and no labelled data was given")
        return cfg, None
    # The search's grid is the unet family (its first candidate is the configured student).
    encoder = not cfg.distill.search and not _chosen(cfg, "distill.student")
    plan = make_plan(dataclasses.replace(fp, images=transfer_images), cfg.train.time_budget, student=True, encoder=encoder)
    return _apply(cfg, fp, plan, "distill.student", skip={"data.max_side", "distill.student.args.base"})


def _apply(cfg: Config, fp: Fingerprint, plan: Plan, model: str, skip: set[str]) -> tuple[Config, dict[str, Any]]:
    settings = {k: v for k, v in plan.settings(f"{model}.args").items() if k not in skip}
    spec = cfg.model if model == "model" else cfg.distill.student
    stem_levels = int(math.log2(STEM_SCALE.get(str(spec.args.get("stem", "none")), 1)))
    if stem_levels and f"{model}.args.depth" in settings:  # the plan's depth counts every halving of the resolution
        depth, why = settings[f"{model}.args.depth"]
        settings[f"{model}.args.depth"] = (max(1, depth - stem_levels), f"{why}; the space-to-depth stem is {'one halving' if stem_levels == 1 else f'{stem_levels} halvings'}")
    given = given_keys(cfg)
    if spec.name != "unet":
        given |= {f"{model}.args.base", f"{model}.args.depth"}  # the unet's arguments
    values, applied = apply_plan(config_to_dict(cfg), settings, given)
    if f"{model}.name" in applied and plan.encoder is not None:  # another architecture: only its own arguments
        node = values
        for part in model.split("."):
            node = node[part]
        node["args"] = dict(plan.encoder)
    planned = config_from_dict(values)
    planned._given = getattr(cfg, "_given", set())  # type: ignore[attr-defined]
    record = {"fingerprint": {**fp.to_dict(), "shown": fp.rows()}, "plan": plan.to_dict(),
              "applied": {k: settings[k][0] for k in applied}, "kept": [k for k in settings if k not in applied],
              "reasons": {k: settings[k][1] for k in applied}}
    return planned, record


def log_plan(record: dict[str, Any] | None) -> None:
    """The fingerprint and the plan, one line per planned setting with its reason (each reason
    once), then the keys the config fixed (main process; nothing with ``train.plan: off``)."""
    if record is None or not is_main_process():
        return
    log.info("data fingerprint: %s", "; ".join(f"{k} {v}" for k, v in record["fingerprint"]["shown"].items()))
    lines, said = [], set()
    for key, value in record["applied"].items():
        why = record["reasons"][key]
        lines.append(f"  {key} = {value}" + (f": {why}" if why not in said else ""))
        said.add(why)
    if record["kept"]:
        lines.append(f"  kept as configured: {', '.join(record['kept'])}")
    log.info("planned from the data:\n%s", "\n".join(lines))
