"""The training plan (data/plan.py): a pure function of the fingerprint and the time budget, tested
on fingerprints alone; then how a run applies it (explicit keys win, plan.json, the model file)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from segdistill.checkpoint import read_model_info
from segdistill.cli import main
from segdistill.config import load_config
from segdistill.data.fingerprint import Fingerprint, detail_width, foreground_width
from segdistill.data.plan import CONTEXT_FILL, CROP, DETAIL_WIDTH, MIN_WIDTH, apply_plan, make_plan
from segdistill.engine.autoplan import plan_run, train_fingerprint

from .test_fingerprint import _person


def _fp(**kw) -> Fingerprint:
    """A fingerprint with neutral values, changed by ``kw``."""
    base = dict(images=100, channels="gray", median_size=(512, 512), longer_side=(512, 512), fg_fraction=0.2,
                objects_per_image=20, object_size=0.03, largest_object=0.1, object_extent=0.04, large_extent=0.3,
                feature_width=12.0, vertical_bias=0.0, vertical_z=0.5, horizontal_z=-0.3)
    return Fingerprint(**{**base, **kw})


def test_foreground_width_of_a_line_and_a_disc():
    line = np.zeros((64, 64), bool)
    line[20:26, 5:60] = True  # 6 px wide
    assert foreground_width(line) == pytest.approx(6, rel=0.15)
    yy, xx = np.mgrid[0:128, 0:128]
    disc = (yy - 64) ** 2 + (xx - 64) ** 2 <= 30 ** 2
    assert foreground_width(disc) == pytest.approx(30, rel=0.3)  # about the radius
    assert foreground_width(np.zeros((8, 8), bool)) is None


def test_the_finest_detail_is_the_thinner_class():
    # Thick cells (15 px) with 3 px gaps between them: the gaps are the detail to keep.
    cells = np.ones((90, 90), bool)
    for k in range(15, 90, 18):
        cells[k:k + 3, :] = False
    assert foreground_width(cells) > 10 and detail_width(cells) == pytest.approx(3, rel=0.2)
    assert detail_width(~cells) == pytest.approx(detail_width(cells))  # the same for either labelling
    assert detail_width(np.ones((8, 8), bool)) is None and detail_width(np.zeros((8, 8), bool)) is None


def test_microscopy_like_data_keeps_its_resolution_flips_and_turns():
    plan = make_plan(_fp())  # many small objects in 512 px gray images, no up and down
    assert plan.max_side is None and plan.input_size == CROP
    assert (plan.hflip, plan.vflip, plan.rot90) == (0.5, 0.5, 0.5)
    assert plan.depth == 4 and plan.samples_per_epoch == 400  # 4 crop-sized pieces per image


def test_photos_of_one_upright_object_are_downscaled_and_never_flipped_vertically():
    # 500x390 photos, one object spanning ~80% of the shorter side, heavier at the bottom.
    fp = _fp(images=327, channels="rgb", median_size=(500, 390), objects_per_image=1, object_size=0.5,
             largest_object=0.5, object_extent=0.7, large_extent=0.85, feature_width=120.0, vertical_bias=0.1, vertical_z=9.0)
    plan = make_plan(fp, budget_minutes=30)
    assert plan.vflip == 0 and plan.rot90 == 0 and plan.hflip == 0.5
    assert plan.max_side is not None and plan.max_side < 500
    assert 0.85 * 390 * plan.max_side / 500 <= CONTEXT_FILL * CROP + 32  # the large objects fit a crop (to the rounding)
    assert "vertical" in plan.reasons["flips"]
    assert make_plan(fp).depth == 5  # without a budget's downscaling the objects span > 96 px
    # The same photos with no preferred orientation get flips and turns.
    assert make_plan(replace(fp, vertical_z=1.0), 30).vflip == 0.5
    # Test-time views: the flips (and turns) trained on; a student's plan leaves them to its teacher.
    assert plan.tta == 2 and plan.settings()["train.tta"][0] == 2
    assert make_plan(replace(fp, vertical_z=1.0), 30).settings()["train.tta"][0] == 8
    assert "train.tta" not in make_plan(fp, 30, student=True).settings("distill.student.args")


def test_thin_structures_are_not_downscaled_below_the_minimum_width():
    # Large objects (they would ask for x0.25) made of 10 px thick lines: downscaling stops at x0.8.
    fp = _fp(median_size=(1024, 1024), large_extent=0.9, feature_width=10.0)
    plan = make_plan(fp)
    assert plan.max_side == round(1024 * MIN_WIDTH / 10.0 / 32) * 32
    assert "thick" in plan.reasons["max_side"]


def test_a_short_budget_works_at_a_lower_resolution_where_the_detail_allows():
    # Polyp-like photos: 620x530, one object up to 83% of the shorter side, 109 px thick.
    fp = _fp(median_size=(620, 530), objects_per_image=1, object_extent=0.47, large_extent=0.83, feature_width=109.0)
    short, unbounded = make_plan(fp, 30), make_plan(fp)
    assert unbounded.max_side == 320  # only the large objects' rule: they fit a crop
    assert short.max_side < unbounded.max_side and "30-minute" in short.reasons["max_side"]
    assert 109 * short.max_side / 620 >= DETAIL_WIDTH[0][1] - 2  # still about 32 px thick (to the rounding)
    assert short.input_size == short.max_side and short.depth == 4
    assert make_plan(fp, 120).max_side > short.max_side  # a longer budget affords finer pixels
    # Thin detail is never shrunk for the budget: 7.5 px membranes stay native.
    assert make_plan(_fp(feature_width=7.5, large_extent=1.0), 30).max_side is None


def test_small_images_are_cropped_whole_and_the_network_is_shallower():
    plan = make_plan(_fp(median_size=(60, 60), longer_side=(60, 60), images=10))
    assert plan.input_size == 64 and plan.depth == 3 and plan.max_side is None
    assert plan.samples_per_epoch == 64  # at least 64 crops an epoch


def test_width_follows_the_time_budget_and_length_the_data():
    fp = _fp()
    assert [make_plan(fp, b).base for b in (5, 30, 120, 600)] == [8, 16, 24, 32]
    assert make_plan(fp).epochs == 30  # 400 crops per epoch: the fewest epochs already see 8000 crops
    few = make_plan(replace(fp, images=6))
    assert few.samples_per_epoch == 64 and few.epochs == 125
    assert make_plan(replace(fp, images=6), student=True).epochs == 150  # twice as long, capped


def test_explicit_keys_win_over_the_plan():
    plan = make_plan(_fp(median_size=(600, 600), large_extent=0.9, feature_width=100.0, vertical_z=8.0))
    values = {"data": {"root": "x"}, "model": {"name": "unet", "args": {"base": 8}}, "augment": {"vflip": 0.2}}
    out, applied = apply_plan(values, plan.settings(), {"model.args.base", "augment.vflip", "data.root"})
    assert out["model"]["args"] == {"base": 8, "depth": plan.depth} and out["augment"]["vflip"] == 0.2
    assert out["data"]["max_side"] == plan.max_side and "augment.vflip" not in applied
    assert values["augment"] == {"vflip": 0.2} and "max_side" not in values["data"]  # the input is not changed


def test_a_config_file_and_flags_are_given_keys(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("train:\n  input_size: 128\nmodel:\n  args: {depth: 3}\n")
    cfg = load_config(cfg_file, ["augment.vflip=0.1", "data.root=somewhere"])
    fp = _fp(median_size=(900, 900), large_extent=0.9, feature_width=200.0, vertical_z=8.0)
    planned, record = plan_run(cfg, fp)
    assert planned.train.input_size == 128 and planned.model.args["depth"] == 3 and planned.augment.vflip == 0.1
    assert planned.augment.rot90 == 0 and planned.data.max_side == record["applied"]["data.max_side"] < 900
    assert set(record["kept"]) == {"train.input_size", "model.args.depth", "augment.vflip"}
    off, none = plan_run(load_config(None, ["train.plan=off"]), fp)
    assert none is None and off.augment.rot90 == 0.5


def _upright_set(root, n=24):
    rng = np.random.default_rng(1)
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    for i in range(n):
        m = _person(rng)
        img = np.where(m, 200, 40).astype(np.uint8) + rng.integers(0, 30, m.shape, dtype=np.uint8)
        Image.fromarray(np.stack([img] * 3, -1)).save(root / "images" / f"p{i:02d}.png")
        Image.fromarray(m.astype(np.uint8) * 255).save(root / "masks" / f"p{i:02d}.png")


def test_a_run_on_upright_photos_gets_no_vertical_flips_and_records_its_plan(synth_dir, tmp_path, capsys):
    _upright_set(tmp_path / "people")
    fp = train_fingerprint(load_config(None, [f"data.root={tmp_path / 'people'}"]))
    assert fp.upright
    args = ["train", "--data", str(tmp_path / "people"), "--output-dir", str(tmp_path), "--name", "r", "--epochs", "1",
            "--set", "train.samples_per_epoch=4", "--set", "model.args.base=4"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "planned from the data:" in err and "augment.vflip = 0.0" in err and "left-right flips only" in err
    run = tmp_path / "r"
    plan = json.loads((run / "plan.json").read_text(encoding="utf-8"))
    assert plan["applied"]["augment.rot90"] == 0.0 and "train.epochs" not in plan["applied"]
    assert set(plan["kept"]) == {"model.args.base", "train.samples_per_epoch", "train.epochs"}
    saved = load_config(run / "config.yaml")
    assert saved.augment.vflip == 0 and saved.model.args == {"base": 4, "depth": plan["applied"]["model.args.depth"]}
    assert read_model_info(run / "model.safetensors").summary["plan"] == plan
    assert plan["applied"]["train.tta"] == 2 == read_model_info(run / "model.safetensors").tta
    # The microscopy-like synthetic set (blobs in every orientation) gets flips and turns.
    blobs, _ = plan_run(load_config(None, [f"data.root={synth_dir}"]))
    assert (blobs.augment.vflip, blobs.augment.rot90) == (0.5, 0.5)


def test_a_student_is_planned_from_the_teachers_fingerprint(tiny_model, synth_dir, tmp_path, capsys):
    teacher_plan = read_model_info(tiny_model).summary["plan"]  # the teacher was planned (its flags kept)
    assert set(teacher_plan["kept"]) >= {"model.args.base", "model.args.depth", "train.input_size"}
    args = ["distill", "--teacher", str(tiny_model), "--images", str(synth_dir / "images"), "--output-dir", str(tmp_path),
            "--epochs", "1", "--batch-size", "4", "--set", "train.samples_per_epoch=4",
            "--set", f"distill.cache_dir={tmp_path / 'c'}"]
    assert main([*args, "--name", "s"]) == 0
    assert "planned from the data:" in capsys.readouterr().err
    plan = json.loads((tmp_path / "s" / "plan.json").read_text(encoding="utf-8"))
    assert plan["fingerprint"] == teacher_plan["fingerprint"]
    # The student's width is the compression chosen; its resolution the teacher's preprocessing.
    assert "distill.student.args.base" not in plan["applied"] and "data.max_side" not in plan["applied"]
    assert plan["applied"]["train.input_size"] == 64 and plan["applied"]["augment.vflip"] == 0.5
    info = read_model_info(tmp_path / "s" / "model.safetensors")
    assert info.args["base"] == 4 and info.args["depth"] == plan["applied"]["distill.student.args.depth"] == 3
    assert info.summary["plan"] == plan
    # A depth given on the command line stays.
    assert main(["-q", *args, "--name", "s2", "--set", "distill.student.args.depth=2"]) == 0
    assert read_model_info(tmp_path / "s2" / "model.safetensors").args["depth"] == 2


def test_colour_images_get_a_pretrained_encoder_and_gray_ones_the_unet():
    photo = _fp(channels="rgb", median_size=(620, 530), large_extent=0.83, feature_width=109.0, object_extent=0.47)
    plan = make_plan(photo, 30)
    settings = plan.settings()
    assert settings["model.name"][0] == "encoder_unet" and settings["model.args.encoder"][0] == "efficientnet_lite0"
    assert "model.args.base" not in settings and "model.args.depth" not in settings
    assert make_plan(replace(photo, channels="mixed"), 30).encoder is not None
    gray = make_plan(replace(photo, channels="gray"), 30)
    assert gray.encoder is None and "model.name" not in gray.settings() and "model.args.base" in gray.settings()
    # A pretrained encoder needs few epochs: its budget buys resolution (the detail kept 48 px, not 32).
    assert gray.max_side == 192 and plan.max_side == 288
    student = make_plan(photo, 15, student=True).settings("distill.student.args")
    assert student["distill.student.name"][0] == "encoder_unet"
    assert student["distill.student.args.input_scale"][0] == 0.5 and student["distill.student.args.block"][0] == "dwsep"
    # The student's encoder is cut after stride 16, its decoder one width per level.
    assert student["distill.student.args.depth"][0] == 4 and len(student["distill.student.args.decoder"][0]) == 4


def test_an_architecture_the_user_chose_is_not_swapped_for_an_encoder():
    photo = _fp(channels="rgb", median_size=(620, 530), large_extent=0.83, feature_width=109.0)
    planned, record = plan_run(load_config(None, []), photo)
    assert planned.model.name == "encoder_unet" and planned.model.args == {"encoder": "efficientnet_lite0"}
    for chosen in (["model.args.base=8"], ["model.name=unet"]):
        planned, record = plan_run(load_config(None, chosen), photo)
        assert planned.model.name == "unet" and "model.args.encoder" not in planned.model.args
        assert "model.name" not in record["applied"]
        assert planned.data.max_side == make_plan(photo, encoder=False).max_side  # the scratch U-Net's resolution
    planned, _ = plan_run(load_config(None, ["model.args.encoder=resnet18", "model.name=encoder_unet"]), photo)
    assert planned.model.args == {"encoder": "resnet18"}


def test_gray_content_saved_as_rgb_is_not_a_photo():
    from segdistill.data.fingerprint import has_colour

    rng = np.random.default_rng(0)
    gray = rng.integers(0, 255, (80, 90), dtype=np.uint8)
    assert not has_colour(Image.fromarray(np.stack([gray] * 3, -1)))  # fluorescence saved as RGB
    assert not has_colour(Image.fromarray(np.stack([gray] * 3 + [gray], -1), "RGBA"))
    assert not has_colour(Image.fromarray(gray))
    stain = np.stack([gray, (gray * 0.4).astype(np.uint8), gray], -1)  # purple, as H&E
    assert has_colour(Image.fromarray(stain))
    mostly_gray = _fp(channels="rgb", colour_fraction=0.2)
    assert not mostly_gray.photos and make_plan(mostly_gray, 30).encoder is None
    assert _fp(channels="mixed", colour_fraction=0.8).photos
    assert _fp(channels="rgb").photos  # a fingerprint recorded before colour was measured
