"""report.html (train, distill, evaluate, ``segdistill report``), the threshold sweep and
``evaluate --store-threshold``; the page opened in headless Chromium."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from segdistill.checkpoint import read_model_info, store_threshold
from segdistill.cli import main
from segdistill.errors import ModelFileError
from segdistill.metrics import Counts, Sweep, best_threshold, confusion, scores, threshold_sweep

from .helpers import HANG_GUARD_S

# The threshold sweep --------------------------------------------------------------------------------


def test_threshold_sweep_known_values():
    probs = torch.tensor([0.1, 0.4, 0.5, 0.6, 0.9])
    target = torch.tensor([0, 1, 1, 0, 1])
    thresholds = torch.tensor([0.0, 0.3, 0.5, 0.8, 0.95], dtype=torch.float64)
    c = threshold_sweep(probs, target, thresholds)
    # foreground is probs > t: a probability equal to the threshold (0.5) is background
    assert c.tp.tolist() == [3, 3, 1, 1, 0]
    assert c.fp.tolist() == [2, 1, 1, 0, 0]
    assert c.fn.tolist() == [0, 0, 2, 2, 3]
    assert c.tn.tolist() == [0, 1, 1, 2, 2]
    iou = scores(c)["iou"].tolist()
    assert iou == pytest.approx([3 / 5, 3 / 4, 1 / 4, 1 / 3, 0.0])
    assert best_threshold(thresholds, c) == (0.3, pytest.approx(0.75))


def test_best_threshold_prefers_the_one_nearest_one_half_among_equals():
    thresholds = torch.tensor([0.2, 0.45, 0.7, 0.9], dtype=torch.float64)
    counts = Counts(*(torch.tensor(v, dtype=torch.float64) for v in ([1, 1, 1, 0], [1, 1, 1, 0], [0, 0, 0, 1], [0] * 4)))
    assert best_threshold(thresholds, counts) == (0.45, 0.5)  # IoU 0.5 at 0.2, 0.45 and 0.7


def test_threshold_sweep_equals_one_confusion_per_threshold_and_adds_up():
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(3, 1, 17, 13, generator=g)
    target = torch.rand(3, 1, 17, 13, generator=g) > 0.6
    thresholds = torch.arange(1, 100, dtype=torch.float64) / 100
    c = threshold_sweep(probs, target, thresholds)
    for k in (0, 24, 49, 73, 98):
        one = confusion(probs > float(thresholds[k]), target).sum()
        assert [float(getattr(one, n)[0]) for n in ("tp", "fp", "fn", "tn")] == \
               [float(getattr(c, n)[k]) for n in ("tp", "fp", "fn", "tn")]
    parts = threshold_sweep(probs[:1], target[:1], thresholds).add(threshold_sweep(probs[1:], target[1:], thresholds))
    assert torch.equal(parts.tp, c.tp) and torch.equal(parts.fp, c.fp) and torch.equal(parts.fn, c.fn)
    again = Sweep.from_rows([{k: str(v) for k, v in r.items()} for r in Sweep(thresholds, c).rows()])
    assert torch.equal(again.counts.tp, c.tp) and torch.allclose(again.thresholds, thresholds)
    with pytest.raises(ValueError, match="ascending"):
        threshold_sweep(probs, target, thresholds.flip(0))


# What a run writes ----------------------------------------------------------------------------------


def _self_contained(page: str) -> None:
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "<script" not in page and "<link" not in page
    assert not re.search(r"""(src|href)=["'](?!data:|#)""", page), "a reference to something outside the page"
    assert "Content-Security-Policy" in page


