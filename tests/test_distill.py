import json

import pytest
import torch

from segdistill.checkpoint import read_model_info
from segdistill.cli import main
from segdistill.engine.distill import mix_batch

TINY = ["--epochs", "2", "--batch-size", "4", "--input-size", "32", "--set", "train.samples_per_epoch=8",
        "--set", "distill.student.args.base=2", "--set", "distill.student.args.depth=2"]


def _distill(teacher, images, out, name, *extra, quiet=True):
    args = ["-q"] * quiet + ["distill", "--teacher", str(teacher), "--images", str(images), "--output-dir", str(out),
            "--name", name, *TINY, *extra]
    assert main(args) == 0
    return json.loads((out / name / "distill_report.json").read_text())


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_unlabelled_distillation_end_to_end(tiny_model, synth_dir, tmp_path, capsys, precision):
    images = tmp_path / "plain" / "0"  # a Keras-style 0/ subfolder is tolerated
    images.mkdir(parents=True)
    for p in sorted((synth_dir / "images").glob("*.png")):
        (images / p.name).write_bytes(p.read_bytes())
    r = _distill(tiny_model, tmp_path / "plain", tmp_path, "u", "--set", f"distill.cache_dir={tmp_path / 'c'}",
                 "--set", f"train.precision={precision}", quiet=False)
    assert f"cpu, {precision}" in capsys.readouterr().err  # the precision asked for is the one used
    assert "agreement" in r["validation"]
    assert r["student"]["val_iou"] is None and 0 <= r["student"]["agreement"] <= 1
    assert r["compression"] > 1 and r["teacher_forward_passes"] == 12
    info = read_model_info(tmp_path / "u" / "model.safetensors")
    assert info.arch == "unet" and info.args["base"] == 2
    assert info.preprocess == read_model_info(tiny_model).preprocess
    # a second run with the same teacher and images does no teacher work at all
    r2 = _distill(tiny_model, tmp_path / "plain", tmp_path, "u2", "--set", f"distill.cache_dir={tmp_path / 'c'}")
    assert r2["teacher_forward_passes"] == 0
    assert r2["target_cache"] == r["target_cache"]


def test_changed_teacher_invalidates_the_cache(tiny_model, synth_dir, tmp_path):
    teacher = tmp_path / "teacher.safetensors"
    teacher.write_bytes(tiny_model.read_bytes())
    cache = ["--set", f"distill.cache_dir={tmp_path / 'cache'}"]
    r1 = _distill(teacher, synth_dir / "images", tmp_path, "a", *cache)
    # retrain: a different teacher file at the same path
    assert main(["-q", "train", "--data", str(synth_dir), "--output-dir", str(tmp_path), "--name", "t2", "--epochs", "1",
                 "--input-size", "32", "--set", "model.args.base=4", "--set", "model.args.depth=2", "--seed", "7"]) == 0
    teacher.write_bytes((tmp_path / "t2" / "model.safetensors").read_bytes())
    r2 = _distill(teacher, synth_dir / "images", tmp_path, "b", *cache)
    assert r1["teacher_forward_passes"] == 12 and r2["teacher_forward_passes"] == 12
    assert r1["target_cache"] != r2["target_cache"]


def test_labelled_validation_with_baseline_and_keras_teacher(synth_dir, tmp_path):
    assert main(["-q", "train", "--data", str(synth_dir), "--output-dir", str(tmp_path), "--name", "k", "--model", "unet_keras",
                 "--set", "model.args.base=4", "--set", "model.args.depth=2", "--epochs", "1", "--input-size", "32"]) == 0
    r = _distill(tmp_path / "k" / "model.safetensors", synth_dir / "images", tmp_path, "d", "--data", str(synth_dir), "--baseline",
                 "--set", f"distill.cache_dir={tmp_path / 'cache'}")
    assert r["validation"] == "labels"
    assert r["teacher"]["val_iou"] is not None and r["student"]["val_iou"] is not None
    assert r["baseline_labels_only"]["val_iou"] is not None
    assert (tmp_path / "d" / "baseline" / "model.safetensors").is_file()
    # validation images never serve as transfer images
    assert r["teacher_forward_passes"] == 12


@pytest.mark.parametrize("extra", [
    ["--targets", "online"],
    ["--targets", "online", "--set", "distill.feature_weight=1.0", "--set", "distill.loss=soft_bce+cwd"],
    ["--loss", "cwd", "--temperature", "4", "--alpha", "0.5", "--data", "SYNTH"],
    ["--targets", "online", "--set", "distill.mixup=0.4", "--alpha", "0.5", "--data", "SYNTH"],
])
def test_loss_and_target_variants(tiny_model, synth_dir, tmp_path, extra):
    extra = [str(synth_dir) if e == "SYNTH" else e for e in extra]
    r = _distill(tiny_model, synth_dir / "images", tmp_path, "v", *extra)
    assert r["epochs"] == 2
    if "--loss" in extra:
        assert r["loss"] == "cwd" and r["temperature"] == 4.0
    if "online" in extra:
        assert r["teacher_forward_passes"] > 0


@pytest.mark.parametrize("option", ["distill.feature_weight=1", "distill.mixup=0.4"])
def test_feature_distillation_and_mixup_need_online_targets(tiny_model, synth_dir, tmp_path, capsys, option):
    rc = main(["-q", "distill", "--teacher", str(tiny_model), "--images", str(synth_dir / "images"),
               "--set", option, "--output-dir", str(tmp_path)])
    assert rc == 2 and "needs distill.targets: online" in capsys.readouterr().err


