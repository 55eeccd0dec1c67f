"""distill --search: the pure parts (objective, grid, schedule, Pareto front, promotion, winner) on
made-up numbers, then whole searches on tiny data: objective met or the closest said, the budget
kept on a fake clock, resumed after SIGKILLs to the same result, no teacher pass after the cache."""

import json
import random
import shutil

import pytest
import torch

from segdistill.checkpoint import load_model, read_model_info
from segdistill.cli import main
from segdistill.config import ConfigError, load_config, parse_search
from segdistill.engine import clock, search
from segdistill.engine import distill as distill_mod
from segdistill.engine.search import (
    Objective,
    Rung,
    Score,
    candidate_grid,
    candidate_name,
    default_budget_s,
    first_epochs,
    halving_schedule,
    orchestrate,
    pareto_front,
    pareto_layers,
    pick_winner,
    promote,
    schedule_cost,
    spread,
)
from segdistill.inference.backends import Choice
from segdistill.jobs import distill as distill_job
from segdistill.measure import count_params
from segdistill.models.unet import UNet

from .helpers import run_killed_at

# --------------------------------------------------------------------------------------------------
# Pure parts.


def test_objective_syntax():
    assert Objective.parse("keep=0.97") == Objective("keep", 0.97)
    assert Objective.parse("latency=8ms") == Objective("latency", 8.0)
    assert str(Objective.parse("latency = 2.5 ms")) == "latency=2.5ms"
    for bad in ("keep=1.2", "keep=0", "latency=8", "latency=-1ms", "fast", "kep=0.9", ""):
        with pytest.raises(ConfigError, match=r"^--search: expected keep=FRACTION or latency=NUMBERms"):
            parse_search(bad)
    with pytest.raises(ConfigError, match="--search: expected"):
        load_config(None, ["distill.search=quick"])