def test_train_writes_report_and_per_image_scores(tiny_model):
    run = tiny_model.parent
    page = (run / "report.html").read_text(encoding="utf-8")
    _self_contained(page)
    for section in ("metrics", "curves", "thresholds", "per-image", "cases", "model"):
        assert f'<section id="{section}">' in page
    assert page.count("data:image/png;base64,") >= 4 + 3  # curves, threshold plots, panels of an image
    assert "Not shown" not in page  # nothing optional was missing
    assert "prediction: IoU" in page and "ground truth" in page
    rows = list(csv.DictReader(open(run / "per_image.csv", encoding="utf-8")))
    assert len(rows) == read_model_info(tiny_model).summary["val_images"]
    assert all(Path(r["image_file"]).is_absolute() and Path(r["image_file"]).is_file() for r in rows)
    sweep = list(csv.DictReader(open(run / "sweep.csv", encoding="utf-8")))
    at_half = next(r for r in sweep if float(r["threshold"]) == 0.5)
    # the sweep at the model's threshold is the validation's own pooled IoU
    assert float(at_half["iou"]) == pytest.approx(json.loads((run / "metrics.json").read_text())["iou"], abs=1e-6)
    assert json.loads((run / "run.json").read_text())["compute"].startswith("cpu")


def test_report_command_rebuilds_a_run_folder(tiny_model, tmp_path, monkeypatch, capsys):
    run = tmp_path / "copy"
    shutil.copytree(tiny_model.parent, run)
    (run / "report.html").unlink()
    monkeypatch.chdir(tmp_path / "..")  # another working directory than training's
    assert main(["report", str(run)]) == 0
    assert capsys.readouterr().out.strip() == f"report: {run / 'report.html'}"
    page = (run / "report.html").read_text(encoding="utf-8")
    assert "prediction: IoU" in page and "Not shown" not in page
    # optional files missing (an older run): their sections say so, the rest is there
    for name in ("per_image.csv", "sweep.csv", "run.json", "plan.json"):
        (run / name).unlink()
    assert main(["-q", "report", str(run)]) == 0
    page = (run / "report.html").read_text(encoding="utf-8")
    assert "this run folder has no per_image.csv" in page and "this run folder has no sweep.csv" in page
    assert "run.json missing" in page and '<section id="curves">' in page
    assert main(["-q", "report", str(tmp_path)]) == 2
    assert "not a run folder (no config.yaml)" in capsys.readouterr().err


def test_the_page_is_made_of_results_and_runs_no_model(tiny_model, distilled, tmp_path, monkeypatch):
    # reports/ takes results: with every model call and every timing refused, both a training run's
    # and a distillation's page are still written from the folder's files and what the job hands over.
    from segdistill import measure
    from segdistill.reports.html import Case
    from segdistill.reports.pages import read_run, write_run_report

    def refuse(*args, **kwargs):
        raise AssertionError("the report ran a model")

    monkeypatch.setattr(torch.nn.Module, "__call__", refuse)
    monkeypatch.setattr(measure, "model_latency", refuse)
    monkeypatch.setattr(measure, "time_backends", refuse)
    panel = np.zeros((4, 4, 3), np.uint8)
    for folder, cost in ((tiny_model.parent, {"params": 123, "gflops": 0.5, "cpu_ms": 1.25, "how": "given"}),
                         (distilled, None)):
        run = tmp_path / folder.name
        shutil.copytree(folder, run)
        page = write_run_report(read_run(run), [Case("worst: x.png (IoU 0.500)", [("image", panel)])], cost).read_text()
        assert "worst: x.png (IoU 0.500)" in page and "Not shown" not in page
    assert "1.25 ms (given)" in (tmp_path / tiny_model.parent.name / "report.html").read_text()


def test_evaluate_writes_report_and_stores_the_best_threshold(tiny_model, synth_dir, tmp_path, capsys):
    model = tmp_path / "m.safetensors"
    shutil.copy(tiny_model, model)
    assert store_threshold(model, 0.93) == 0.5
    assert main(["evaluate", str(model), "--data", str(synth_dir), "--out", str(tmp_path / "e.csv"), "--store-threshold"]) == 0
    err = capsys.readouterr().err
    summary = json.loads((tmp_path / "e.json").read_text())
    best = summary["best_threshold"]
    assert f"threshold with the best IoU on these images: {best:g}" in err
    assert f"threshold stored in {model}: 0.93 -> {best:g}" in err
    assert summary["threshold"] == 0.93  # scored at the model's threshold of the time
    assert read_model_info(model).threshold == best
    page = (tmp_path / "e.html").read_text(encoding="utf-8")
    _self_contained(page)
    assert "precision-recall" in page or "precision against recall" in page
    assert len(list(csv.DictReader(open(tmp_path / "e_thresholds.csv")))) == 99


