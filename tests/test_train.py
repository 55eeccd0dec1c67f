import csv

import pytest
import torch
from PIL import Image

from segdistill.checkpoint import load_model, read_model_info
from segdistill.cli import main

from .conftest import TINY_TRAIN
from .helpers import history_rows, run_killed_at


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_train_cli_writes_a_complete_run(synth_dir, tmp_path, capsys, precision):
    rc = main(["train", "--data", str(synth_dir), "--output-dir", str(tmp_path), "--name", "r", *TINY_TRAIN,
               "--set", f"train.precision={precision}"])
    assert rc == 0
    assert f"cpu, {precision}" in capsys.readouterr().err  # the precision asked for is the one used
    run = tmp_path / "r"
    for f in ("model.safetensors", "last.safetensors", "state.safetensors", "config.yaml", "history.csv", "curves.png", "metrics.json"):
        assert (run / f).is_file(), f
    rows = list(csv.DictReader(open(run / "history.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert set(rows[0]) == {"epoch", "train_loss", "val_loss", "val_iou", "val_dice", "lr", "seconds"}
    info = read_model_info(run / "model.safetensors")
    assert info.arch == "unet" and info.args["base"] == 4 and info.preprocess.channels == "gray"
    assert info.summary["train_images"] + info.summary["val_images"] == 12
    # the same name again does not overwrite: a new folder
    assert main(["-q", "train", "--data", str(synth_dir), "--output-dir", str(tmp_path), "--name", "r", *TINY_TRAIN]) == 0
    assert (tmp_path / "r-2" / "model.safetensors").is_file()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_learns_the_synthetic_task(tmp_path, precision):
    from segdistill.data.synth import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "d", count=24, size=64, seed=2)
    args = ["-q", "train", "--data", str(data), "--output-dir", str(tmp_path), "--name", "l", "--epochs", "8",
            "--batch-size", "8", "--input-size", "64", "--lr", "0.005", "--set", "model.args.base=8",
            "--set", "model.args.depth=3", "--set", "train.samples_per_epoch=48", "--set", f"train.precision={precision}"]
    assert main(args) == 0
    rows = list(csv.DictReader(open(tmp_path / "l" / "history.csv")))
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert max(float(r["val_iou"]) for r in rows) > 0.5


def _run_args(data, out, name, epochs=5):
    return ["train", "--data", str(data), "--output-dir", str(out), "--name", name, "--epochs", str(epochs),
            "--batch-size", "4", "--input-size", "32", "--set", "model.args.base=4", "--set", "model.args.depth=2",
            "--set", "train.samples_per_epoch=48", "--set", "model.args.dropout=0.2", "--overwrite"]


@pytest.mark.slow
def test_resume_after_kill_matches_uninterrupted_run(synth_dir, tmp_path):
    assert main(["-q", *_run_args(synth_dir, tmp_path, "full")]) == 0
    # 48 crops in batches of 4: 12 steps an epoch, so step 29 is mid-epoch 3.
    run_killed_at(_run_args(synth_dir, tmp_path, "cut"), "train_step:29")
    assert history_rows(tmp_path / "cut") == 2
    assert main(["-q", "train", "--resume", str(tmp_path / "cut")]) == 0
    full = list(csv.DictReader(open(tmp_path / "full" / "history.csv")))
    cut = list(csv.DictReader(open(tmp_path / "cut" / "history.csv")))
    assert len(full) == len(cut) == 5
    assert abs(float(full[-1]["val_iou"]) - float(cut[-1]["val_iou"])) <= 0.01
    a, _ = load_model(tmp_path / "full" / "last.safetensors")
    b, _ = load_model(tmp_path / "cut" / "last.safetensors")
    x = torch.randn(1, 1, 32, 32)
    assert torch.allclose(a(x), b(x), atol=1e-3)


def test_non_finite_loss_stops_with_message_and_keeps_checkpoint(synth_dir, tmp_path, capsys, monkeypatch):
    import segdistill.engine.train as train_mod
    from segdistill.checkpoint import load_state

    run = tmp_path / "nan"
    assert main(["-q", *_run_args(synth_dir, tmp_path, "nan", epochs=2)]) == 0
    before = (run / "model.safetensors").read_bytes()
    # Extend the run, and make every loss NaN from here on.
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace("epochs: 2", "epochs: 4"))
    monkeypatch.setattr(train_mod, "make_task_loss", lambda *a, **k: (lambda x, t: x.sum() * float("nan")))
    rc = main(["-q", "train", "--resume", str(run)])
    err = capsys.readouterr().err
    assert rc == 2
    assert "non-finite loss (nan) at epoch 3/4" in err and "last good checkpoint is kept" in err
    assert len(err.strip().splitlines()) == 1  # one line, no traceback
    assert load_state(run / "state.safetensors")["epoch"] == 2
    assert (run / "model.safetensors").read_bytes() == before
    load_model(run / "model.safetensors")


def test_keras_layout_trains_and_predicts_end_to_end(synth_dir, tmp_path):
    base = tmp_path / "keras"
    images = sorted((synth_dir / "images").glob("*.png"))
    for i, img in enumerate(images):
        part = "train" if i < 9 else "val"
        for kind, src in (("images", img), ("masks", synth_dir / "masks" / img.name)):
            d = base / f"{part}_{kind}" / "0"
            d.mkdir(parents=True, exist_ok=True)
            (d / img.name).write_bytes(src.read_bytes())
    assert main(["-q", "train", "--data", str(base), "--output-dir", str(tmp_path), "--name", "k", "--model", "unet_keras",
                 "--set", "model.args.base=4", "--set", "model.args.depth=2", "--epochs", "1", "--input-size", "32"]) == 0
    info = read_model_info(tmp_path / "k" / "model.safetensors")
    assert info.arch == "unet_keras" and info.summary["train_images"] == 9 and info.summary["val_images"] == 3
    out = tmp_path / "pred"
    assert main(["-q", "predict", str(tmp_path / "k" / "model.safetensors"), str(base / "val_images"), "--out", str(out), "--name", "v"]) == 0
    masks = sorted((out / "v").glob("*.png"))
    assert len(masks) == 3 and Image.open(masks[0]).size == (64, 64)


def test_resume_with_an_edited_model_is_a_one_line_error(synth_dir, tmp_path, capsys):
    assert main(["-q", "train", "--data", str(synth_dir), "--output-dir", str(tmp_path), "--name", "e", *TINY_TRAIN]) == 0
    cfg = tmp_path / "e" / "config.yaml"
    cfg.write_text(cfg.read_text().replace("base: 4", "base: 6").replace("epochs: 2", "epochs: 3"))
    assert main(["-q", "train", "--resume", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "does not fit config.yaml (model:" in err and "\n" not in err


def test_a_model_predicting_only_background_is_reported(synth_dir, tmp_path, capsys, monkeypatch):
    import segdistill.engine.train as train_mod

    real = train_mod.evaluate

    def collapsed(*args, **kwargs):  # the validation of a model that predicts no foreground
        r = real(*args, **kwargs)
        r.metrics.update(recall=0.0, precision=1.0, iou=0.0)
        return r

    monkeypatch.setattr(train_mod, "evaluate", collapsed)
    assert main(["-q", *_run_args(synth_dir, tmp_path, "bg", epochs=3)]) == 0
    err = capsys.readouterr().err
    assert err.count("predicted no foreground in 3 validations in a row (epoch 3)") == 1