def test_bad_search_flag_is_a_one_line_error_at_parse_time(capsys):
    with pytest.raises(SystemExit) as e:
        main(["distill", "--teacher", "t.safetensors", "--images", "x", "--search", "keep=97%"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert err.startswith("segdistill distill: error: argument --search: 'keep=97%' is not a search objective "
                          "(expected keep=F with 0 < F <= 1")


S = [Score("a", 0.50, 1.0), Score("b", 0.70, 2.0), Score("c", 0.65, 3.0), Score("d", 0.80, 8.0), Score("e", 0.79, 9.0)]


def test_pareto_front_and_layers():
    assert [s.name for s in pareto_front(S)] == ["a", "b", "d"]
    assert [[s.name for s in layer] for layer in pareto_layers(S)] == [["a", "b", "d"], ["c", "e"]]
    assert pareto_front([]) == []


def test_pick_winner_meets_or_says_the_closest():
    keep = Objective("keep", 0.9)
    # teacher 0.8: 0.72 needed -> d (0.80) and e (0.79) keep it; d is faster and on the front
    assert pick_winner(S, keep, 0.8) == search.Pick("d", True)
    # teacher 0.75: 0.675 -> b is the fastest keeping it
    assert pick_winner(S, keep, 0.75) == search.Pick("b", True)
    # none keeps 90% of 1.0: the closest, the most accurate, and it says so
    assert pick_winner(S, keep, 1.0) == search.Pick("d", False)
    assert pick_winner(S, Objective("latency", 3.0), 0) == search.Pick("b", True)  # most accurate under 3 ms
    assert pick_winner(S, Objective("latency", 0.5), 0) == search.Pick("a", False)  # none: the fastest


def test_the_winner_is_always_pareto_optimal():
    rng = random.Random(0)
    for _ in range(200):
        scores = [Score(f"s{i}", round(rng.random(), 2), round(rng.uniform(0.1, 10), 1)) for i in range(rng.randint(1, 9))]
        front = {s.name for s in pareto_front(scores)}
        for objective in (Objective("keep", rng.uniform(0.5, 1)), Objective("latency", rng.uniform(0.1, 10))):
            pick = pick_winner(scores, objective, rng.uniform(0.2, 1))
            assert pick.name in front
            chosen = next(s for s in scores if s.name == pick.name)
            if pick.meets and objective.kind == "latency":
                assert chosen.latency_ms <= objective.value


def test_promote_keeps_whole_fronts_then_cuts_by_the_objective():
    keep = Objective("keep", 0.97)
    assert promote(S, 3, keep) == ["a", "b", "d"]  # the front
    # 2 of the front of 3: within 97% of the rung's best (0.80) is only d; then the most accurate
    assert promote(S, 2, keep) == ["d", "b"]
    assert set(promote(S, 4, keep)) == {"a", "b", "d", "e"}  # the front, then e (more accurate than c)
    assert promote(S, 2, Objective("latency", 3.0)) == ["b", "c"]  # the most accurate under 3 ms
    assert promote(S, 2, Objective("latency", 0.1)) == ["a", "b"]  # none under it: the fastest


def test_schedule_halves_the_candidates_and_doubles_the_epochs():
    assert halving_schedule(8, 60) == [Rung(8, 2), Rung(4, 4), Rung(2, 8)]
    assert halving_schedule(5, 4) == [Rung(5, 1), Rung(3, 2), Rung(2, 2)]  # never longer than half the full run
    assert halving_schedule(1, 60) == [Rung(1, 2)]
    assert first_epochs(60) == 2 and first_epochs(4) == 1
    assert schedule_cost(halving_schedule(8, 60)) == 48
    # candidates as fast as the configured student: the plain schedule's cost
    assert search.weighted_cost([1.0] * 8, 60) == schedule_cost(halving_schedule(8, 60)) == 48
    # a candidate 10x slower to run costs 10x the epochs of its first rung; later rungs at the mean
    assert search.weighted_cost([1.0, 10.0], 60) == 2 * 11.0
    assert search.weighted_cost([1.0, 1.0, 4.0, 2.0], 60) == 2 * 8.0 + 2 * 4 * 2.0
    assert search.cost_ratio(330.0, 8.8) == pytest.approx(37.5) and search.cost_ratio(1.0, 8.8) == 0.5
    assert default_budget_s(60, 7.0, 30.0) == pytest.approx(search.BUDGET_FACTOR * 60 * 7.0)  # setup inside
    assert default_budget_s(2, 7.0, 300.0) == 300.0 + 4 * 7.0  # never less than the setup and 4 epochs


def test_grid_designs_only_where_the_model_has_them():
    ref = {"base": 4, "depth": 3, "norm": "batch", "act": "relu"}
    plain = candidate_grid(ref, ["in_channels", "base", "depth", "norm", "act"])
    names = [candidate_name(a) for a in plain]
    assert names[0] == "b4d3" and len(names) == len(set(names))
    assert not any("-us" in n or "-dw" in n for n in names)
    assert all(a["norm"] == "batch" for a in plain)
    assert next(a for a in plain if candidate_name(a) == "b2d4")["act"] == "leaky_relu"  # 2 channels: leaky
    both = candidate_grid(ref, ["base", "depth", "stem", "block"])
    assert {"b8d3-us", "b8d3-us4", "b8d3-dw", "b8d3-us-dw"} <= {candidate_name(a) for a in both}
    assert not any(candidate_name(a) == "b2d3-us" for a in both)  # designs from width 4
    assert [search.design_name(a) for a in ({}, {"stem": "unshuffle"}, {"stem": "unshuffle4"},
                                            {"block": "dwsep", "stem": "unshuffle"})] == ["plain", "us", "us4", "us-dw"]


def test_students_slower_than_half_the_teacher_are_left_out_unless_too_few_remain():
    grid = [{"name": f"s{i}", "latency_ms": float(i)} for i in range(1, 21)]
    kept, out = search.fast_enough(grid, teacher_ms=30.0)  # limit 15 ms: 15 kept
    assert [g["name"] for g in kept] == [f"s{i}" for i in range(1, 16)] and len(out) == 5
    kept, out = search.fast_enough(grid[::-1], teacher_ms=6.0)  # limit 3 ms: only 3, so the 8 fastest, in grid order
    assert [g["name"] for g in kept] == [f"s{i}" for i in range(8, 0, -1)] and len(out) == 12


def test_keep_searches_favour_students_faster_than_the_configured_one():
    assert search.favour(["ref", "f1", "f2", "f3", "f4"], ["s1", "s2"], 1) == ["ref", "f1", "f2", "s1", "f3", "f4", "s2"]
    assert search.favour(["ref"], ["s1", "s2"], 1) == ["ref", "s1", "s2"]  # nothing faster: the slower ones
    assert search.favour(["ref", "fast", "f1"], [], 2) == ["ref", "fast", "f1"]


def test_spread_covers_the_range_from_the_first():
    points = {n: (float(i),) for i, n in enumerate("abcdefg")}
    assert spread(points, 3, ["c"]) == ["c", "g", "a"]
    assert spread(points, 10, ["c"])[0] == "c" and len(spread(points, 10, ["c"])) == 7


# --------------------------------------------------------------------------------------------------
# Whole searches on tiny data (latency timed on torch only: an ONNX export per candidate is slow).

def test_encoder_students_are_pretrained_encoders_cut_at_each_depth_and_scale():
    grid = search.encoder_grid("efficientnet_lite0")
    names = [candidate_name(a) for a in grid]
    assert len(names) == len(set(names)) == len(search.ENCODER_DEPTHS) * len(search.ENCODER_SCALES)
    assert "lite0-d4-x50" in names and "lite0-d5-x75" in names
    for args in grid:  # one decoder width per encoder level, and the model builds
        assert len(args["decoder"]) == args["depth"] and search.candidate_arch(args) == "encoder_unet"
        assert search.design_name(args) == "lite0"
    assert search.candidate_arch({"base": 4, "depth": 3}) == "unet"


def test_a_teacher_on_an_encoder_gets_encoder_students_in_the_grid(synth_dir, tmp_path):
    from segdistill.checkpoint import ModelInfo, save_model
    from segdistill.config import ModelConfig
    from segdistill.data.preprocess import Preprocess
    from segdistill.engine.search.book import Book
    from segdistill.models import create_model

    args = {"in_channels": 1, "encoder": "efficientnet_lite0", "decoder": [8, 8, 8, 8, 8]}
    path = save_model(tmp_path / "teacher.safetensors", create_model("encoder_unet", **args),
                      ModelInfo("encoder_unet", args, Preprocess()))
    cfg = load_config(None, [f"distill.teacher={path}", f"distill.images={synth_dir / 'images'}", "train.input_size=32"])
    cfg.distill.student = ModelConfig("unet", {"base": 4, "depth": 2})
    book = Book.open(tmp_path / "run", True)
    book.data["teacher"] = {}
    orchestrate._grid(cfg, book)
    grid = {g["name"]: g for g in book.data["grid"]}
    kept = set(grid) | {g["name"] for g in book.data["left_out"]}
    assert {candidate_name(a) for a in search.encoder_grid("efficientnet_lite0")} <= kept
    assert all(g["latency_ms"] > 0 for g in book.data["grid"])


TINY = ["--epochs", "4", "--batch-size", "4", "--input-size", "32", "--set", "train.samples_per_epoch=8", "--threads", "1"]


@pytest.fixture
def teacher(tiny_model):
    """unet base 4 depth 2 (7.5K parameters): 3 students of the grid have 2x-1000x fewer (b2d2 and
    the depthwise-separable b4d2s), besides the configured one."""
    return tiny_model


@pytest.fixture(autouse=True)
def _torch_latency_only(monkeypatch):
    monkeypatch.setattr(orchestrate, "_latency_choices", lambda: [Choice("torch", "fp32", True)])


def _search(teacher, synth_dir, out, name, objective, *extra):
    args = ["-q", "distill", "--teacher", str(teacher), "--images", str(synth_dir / "images"), "--data", str(synth_dir),
            "--output-dir", str(out), "--name", name, "--search", objective, *TINY, *extra]
    assert main(args) == 0
    run = out / name
    return run, json.loads((run / "search.json").read_text()), json.loads((run / "distill_report.json").read_text())


@pytest.mark.slow
def test_search_end_to_end_without_teacher_passes_after_the_cache(teacher, synth_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SEGDISTILL_CACHE", str(tmp_path / "cache"))  # a fresh cache: the search fills it
    weights, _ = load_model(teacher)
    head = weights.head.weight.detach().clone()
    calls, shown, in_report = [], [], []

    def count_teacher(module, args, out):  # any module carrying the teacher's trained weights
        if isinstance(module, UNet) and module.head.weight.shape == head.shape and torch.equal(module.head.weight.detach().cpu(), head):
            (shown if in_report else calls).append(1)

    # report.html (jobs/report.py) shows the winner's best and worst images predicted again, by the
    # teacher too: those display passes are counted apart.
    real_report = distill_job.run_report

    def report_html(*args, **kwargs):
        in_report.append(1)
        try:
            return real_report(*args, **kwargs)
        finally:
            in_report.pop()

    monkeypatch.setattr(distill_job, "run_report", report_html)
    handle = torch.nn.modules.module.register_module_forward_hook(count_teacher)
    try:
        run, d, report = _search(teacher, synth_dir, tmp_path, "s", "keep=0.9", "--baseline", "--search-budget", "600")
    finally:
        handle.remove()
    # The only teacher passes: one per image (10 transfer + 2 validation) filling the cache.
    assert len(calls) == 12 == d["teacher"]["forward_passes"] == report["search"]["teacher_forward_passes"]
    assert report["teacher_forward_passes"] == 0  # the winner's distillation: none

    # Every candidate has 2x-1000x fewer parameters than the teacher, or is the configured one.
    grid = {g["name"]: g for g in d["grid"]}
    teacher_params = d["teacher"]["params"]
    assert all(g["params"] <= teacher_params / 2 for n, g in grid.items() if n != d["reference"])
    # ... and runs at most half as long as the teacher (a quick timing), or is among the fastest 8
    kept = [g["latency_ms"] for n, g in grid.items() if n != d["reference"]]
    assert all(t <= search.MAX_LATENCY_SHARE * d["teacher"]["quick_latency_ms"] for t in kept) or \
        (len(kept) == min(search.MIN_GRID, len(kept) + len(d["left_out"]))
         and max(kept) <= min([g["latency_ms"] for g in d["left_out"]] + [float("inf")]))
    assert d["rungs"][0]["candidates"] == len(d["candidates"]) >= 3
    # The winner is on the Pareto front of its rung and meets the objective there (or is the closest).
    w, k = d["winner"], d["winner"]["rung"]
    scores = [Score(r["name"], r["iou"], d["latency"][r["name"]]["latency_ms"]) for r in d["runs"] if r["rung"] == k]
    assert w["name"] in {s.name for s in pareto_front(scores)}
    assert d["final"]["meets"] == (d["final"]["iou"] >= 0.9 * d["teacher"]["val_iou"])
    # One latency per model: the report states the search's figures (measured once, latency.json).
    assert report["teacher"]["latency"]["ms"] == d["latency"]["teacher"]["latency_ms"] == d["teacher"]["latency_ms"]
    assert report["student"]["latency"]["ms"] == d["latency"][w["name"]]["latency_ms"]
    assert report["student"]["latency"]["how"] == d["latency"][w["name"]]["how"]
    # The run's model is the winner, distilled for the full length.
    info = read_model_info(run / "model.safetensors")
    assert candidate_name(info.args) == w["name"] and d["final"]["epochs"] == 4
    assert info.preprocess == read_model_info(teacher).preprocess
    # The report: every candidate with its numbers, the front as a plot, the twin.
    s = report["search"]
    assert {r["candidate"] for r in s["candidates"]} >= set(d["candidates"])
    for r in s["candidates"]:
        assert {"params", "GFLOPs", "latency_ms", "iou", "epochs"} <= set(r)
    assert any(r["note"].startswith("winner") for r in s["candidates"])
    assert (run / "search_pareto.png").stat().st_size > 1000 and (run / "search.md").is_file()
    page = (run / "report.html").read_text(encoding="utf-8")  # the HTML report has the search: plot and table
    search_part = page[page.index('<section id="search">'):]
    assert "data:image/png;base64," in search_part and all(c in search_part for c in d["candidates"])
    assert s["baseline_labels_only"]["val_iou"] is not None and (run / "baseline" / "model.safetensors").is_file()
    # Done runs say so on --resume, and the candidates' training states are gone.
    assert main(["-q", "distill", "--resume", str(run)]) == 0
    assert not list((run / "search").rglob("state.safetensors"))


@pytest.mark.slow
def test_search_keeps_its_budget(teacher, synth_dir, tmp_path, monkeypatch):
    # Fake time: an epoch takes (parameters / 100) seconds and nothing else takes any; the
    # candidates other than the configured one (the first to run) 5x that, far more than their
    # quick timing promised the plan.
    now, first = [0.0], []
    monkeypatch.setattr(clock, "_now", lambda: now[0])
    real = distill_mod.distill_one_epoch

    def epoch(student, *args, **kwargs):
        first.append(first[0] if first else count_params(student))
        now[0] += count_params(student) / 100 * (1 if count_params(student) == first[0] else 5)
        return real(student, *args, **kwargs)

    monkeypatch.setattr(distill_mod, "distill_one_epoch", epoch)
    run, d, report = _search(teacher, synth_dir, tmp_path, "b", "keep=0.9", "--search-budget", "4",
                             "--set", "distill.student.args={base: 2, depth: 2}")
    assert d["budget_s"] == 240
    assert d["stopped"]["reason"] == "budget"  # cut short, cleanly
    # the winner's distillation included; past 240 s only by what the estimates missed (below)
    missed = sum(max(0.0, r["seconds"] - r["expected_s"]) for r in d["runs"])
    assert d["spent_s"] <= 240 + missed and now[0] <= 240 + missed
    assert (run / "model.safetensors").is_file() and report["search"]["winner"] == d["winner"]["name"]
    assert d["winner"]["name"] in {r["name"] for r in d["runs"]}
    # Without --search-budget: about twice one full distillation (4 epochs) of the configured
    # student, timed on its first epoch(s) (setup takes no fake time here).
    now[0] = 0.0
    run, d, _ = _search(teacher, synth_dir, tmp_path, "b2", "keep=0.9", "--set", "distill.student.args={base: 2, depth: 2}")
    t_ref = d["runs"][0]["epoch_s"]
    assert d["runs"][0]["name"] == d["reference"] == "b2d2" and t_ref == pytest.approx(19.23)
    assert d["budget_s"] == pytest.approx(search.BUDGET_FACTOR * 4 * t_ref) and d["budget_from"].startswith("about twice")
    # Past the budget only by what the estimates missed: a candidate 5x slower than promised runs
    # over what was counted for it, and may leave less than one epoch for the winner (then the
    # quickest to distil), which still gets one.
    missed = sum(max(0.0, r["seconds"] - r["expected_s"]) for r in d["runs"])
    one_epoch = max(r["epoch_s"] for r in d["runs"] if r["name"] == d["winner"]["name"])
    assert any(r["seconds"] > r["expected_s"] for r in d["runs"])  # the estimates were off, as set up
    assert d["spent_s"] <= d["budget_s"] + missed + one_epoch


@pytest.mark.slow
def test_latency_none_fast_enough_returns_the_fastest(teacher, synth_dir, tmp_path):
    run, d, report = _search(teacher, synth_dir, tmp_path, "l", "latency=0.000001ms", "--search-budget", "600")
    fastest = min(d["grid"], key=lambda g: g["latency_ms"])["name"]
    assert fastest in d["candidates"] and len(d["candidates"]) <= 2
    assert d["final"]["meets"] is False and report["search"]["meets"] is False
    assert min(d["candidates"], key=lambda c: d["latency"][c]["latency_ms"]) == d["winner"]["name"]


@pytest.mark.slow
def test_search_resumes_after_sigkills_to_the_same_result(teacher, synth_dir, tmp_path):
    a, da, _ = _search(teacher, synth_dir, tmp_path, "a", "latency=1000ms", "--search-budget", "600")
    # The same search from the same measurements (timings are noise; everything after them is
    # determined by the seed): its plan, killed three times at named moments, resumed each time.
    b = tmp_path / "b"
    b.mkdir()
    for f in ("config.yaml", "plan.json"):
        shutil.copy(a / f, b / f)
    planned = {k: v for k, v in da.items() if k not in ("runs", "spent_s", "stopped", "winner", "final")}
    (b / "search.json").write_text(json.dumps({**planned, "runs": []}))
    # 2 steps an epoch: rung 1 (4 x 1 epoch) is steps 1-8, rung 2 (2 x 2 epochs) 9-16, the winner 17-24:
    # killed in rung 2's first run, its second, the winner's first epoch and a later one.
    for moment in ("train_step:11", "train_step:5", "write:12", "train_step:5"):
        run_killed_at(["distill", "--resume", str(b)], moment)
    assert main(["-q", "distill", "--resume", str(b)]) == 0
    db = json.loads((b / "search.json").read_text())
    key = [(r["name"], r["rung"], r["epochs"]) for r in da["runs"]]
    assert [(r["name"], r["rung"], r["epochs"]) for r in db["runs"]] == key
    assert [r["iou"] for r in db["runs"]] == pytest.approx([r["iou"] for r in da["runs"]], abs=1e-6)
    assert db["winner"] == da["winner"] and db["final"]["iou"] == pytest.approx(da["final"]["iou"], abs=1e-6)
    ma, _ = load_model(a / "model.safetensors")
    mb, _ = load_model(b / "model.safetensors")
    x = torch.randn(1, 1, 32, 32)
    assert torch.allclose(ma(x), mb(x), atol=1e-4)
    assert "search" in json.loads((b / "distill_report.json").read_text())