def test_store_threshold_keeps_weights_and_metadata(tiny_model, tmp_path):
    model = tmp_path / "m.safetensors"
    shutil.copy(tiny_model, model)
    before = read_model_info(model)
    assert store_threshold(model, 0.37) == before.threshold
    after = read_model_info(model)
    assert after.threshold == 0.37
    assert (after.arch, after.args, after.summary, after.preprocess, after.tta) == \
           (before.arch, before.args, before.summary, before.preprocess, before.tta)
    with safe_open(str(tiny_model), "pt") as a, safe_open(str(model), "pt") as b:
        assert sorted(a.keys()) == sorted(b.keys())
        assert all(torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in a.keys())
        assert a.metadata()["format"] == b.metadata()["format"]
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # written atomically: no temporary left
    with pytest.raises(ModelFileError, match="export again"):
        store_threshold(tmp_path / "m.onnx", 0.4)
    with pytest.raises(ModelFileError, match="between 0 and 1"):
        store_threshold(model, 1.5)


DISTILL = ["--epochs", "2", "--batch-size", "4", "--input-size", "32", "--set", "train.samples_per_epoch=8",
           "--set", "distill.student.args.base=2", "--set", "distill.student.args.depth=2"]


@pytest.fixture(scope="module")
def distilled(tiny_model, synth_dir, tmp_path_factory) -> Path:
    """A distillation with labels and the labels-only twin (seconds)."""
    out = tmp_path_factory.mktemp("distill")
    assert main(["-q", "distill", "--teacher", str(tiny_model), "--images", str(synth_dir / "images"), "--data",
                 str(synth_dir), "--baseline", "--output-dir", str(out), "--name", "d", *DISTILL]) == 0
    return out / "d"


def test_distill_report_sets_teacher_student_and_twin_side_by_side(distilled):
    page = (distilled / "report.html").read_text(encoding="utf-8")
    _self_contained(page)
    for label in ("teacher: IoU", "student, distilled: IoU", "student, labels only: IoU", "ground truth"):
        assert label in page
    assert "distilled from" in page and "compression" in page
    assert (distilled / "baseline" / "report.html").is_file()  # the twin is a run of its own
    assert (distilled / "per_image.csv").is_file() and (distilled / "metrics.json").is_file()


def test_distill_report_without_labels_uses_the_teacher_as_reference(tiny_model, synth_dir, tmp_path):
    assert main(["-q", "distill", "--teacher", str(tiny_model), "--images", str(synth_dir / "images"),
                 "--output-dir", str(tmp_path), "--name", "u", *DISTILL]) == 0
    page = (tmp_path / "u" / "report.html").read_text(encoding="utf-8")
    assert "teacher (reference)" in page and "student, distilled: IoU" in page
    assert "against the teacher's masks" in page and "ground truth" not in page


