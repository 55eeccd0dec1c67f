"""Time budgets, expected durations and the thread watchdog, on a fake clock (no test here
depends on how fast this machine is)."""

import csv

import pytest
import torch

import segdistill.engine.clock as clock_mod
from segdistill.config import load_config
from segdistill.engine.clock import RunClock, budget_margin, epochs_that_fit, format_duration

from .conftest import TINY_TRAIN


class FakeClock:
    """``_now`` that moves ``step`` seconds forward at every reading."""

    def __init__(self, step: float, start: float = 0.0) -> None:
        self.t, self.step = start, step

    def __call__(self) -> float:
        self.t += self.step
        return self.t


def test_epochs_that_fit_known_values():
    # 600 s budget: 17 s margin; 100 s spent on 2 epochs, 10 s kept for the final evaluation:
    # 600 - 17 - 100 - 10 = 473 s left -> 47 more epochs of 10 s.
    assert budget_margin(600) == pytest.approx(17.0)
    assert epochs_that_fit(600, 100, 2, 10.0, 10.0) == 49
    assert epochs_that_fit(600, 590, 2, 10.0, 0.0) == 2  # nothing left: never fewer than done
    assert epochs_that_fit(60, 0, 1, 100.0, 0.0) == 1


def test_format_duration():
    assert [format_duration(s) for s in (0.4, 59, 61, 3599, 3600 * 2 + 125)] == ["0s", "59s", "1m01s", "59m59s", "2h02m"]


