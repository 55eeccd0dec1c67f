"""What a new user trips over in the first hour on the command line (issue 20), one test per item."""

from __future__ import annotations

import json

from segdistill.cli import main
from segdistill.config import load_config
from segdistill.data.discovery import discover


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