def test_benchmark_of_a_run_folder_puts_the_tradeoff_in_its_report(distilled, tmp_path, monkeypatch):
    """``segdistill benchmark RUN_DIR``: the teacher, student and twin on each backend, with the IoU
    each scores on the run's validation images, in speed.json and as the report's Speed section."""
    monkeypatch.setenv("SEGDISTILL_CACHE", str(tmp_path / "cache"))
    assert main(["-q", "benchmark", str(distilled), "--backend", "torch", "--runs", "2",
                 "--batch-sizes", "1", "--json", str(tmp_path / "copy.json")]) == 0
    doc = json.loads((distilled / "speed.json").read_text(encoding="utf-8"))
    assert list(doc["labels"].values()) == ["teacher", "student", "student, labels only"]
    assert json.loads((tmp_path / "copy.json").read_text(encoding="utf-8")) == doc
    report = json.loads((distilled / "distill_report.json").read_text(encoding="utf-8"))
    student = str(distilled / "model.safetensors")
    fp32 = next(e for e in doc["entries"] if e["model"] == student and e["precision"] == "fp32" and not e["channels_last"])
    # the same validation images as the distillation scored: the same IoU
    assert fp32["iou"] == pytest.approx(report["student"]["val_iou"], abs=1e-4)
    assert all(e["iou"] is not None for e in doc["entries"] if e["p50_ms"] is not None)
    page = (distilled / "report.html").read_text(encoding="utf-8")
    speed = page[page.index('<section id="speed">'):]
    speed = speed[:speed.index("</section>")]
    assert "data:image/png;base64," in speed and "student, labels only" in speed and "IoU against latency" in speed
    # One latency per model in the run folder: measured once (latency.json), stated alike by
    # distill_report.json, speed.json and report.html, with how it was measured.
    record = json.loads((distilled / "latency.json").read_text(encoding="utf-8"))
    assert len(record) == 2  # teacher and student (the twin is the student's architecture)
    for who, path in (("teacher", report["teacher"]["file"]), ("student", student)):
        lat = report[who]["latency"]
        assert lat in record.values() and doc["latency"][path] == lat and report[who]["cpu_ms"] == lat["ms"]
        assert lat["batch"] == 1 and lat["threads"] >= 1 and lat["precision"] == "fp32" and lat["backend"]
        assert doc["entries"][0]["size"] == lat["size"]  # the benchmark ran at the recorded size
    card = page[page.index('<section id="model">'):]
    assert f"{report['student']['latency']['ms']:.4g} ms ({report['student']['latency']['how']})" in card


def test_benchmark_of_a_run_folder_without_its_teacher_names_the_file(distilled, tmp_path, capsys):
    run = tmp_path / "moved"
    shutil.copytree(distilled, run)
    cfg = (run / "config.yaml").read_text(encoding="utf-8")
    teacher = re.search(r"teacher: (.+)", cfg).group(1).strip()
    (run / "config.yaml").write_text(cfg.replace(teacher, str(tmp_path / "gone.safetensors")), encoding="utf-8")
    assert main(["-q", "benchmark", str(run), "--backend", "torch", "--size", "32", "--runs", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "gone.safetensors" in err[0] and "missing" in err[0]


# In a browser -----------------------------------------------------------------------------------------


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.skip("no chromium on PATH (.ci/run installs Debian's: apt-get install --no-install-recommends chromium)")


def _open(page: Path, width: int, shot: Path, profile: Path) -> tuple[int, list[str]]:
    """Chromium's exit code and the console errors it logged while rendering ``page``."""
    proc = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--enable-logging=stderr", "--v=0",
                           f"--user-data-dir={profile}", f"--screenshot={shot}", f"--window-size={width},2000",
                           page.as_uri()], capture_output=True, text=True, errors="replace", timeout=HANG_GUARD_S)
    console = [line for line in proc.stderr.splitlines()
               if "CONSOLE" in line or "Uncaught" in line or "Content Security Policy" in line]
    return proc.returncode, console


def test_the_report_renders_in_a_browser_without_console_errors(distilled, tmp_path):
    # The check sees errors: a page with a script error and an outside image gets both reported.
    broken = tmp_path / "broken.html"
    broken.write_text('<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
                      'script-src \'unsafe-inline\'"></head><body><img src="http://example.invalid/x.png">'
                      "<script>undefinedFunction()</script></body></html>")
    rc, console = _open(broken, 390, tmp_path / "broken.png", tmp_path / "profile")
    assert rc == 0 and any("Uncaught" in line for line in console) and any("Content Security Policy" in line for line in console)
    # with every section a run's report can have (the speed section of `segdistill benchmark RUN_DIR`)
    assert main(["-q", "benchmark", str(distilled), "--backend", "torch", "--size", "32", "--runs", "2",
                 "--batch-sizes", "1"]) == 0
    for width in (1280, 390):  # a laptop and a phone
        shot = tmp_path / f"report-{width}.png"
        rc, console = _open(distilled / "report.html", width, shot, tmp_path / "profile")
        assert rc == 0 and console == [], console
        assert shot.is_file() and shot.stat().st_size > 10_000