def test_plan_follows_measured_epochs(monkeypatch):
    fake = FakeClock(step=0.0)
    monkeypatch.setattr(clock_mod, "_now", fake)
    clock = RunClock(epochs=30, budget_s=600.0, started=0.0)

    def epoch(seconds: float, e: int) -> int:
        fake.t += seconds
        clock.end_epoch(e, val_seconds=1.0)
        return clock.epochs

    assert epoch(20.0, 1) == 1 + int((600 - 17 - 20 - 1) // 20)  # first epoch alone: 29
    assert epoch(10.0, 2) == 2 + int((600 - 17 - 30 - 1) // 10)  # the second sets the pace: 57
    # A machine that slows down (epochs of 20 s from epoch 3) gets a shorter plan at once.
    planned = [epoch(20.0, e) for e in range(3, 6)]
    assert planned[-1] < 57 and planned == sorted(planned, reverse=True)
    assert fake.t + (planned[-1] - 5) * 20.0 + 1.0 <= 600 - budget_margin(600)


def test_one_stalled_epoch_does_not_cut_the_plan(monkeypatch):
    # 40 s epochs, one of 200 s (another program's burst) at epoch 9 of a 30-minute run.
    fake = FakeClock(step=0.0)
    monkeypatch.setattr(clock_mod, "_now", fake)
    clock = RunClock(epochs=30, budget_s=1800.0, started=0.0)
    plans = []
    for e in range(1, 13):
        fake.t += 200.0 if e == 9 else 40.0
        clock.end_epoch(e, val_seconds=1.0)
        plans.append(clock.epochs)
    # The plan loses the stalled epoch's extra 160 s (4 epochs), not half the run.
    assert plans[7] - 5 <= plans[-1] < plans[7]
    assert fake.t + (plans[-1] - 12) * 40.0 + 1.0 <= 1800 - budget_margin(1800)


def test_a_budget_shorter_than_one_epoch_says_so(monkeypatch, caplog):
    fake = FakeClock(step=0.0)
    monkeypatch.setattr(clock_mod, "_now", fake)
    clock = RunClock(epochs=30, budget_s=60.0, started=0.0)
    fake.t += 70.0
    with caplog.at_level("INFO", logger="segdistill"):
        clock.end_epoch(1, None)
    assert clock.epochs == 1 and "leaves no room for a second epoch" in caplog.text


def test_without_budget_the_plan_is_train_epochs(monkeypatch):
    fake = FakeClock(step=5.0)
    monkeypatch.setattr(clock_mod, "_now", fake)
    clock = RunClock(epochs=7, budget_s=None, started=0.0)
    for e in range(1, 4):
        clock.end_epoch(e, None)
    assert clock.epochs == 7 and clock.eta(3) == "20s"  # 4 epochs of 5 s left


def test_train_fits_epochs_and_schedule_to_the_budget(synth_dir, tmp_path, monkeypatch, caplog):
    from segdistill.engine.train import fit

    # Every reading of the clock moves it 10 s: creation at 10 s; an epoch reads it at its start and
    # at its end, so epoch k ends at 10 + 20 k s. A 2-minute budget keeps 7.4 s margin: after epoch 1
    # (30 s spent, 20 s per epoch) 4 more fit (82.6 s left); after epoch 2 still 5 in all.
    monkeypatch.setattr(clock_mod, "_now", FakeClock(step=10.0))
    cfg = load_config(None, [f"data.root={synth_dir}", f"output_dir={tmp_path}", "name=b", "train.epochs=30",
                             "train.time_budget=2", "train.tta=1", "train.batch_size=4", "train.input_size=32",
                             "model.args={base: 4, depth: 2}", "train.samples_per_epoch=8", "train.warmup_epochs=0"])
    with caplog.at_level("INFO", logger="segdistill"):
        result = fit(cfg, started=0.0)
    rows = list(csv.DictReader(open(result.run_dir / "history.csv")))
    assert len(rows) == 5
    assert float(rows[-1]["lr"]) == pytest.approx(cfg.train.min_lr, rel=1e-3)  # the schedule ended with the plan
    assert "time budget 2m00s" in caplog.text and "-> 5 epochs fit" in caplog.text
    assert "expected duration" in caplog.text


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_threads_setting_and_cli_flags(synth_dir, tmp_path, precision):
    from segdistill.cli import main

    before = torch.get_num_threads()
    try:
        args = ["-q", "train", "--data", str(synth_dir), "--output-dir", str(tmp_path), "--name", "t", *TINY_TRAIN,
                "--threads", "2", "--set", f"train.precision={precision}"]
        assert main(args) == 0
        assert torch.get_num_threads() == 2
        assert "threads: 2" in (tmp_path / "t" / "config.yaml").read_text()
    finally:
        torch.set_num_threads(before)


def test_bad_thread_counts_are_refused(capsys):
    from segdistill.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--threads", "0"])
    assert "not a thread count" in capsys.readouterr().err
    from segdistill.errors import ConfigError

    with pytest.raises(ConfigError, match="threads must be at least 1"):
        load_config(None, ["threads=0"])


def test_auto_threads_leaves_out_busy_cores(monkeypatch):
    from segdistill import runtime

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(runtime, "available_cores", lambda: 4)
    monkeypatch.setattr(runtime, "busy_cores_elsewhere", lambda seconds=0.3: 2.8)
    assert runtime.auto_threads()[0] == 1
    monkeypatch.setattr(runtime, "busy_cores_elsewhere", lambda seconds=0.3: 0.3)
    assert runtime.auto_threads()[0] == 4
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert runtime.auto_threads() == (3, "OMP_NUM_THREADS")


def test_a_stalled_epoch_is_reported_and_the_job_lowers_the_threads(monkeypatch, caplog):
    from segdistill.jobs import threads as job_threads

    before = torch.get_num_threads()
    fake = FakeClock(step=0.0)
    monkeypatch.setattr(clock_mod, "_now", fake)
    monkeypatch.setattr(job_threads, "auto_threads", lambda: (1, "2 available cores, 1.0 busy with other processes"))
    stalls: list[tuple[int, float, float]] = []
    try:
        torch.set_num_threads(2)
        # The clock only reports: with no handler a stall changes nothing.
        clock = RunClock(epochs=10, started=0.0, on_stall=lambda *a: stalls.append(a))
        for e, seconds in enumerate([2.0, 1.0, 1.1, 0.9, 1.0], start=1):
            fake.t += seconds
            clock.end_epoch(e, None)
        assert stalls == [] and torch.get_num_threads() == 2  # usual epochs report nothing
        fake.t += 50.0
        clock.end_epoch(6, None)
        assert stalls == [(6, 50.0, 1.0)]  # epoch, its seconds, the median of the usual ones
        # The job's choice for threads: auto: fewer threads; a number the user set: none.
        assert job_threads.start_threads(2) is None and torch.get_num_threads() == 2
        handler = job_threads.start_threads("auto")
        assert handler is job_threads.fewer_threads_when_busy
        torch.set_num_threads(2)
        with caplog.at_level("WARNING", logger="segdistill"):
            handler(6, 50.0, 1.0)
        assert torch.get_num_threads() == 1
        assert "other processes are using the CPU" in caplog.text
    finally:
        torch.set_num_threads(before)