def test_mix_batch_blends_images_and_labels_alike():
    img = torch.arange(4.0).view(2, 1, 1, 2)
    mask = torch.tensor([1.0, 0.0]).view(2, 1, 1, 1)
    out = mix_batch({"image": img, "mask": mask, "index": torch.tensor([7, 8])}, 0.75, torch.tensor([1, 0]))
    assert torch.allclose(out["image"][0], 0.75 * img[0] + 0.25 * img[1])
    assert out["mask"].flatten().tolist() == [0.75, 0.25]
    assert out["index"].tolist() == [7, 8]  # anything else passes through


def test_distill_resume(tiny_model, synth_dir, tmp_path):
    _distill(tiny_model, synth_dir / "images", tmp_path, "r")
    cfg = tmp_path / "r" / "config.yaml"
    cfg.write_text(cfg.read_text().replace("epochs: 2", "epochs: 3"))
    assert main(["-q", "distill", "--resume", str(tmp_path / "r")]) == 0
    r = json.loads((tmp_path / "r" / "distill_report.json").read_text())
    assert r["epochs"] == 3


def test_distill_without_validation_keeps_the_latest_student(tiny_model, synth_dir, tmp_path):
    # No held-out images: the loss (about 8 with T=4, since soft BCE is scaled by T^2) is no score,
    # so the model file must still be written and the report made.
    r = _distill(tiny_model, synth_dir / "images", tmp_path, "nv", "--temperature", "4",
                 "--set", "distill.val_fraction=0")
    assert (tmp_path / "nv" / "model.safetensors").is_file()
    assert r["best_epoch"] == r["epochs"] == 2
    assert read_model_info(tmp_path / "nv" / "model.safetensors").summary["epoch"] == 2


def test_distill_lr_flag_sets_the_student_rate(synth_dir):
    from segdistill.cli import _config_from_args, build_parser

    args = build_parser().parse_args(["distill", "--teacher", "t.safetensors", "--images", str(synth_dir), "--lr", "0.003"])
    cfg = _config_from_args(args)
    assert cfg.distill.lr == 0.003


def test_overwrite_removes_the_previous_run(tiny_model, synth_dir, tmp_path):
    _distill(tiny_model, synth_dir / "images", tmp_path, "o")
    old_state = (tmp_path / "o" / "state.safetensors").stat().st_mtime_ns
    (tmp_path / "o" / "notes.txt").write_text("mine")
    from segdistill.config import load_config
    from segdistill.engine.run import new_run_dir

    cfg = load_config(None, [f"output_dir={tmp_path}", "name=o"])
    assert new_run_dir(cfg, overwrite=True) == tmp_path / "o"
    assert not (tmp_path / "o" / "state.safetensors").exists(), old_state
    assert not (tmp_path / "o" / "model.safetensors").exists()
    assert (tmp_path / "o" / "notes.txt").read_text() == "mine"  # only the run's own files go


def test_cpu_shaped_student_with_feature_distillation(tiny_model, synth_dir, tmp_path):
    """A space-to-depth, depthwise-separable student from the config alone; the plan's depth counts
    the stem as one halving; feature distillation pairs the levels of the same resolution."""
    args = ["-q", "distill", "--teacher", str(tiny_model), "--images", str(synth_dir / "images"), "--output-dir",
            str(tmp_path), "--name", "cpu", "--epochs", "2", "--batch-size", "4", "--input-size", "32",
            "--set", "train.samples_per_epoch=8", "--set", "distill.student.args.base=4",
            "--set", "distill.student.args.stem=unshuffle", "--set", "distill.student.args.block=dwsep",
            "--targets", "online", "--set", "distill.feature_weight=1.0"]
    assert main(args) == 0
    info = read_model_info(tmp_path / "cpu" / "model.safetensors")
    assert info.args["stem"] == "unshuffle" and info.args["block"] == "dwsep"
    plan = json.loads((tmp_path / "cpu" / "plan.json").read_text())
    assert info.args["depth"] == plan["applied"]["distill.student.args.depth"] == max(1, plan["plan"]["depth"] - 1)
    assert "space-to-depth" in plan["reasons"]["distill.student.args.depth"]


def test_feature_pairs_match_resolutions():
    """Student and teacher decoder levels pair by stride: a plain student's shallowest levels as
    before; a space-to-depth student's with the teacher's levels of the same resolution."""
    from segdistill.config import Config
    from segdistill.engine.distill import KDLoss
    from segdistill.models import create_model

    cfg = Config()
    cfg.distill.feature_weight = 1.0
    teacher = create_model("unet", base=8, depth=4)  # strides 8, 4, 2, 1
    for student, pairs in ((create_model("unet", base=4, depth=3), [(0, 1), (1, 2), (2, 3)]),
                           (create_model("unet", base=4, depth=3, stem="unshuffle"), [(0, 0), (1, 1), (2, 2)])):
        kd = KDLoss(cfg, None, student.feature_channels, teacher.feature_channels, student.feature_strides,
                    teacher.feature_strides)
        assert kd.pairs == pairs
        x = torch.randn(2, 1, 32, 32)
        s_logits, s_feats = student(x, return_features=True)
        t_logits, t_feats = teacher(x, return_features=True)
        assert torch.isfinite(kd(s_logits, t_logits.detach(), s_feats, t_feats))
    # without strides (models that do not say), the shallowest levels, as before
    assert KDLoss(cfg, None, [16, 8, 4], [64, 32, 16, 8]).pairs == [(0, 1), (1, 2), (2, 3)]
