"""What a new user trips over in the first hour on the command line (issue 20), one test per item."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest

from segdistill.cli import main
from segdistill.config import load_config
from segdistill.data.discovery import discover
from segdistill.reports.distill import two_digits


def cli(capsys, *args) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


# 1. evaluate scores only what training held out ------------------------------------------------


def test_evaluate_scores_the_validation_split_training_made(tiny_model, synth_dir, tmp_path, capsys):
    cfg = load_config(None, [f"data.root={synth_dir}"])
    held_out = sorted(p.stem for p in discover(cfg.data, cfg.seed).val)
    rc, _, err = cli(capsys, "evaluate", tiny_model, "--data", synth_dir, "--out", tmp_path / "e.csv")
    assert rc == 0
    assert f"scoring the {len(held_out)} validation images training held out (seed 0, val_fraction 0.2" in err
    assert "--all scores all 12" in err
    scored = [line.split(",")[0] for line in (tmp_path / "e.csv").read_text().splitlines()[1:]]
    assert sorted(scored) == held_out
    assert json.loads((tmp_path / "e.json").read_text())["images"] == len(held_out)
    rc, _, err = cli(capsys, "evaluate", tiny_model, "--data", synth_dir, "--out", tmp_path / "a.csv", "--all")
    assert rc == 0 and "scoring all 12 images (--all)" in err
    assert len((tmp_path / "a.csv").read_text().splitlines()) == 13


def test_evaluate_uses_the_split_stored_in_the_model(synth_dir, tmp_path, capsys):
    from .conftest import TINY_TRAIN

    stems = sorted(p.stem for p in (synth_dir / "images").glob("*.png"))[:2]
    assert main(["-q", "train", "--data", str(synth_dir), "--output-dir", str(tmp_path), "--name", "v", *TINY_TRAIN,
                 "--epochs", "1", "--set", f"data.val_stems=[{stems[0]!r}, {stems[1]!r}]"]) == 0
    model = tmp_path / "v" / "model.safetensors"
    (tmp_path / "v" / "config.yaml").unlink()  # the model file alone says how it split
    rc, _, err = cli(capsys, "evaluate", model, "--data", synth_dir, "--out", tmp_path / "e.csv")
    assert rc == 0 and "scoring the 2 validation images training held out (data.val_stems" in err
    scored = sorted(line.split(",")[0] for line in (tmp_path / "e.csv").read_text().splitlines()[1:])
    assert scored == stems


# 2. predict never mixes two runs' outputs --------------------------------------------------------


def test_predict_makes_a_fresh_folder_or_overwrites_cleanly(tiny_model, synth_dir, tmp_path, capsys):
    other = tmp_path / "syn_test" / "images"  # the same folder name as synth_dir/images
    other.mkdir(parents=True)
    img = sorted((synth_dir / "images").glob("*.png"))[0]
    (other / "x.png").write_bytes(img.read_bytes())
    out = tmp_path / "preds"
    rc, stdout, _ = cli(capsys, "predict", tiny_model, synth_dir / "images", "--out", out, "--probs", "--overlay")
    assert rc == 0 and stdout.startswith(f"12 masks written to {out / 'images'} ")
    rc, stdout, _ = cli(capsys, "predict", tiny_model, other, "--out", out)
    assert rc == 0 and stdout.startswith(f"1 mask written to {out / 'images-2'} ")  # singular (item 10), no mixing
    assert sorted(p.name for p in (out / "images-2").iterdir()) == ["x.png"]
    assert len(list((out / "images").glob("*.png"))) == 12  # the first run is untouched
    rc, stdout, _ = cli(capsys, "predict", tiny_model, other, "--out", out, "--name", "images", "--overwrite")
    assert rc == 0 and stdout.startswith(f"1 mask written to {out / 'images'} ")
    assert sorted(p.name for p in (out / "images").iterdir()) == ["x.png"]  # no probs/ or overlays/ of the first run
    (out / "images" / "notes.txt").write_text("mine")
    rc, _, err = cli(capsys, "predict", tiny_model, other, "--out", out, "--name", "images", "--overwrite")
    assert rc == 2 and "holds notes.txt, which predict does not write" in err


# 3. several input files (a glob the shell expanded) ----------------------------------------------


def test_predict_takes_several_files(tiny_model, synth_dir, tmp_path, capsys):
    files = sorted((synth_dir / "images").glob("000*.png"))[:3]
    rc, stdout, err = cli(capsys, "predict", tiny_model, *files, "--out", tmp_path / "o")
    assert rc == 0, err
    assert stdout.startswith(f"3 masks written to {tmp_path / 'o' / 'images'} ")
    assert sorted(p.name for p in (tmp_path / "o" / "images").iterdir()) == [f.name for f in files]


# 4. wrong paths say what was found and what was expected ----------------------------------------


def test_predict_accepts_a_run_folder(tiny_model, synth_dir, tmp_path, capsys):
    img = sorted((synth_dir / "images").glob("*.png"))[0]
    rc, _, err = cli(capsys, "predict", tiny_model.parent, img, "--out", tmp_path / "o")
    assert rc == 0 and f"{tiny_model.parent} is a run folder: using its model {tiny_model}" in err
    from segdistill.checkpoint import read_model_info
    from segdistill.errors import ModelFileError

    with pytest.raises(ModelFileError) as e:
        read_model_info(tiny_model.parent)
    assert str(e.value) == f"{tiny_model.parent} is a run folder; its model is {tiny_model}"


def test_distill_images_pointing_at_a_data_root_or_an_empty_folder(tiny_model, synth_dir, tmp_path, capsys):
    base = ["distill", "--teacher", tiny_model, "--output-dir", tmp_path, "--epochs", "1"]
    rc, _, err = cli(capsys, *base, "--images", synth_dir)
    assert rc == 2
    assert err.strip().splitlines()[-1] == (f"error: {synth_dir}: no images directly in it; it holds images/ and masks/ "
                                            f"(did you mean {synth_dir / 'images'}?)")
    (tmp_path / "empty").mkdir()
    rc, _, err = cli(capsys, *base, "--images", tmp_path / "empty")
    assert rc == 2 and f"{tmp_path / 'empty'}: no image files found (the folder is empty)" in err
    assert "validating on" not in err and "no transfer images left" not in err


def test_unpaired_names_show_an_example_of_each_side_and_no_blank_table(synth_dir, tmp_path, capsys):
    d = tmp_path / "d"
    (d / "images").mkdir(parents=True)
    (d / "masks").mkdir()
    for p in sorted((synth_dir / "images").glob("*.png"))[:3]:
        (d / "images" / f"img{p.name}").write_bytes(p.read_bytes())
        (d / "masks" / f"mask_img{p.name}").write_bytes((synth_dir / "masks" / p.name).read_bytes())
    rc, out, _ = cli(capsys, "data", "check", d)
    assert rc == 1
    assert "image img0000.png has no mask" in out and "masks are named like mask_img0000.png" in out
    assert "Data check" not in out and "layout" not in out  # no table of blanks


# 6. resuming a finished run ----------------------------------------------------------------------


def test_resume_of_a_finished_run_says_it_is_complete(tiny_model, synth_dir, tmp_path, capsys):
    from .conftest import TINY_TRAIN

    assert main(["-q", "train", "--data", str(synth_dir), "--output-dir", str(tmp_path), "--name", "t", *TINY_TRAIN]) == 0
    before = (tmp_path / "t" / "history.csv").read_text()
    capsys.readouterr()
    rc, out, err = cli(capsys, "train", "--resume", tmp_path / "t")
    assert rc == 0
    assert (f"run {tmp_path / 't'} is complete (2 of 2 epochs); nothing to do - edit train.epochs in its config.yaml "
            "to extend it") in err
    assert "resuming" not in err and "Training summary" not in err and out == ""
    assert (tmp_path / "t" / "history.csv").read_text() == before
    assert main(["-q", "distill", "--teacher", str(tiny_model), "--images", str(synth_dir / "images"), "--output-dir",
                 str(tmp_path), "--name", "d", "--epochs", "1", "--input-size", "32",
                 "--set", "train.samples_per_epoch=4", "--set", "distill.student.args.base=2",
                 "--set", "distill.student.args.depth=2"]) == 0
    capsys.readouterr()
    rc, out, err = cli(capsys, "distill", "--resume", tmp_path / "d")
    assert rc == 0 and f"run {tmp_path / 'd'} is complete (1 of 1 epochs)" in err
    assert "Distillation report" not in err and out == ""


# 7. the distillation report ----------------------------------------------------------------------


def test_distill_report_keys_warning_and_log_lines(tiny_model, synth_dir, tmp_path, capsys):
    # tiny_model is a base-4 U-Net: a base-8 student is larger than its teacher.
    rc, out, err = cli(capsys, "distill", "--teacher", tiny_model, "--images", synth_dir / "images", "--data", synth_dir,
                       "--baseline", "--output-dir", tmp_path, "--name", "big", "--epochs", "1", "--input-size", "32",
                       "--set", "train.samples_per_epoch=4", "--set", "distill.student.args.base=8",
                       "--set", "distill.student.args.depth=2")
    assert rc == 0, err
    r = json.loads((tmp_path / "big" / "distill_report.json").read_text())
    for part in ("teacher", "student", "baseline_labels_only"):
        assert "val_iou" in r[part] and "val_dice" in r[part] and "val IoU" not in r[part]
    assert "cpu_ms" in r["student"] and "gflops" in r["student"]
    assert "not smaller than its teacher" in err
    assert "compression 0.0x" not in err
    line = next(x for x in err.splitlines() if x.startswith("compression "))
    assert line.split()[1] == two_digits(r["compression"]) + "x,"
    assert "Training summary" not in err  # the twin's run is one line, not a summary mid-report
    assert "labels-only twin: best val IoU" in err


def test_unlabelled_distill_lines_say_agreement(tiny_model, synth_dir, tmp_path, capsys):
    rc, _, err = cli(capsys, "distill", "--teacher", tiny_model.parent, "--images", synth_dir / "images", "--output-dir", tmp_path,
                     "--epochs", "1", "--input-size", "32", "--set", "train.samples_per_epoch=4",
                     "--set", "distill.student.args.base=2", "--set", "distill.student.args.depth=2")
    assert rc == 0 and f"{tiny_model.parent} is a run folder: using its model" in err  # item 4: a run folder as teacher
    line = next(x for x in err.splitlines() if x.startswith("distill 1/1"))
    assert "agreement 0." in line and "IoU" not in line
    assert all(len(word) == 6 for word in line.split()[3:6:2])  # 0.1234: four decimals


def test_two_significant_digits():
    assert [two_digits(x) for x in (0.0531, 0.7, 1.43, 16.3, 253.4)] == ["0.053", "0.70", "1.4", "16", "253"]


# 9. the Python API -------------------------------------------------------------------------------


def test_fit_and_distill_take_a_dict(synth_dir, tiny_model, tmp_path):
    import segdistill as sd
    from segdistill.errors import SegdistillError

    tiny = {"model": {"args": {"base": 4, "depth": 2}}, "output_dir": str(tmp_path),
            "train": {"epochs": 1, "batch_size": 4, "input_size": 32, "samples_per_epoch": 4}}
    run = sd.fit({"data": {"root": str(synth_dir)}, "name": "f", **tiny})
    assert run.run_dir == tmp_path / "f" and len(run.history) == 1
    res = sd.distill({"distill": {"teacher": str(tiny_model), "images": [str(synth_dir / "images")],
                                  "student": {"args": {"base": 2, "depth": 2}}}, "name": "d", **tiny})
    assert (res.run_dir / "distill_report.json").is_file()
    with pytest.raises(SegdistillError, match="unknown key 'epoch'"):
        sd.fit({"train": {"epoch": 3}})
    with pytest.raises(SegdistillError, match="fit takes a Config .* or a dict of config keys, not list"):
        sd.fit(["data.root=x"])  # type: ignore[arg-type]
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "logging.basicConfig(level=logging.INFO" in readme


# 10. small things --------------------------------------------------------------------------------


def test_curves_show_one_epoch_and_whole_epoch_ticks():
    import matplotlib.pyplot as plt

    from segdistill.reports.plots import curves_figure

    row = {"train_loss": 0.5, "val_loss": 0.6, "val_iou": 0.3, "val_dice": 0.4}
    fig = curves_figure([{"epoch": 1, **row}], "t1: unet")
    assert all(line.get_marker() == "o" for ax in fig.axes for line in ax.get_lines())
    plt.close(fig)
    fig = curves_figure([{"epoch": 1, **row}, {"epoch": 2, **row}])
    fig.canvas.draw()
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks)
    plt.close(fig)


def test_run_details_title_duration_and_learning_rates(synth_dir, tmp_path, capsys):
    import csv

    from .conftest import TINY_TRAIN

    rc, _, err = cli(capsys, "train", "--data", synth_dir, "--output-dir", tmp_path, "--name", "t1", *TINY_TRAIN,
                     "--epochs", "3", "--set", "train.warmup_epochs=1", "--lr", "0.0013")
    assert rc == 0
    summary = err[err.index("Training summary"):]
    assert "minutes" not in summary and "time" in summary
    for row in csv.DictReader(open(tmp_path / "t1" / "history.csv")):
        assert float(row["lr"]) == float(f"{float(row['lr']):.6g}")
    from segdistill.engine import train as train_mod

    assert train_mod._sig6(0.0007502499999999999) == 0.00075025


def test_curves_title_is_the_run_folder(synth_dir, tmp_path, monkeypatch):
    from segdistill.engine import run as run_mod

    from .conftest import TINY_TRAIN

    titles = []
    monkeypatch.setattr(run_mod, "plot_curves", lambda path, history, title: titles.append(title))
    for _ in range(2):  # the second run goes to t-2
        assert main(["-q", "train", "--data", str(synth_dir), "--output-dir", str(tmp_path), "--name", "t", *TINY_TRAIN,
                     "--epochs", "1"]) == 0
    assert titles[0].startswith("t: ") and titles[-1].startswith("t-2: ")


def test_data_synth_refuses_a_folder_that_holds_files(tmp_path, capsys):
    rc, out, _ = cli(capsys, "data", "synth", tmp_path / "s", "--count", "3", "--size", "16")
    assert rc == 0
    rc, _, err = cli(capsys, "data", "synth", tmp_path / "s", "--count", "1", "--size", "16")
    assert rc == 2 and f"error: {tmp_path / 's'}: not empty (holds images, masks)" in err
    assert len(list((tmp_path / "s" / "images").iterdir())) == 3
    rc, out, _ = cli(capsys, "data", "synth", tmp_path / "s", "--count", "1", "--size", "16", "--overwrite")
    assert rc == 0 and out.startswith("1 image/mask pair written")
    assert [p.name for p in (tmp_path / "s" / "images").iterdir()] == ["0000.png"]
    assert [p.name for p in (tmp_path / "s" / "masks").iterdir()] == ["0000.png"]


# 8. crops larger than the images -----------------------------------------------------------------


def test_crops_larger_than_the_images_are_a_warning(synth_dir, tmp_path, capsys):
    expected = ("train.input_size 256 is larger than the images (median 64x64): crops are reflect-padded to 16x their "
                "pixels; use --input-size 64")
    # The plan crops 64x64 images whole; a crop set larger than the images is warned about.
    rc, out, _ = cli(capsys, "data", "check", synth_dir)
    assert rc == 0 and "warning:" not in out and re.search(r"train.input_size +64 ", out)
    rc, out, _ = cli(capsys, "data", "check", synth_dir, "--set", "train.input_size=256")
    assert rc == 0 and f"warning: {expected}" in out
    rc, out, _ = cli(capsys, "data", "check", synth_dir, "--set", "train.input_size=64", "--set", "train.plan=off")
    assert rc == 0 and "input_size" not in out
    rc, _, err = cli(capsys, "train", "--data", synth_dir, "--output-dir", tmp_path, "--epochs", "1", "--input-size", "256",
                     "--set", "train.samples_per_epoch=2", "--batch-size", "2",
                     "--set", "model.args.base=4", "--set", "model.args.depth=2")
    assert rc == 0 and err.count(expected) == 1


# 5. flags as helpful as config keys --------------------------------------------------------------


def test_quiet_after_the_subcommand_and_evaluate_takes_a_config(tiny_model, synth_dir, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("predict:\n  threshold: 0.99\n")
    rc, out, err = cli(capsys, "evaluate", tiny_model, "--data", synth_dir, "--out", tmp_path / "e.csv", "-q",
                       "-c", cfg, "--set", "device=cpu")
    assert rc == 0 and err == "" and out == ""
    assert json.loads((tmp_path / "e.json").read_text())["threshold"] == 0.99


def test_misspelt_flag_gets_the_subcommands_name_and_a_suggestion_on_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--data", "d", "--eopchs", "3"])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err == ("segdistill train: error: unrecognized arguments: --eopchs 3 (did you mean --epochs?) "
                   "(see 'segdistill train -h')\n")


def test_help_texts_models_and_config_comments(capsys):
    from segdistill.cli import build_parser
    from segdistill.config import default_config_yaml

    parser = build_parser()
    assert "train a model on images and masks" in parser.description
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name, flag in (("train", "--epochs"), ("train", "--lr"), ("predict", "--threshold"), ("distill", "--targets"),
                       ("evaluate", "--threshold")):
        action = next(a for a in subs[name]._actions if flag in a.option_strings)
        assert action.help, f"{name} {flag} has no help"
    assert "default 30" in next(a for a in subs["train"]._actions if "--epochs" in a.option_strings).help
    synth = next(a for a in subs["data"]._actions if isinstance(a, argparse._SubParsersAction)).choices["synth"]
    assert "default 64" in next(a for a in synth._actions if "--count" in a.option_strings).help
    rc, out, _ = cli(capsys, "models")
    rows = {line.split()[0]: line for line in out.splitlines()[2:]}
    assert rows["unet_nano"].split()[1:3] == ["4", "4"] and rows["unet_large"].split()[1:3] == ["64", "4"]
    assert len({line.split("M", 1)[1].strip() for line in rows.values()}) == len(rows)  # one description each
    missing = [line for line in default_config_yaml().splitlines()[2:] if "#" not in line]
    assert missing == []
