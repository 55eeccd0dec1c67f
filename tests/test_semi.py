"""Self-training on unlabelled images (semi.*): schedule, the mixed training set, pseudo-labels,
the end-to-end run and resuming it."""

import csv

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from segdistill.checkpoint import read_model_info
from segdistill.cli import main
from segdistill.config import SemiConfig, load_config
from segdistill.data.dataset import Item, SegDataset
from segdistill.data.preprocess import Preprocess
from segdistill.engine.semi import MixedDataset, flip_probabilities, make_pseudo_labels, refresh_due
from segdistill.errors import ConfigError
from segdistill.inference.tta import tta_probabilities

from .conftest import TINY_TRAIN
from .helpers import assert_resumed_run_matches, history_rows, run_killed_at


def test_refresh_schedule():
    semi = SemiConfig(start_epoch=3, refresh_every=4)
    assert [e for e in range(1, 16) if refresh_due(e, semi)] == [3, 7, 11, 15]
    once = SemiConfig(start_epoch=2, refresh_every=0)
    assert [e for e in range(1, 10) if refresh_due(e, once)] == [2]


def test_semi_config_is_checked():
    with pytest.raises(ConfigError, match="semi.fraction must lie between 0 and 1"):
        load_config(overrides=["semi.fraction=1"])
    with pytest.raises(ConfigError, match="semi.start_epoch must be at least 1"):
        load_config(overrides=["semi.start_epoch=0"])
    with pytest.raises(ConfigError, match="did you mean 'refresh_every'"):
        load_config(overrides=["semi.refresh_evry=3"])


def _write(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def test_mixed_dataset_draws_the_asked_share_from_pseudo_labels(tmp_path):
    pre = Preprocess(channels="gray", mean=[0.5], std=[0.25])
    rng = np.random.default_rng(0)
    labelled = [Item(_write(tmp_path / f"l{i}.png", rng.integers(0, 255, (24, 24), dtype=np.uint8)),
                     _write(tmp_path / f"l{i}_mask.png", (rng.random((24, 24)) > 0.5).astype(np.uint8) * 255))
                for i in range(3)]
    # A pseudo-label of constant 0.4 is recognisable: labels are 0 or 1.
    pseudo = [Item(_write(tmp_path / f"u{i}.png", rng.integers(0, 255, (24, 24), dtype=np.uint8)),
                   soft=_write(tmp_path / f"p{i}.png", np.full((24, 24), 102, np.uint8)))
              for i in range(2)]
    lab = SegDataset(labelled, pre, train=True, input_size=16, length=10, seed=0)
    pse = SegDataset(pseudo, pre, train=True, input_size=16, length=10, seed=1)
    mixed = MixedDataset(lab, pse, total=10, fraction=0.3, seed=0)

    def pseudo_count() -> int:
        return sum(bool(torch.isclose(mixed[i]["mask"], torch.tensor(0.4), atol=0.01).all()) for i in range(len(mixed)))

    mixed.set_epoch(1)
    assert len(mixed) == 10 and pseudo_count() == 0  # off until switched on
    assert [int(mixed[i]["index"]) for i in range(10)] == [int(lab[i]["index"]) for i in range(10)]
    mixed.active = True
    mixed.set_epoch(1)
    assert len(mixed) == 10 and pseudo_count() == 3
    batch = torch.utils.data.default_collate([mixed[i] for i in range(len(mixed))])
    assert set(batch) == {"image", "mask", "index"} and batch["mask"].shape == (10, 1, 16, 16)
    mixed.set_epoch(2)
    order1 = [int(mixed[i]["index"]) for i in range(10)]
    mixed.set_epoch(2)
    assert order1 == [int(mixed[i]["index"]) for i in range(10)]  # seeded per epoch
    tiny = MixedDataset(lab, pse, total=2, fraction=0.9, seed=0)  # rounding never leaves a kind out
    tiny.active = True
    tiny.set_epoch(1)
    assert tiny.n_labelled == 1 and len(tiny) == 2 and tiny[0]["mask"].shape == tiny[1]["mask"].shape


class _Shift(nn.Module):
    """Not flip-equivariant: its output depends on where a pixel is (x coordinate)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ramp = torch.linspace(-2, 2, x.shape[-1]).expand_as(x[:, :1])
        return x[:, :1] + ramp


def test_flip_probabilities_average_over_flips():
    x = torch.randn(1, 1, 8, 8)
    model = _Shift()
    plain = flip_probabilities(model, x, tta=False)
    assert torch.allclose(plain, torch.sigmoid(model(x)))
    # The ramp model is not flip-symmetric: the views differ and their average is the TTA one.
    averaged = flip_probabilities(model, x, tta=True)
    assert torch.allclose(averaged, tta_probabilities(model, x, 4), atol=1e-6)
    assert not torch.allclose(averaged, plain, atol=1e-3)
    # A model that moves its answer 1 px left, as one trained on labels drawn 1 px left would:
    # re-aligned for that offset the four views agree with the plain pass.
    shifted = lambda t: torch.roll(t[:, :1], -1, -1)  # noqa: E731
    inner = (..., slice(2, -2), slice(2, -2))
    assert torch.allclose(flip_probabilities(shifted, x, True, label_offset=(0.0, -1.0))[inner],
                          torch.sigmoid(shifted(x))[inner], atol=1e-5)


def test_pseudo_labels_are_the_models_probabilities_at_image_size(tmp_path):
    images = [_write(tmp_path / "a.png", np.full((20, 30), 200, np.uint8)), _write(tmp_path / "b.png", np.zeros((12, 10), np.uint8))]
    pre = Preprocess(channels="gray", mean=[0.0], std=[1.0])
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.Conv2d(2, 2, 3, padding=1, bias=False), nn.Conv2d(2, 1, 1, bias=False))
    with torch.no_grad():  # p = sigmoid(4x - 2): 0.895 on a 200-grey image, 0.119 on black
        model[0].weight.fill_(2.0)
        model[0].bias.fill_(-1.0)
        model[1].weight.zero_()
        model[1].weight[:, :, 1, 1] = torch.eye(2)
        model[2].weight.fill_(1.0)
    out = make_pseudo_labels(model, pre, images, tmp_path / "pseudo", torch.device("cpu"), tta=True, channels_last=True)
    a, b = (np.asarray(Image.open(p)) for p in out)
    assert a.shape == (20, 30) and b.shape == (12, 10)
    assert abs(int(a[0, 0]) - round(255 / (1 + np.exp(-(4 * 200 / 255 - 2))))) <= 1
    assert abs(int(b[0, 0]) - round(255 / (1 + np.exp(2)))) <= 1
    assert model[1].weight.is_contiguous()  # the caller's model is not converted to channels_last


def _semi_args(data, unlabelled, out, name, epochs, extra=()):
    return ["train", "--data", str(data), "--output-dir", str(out), "--name", name, "--epochs", str(epochs),
            "--batch-size", "4", "--input-size", "32", "--set", "model.args.base=4", "--set", "model.args.depth=2",
            "--set", "train.samples_per_epoch=24", "--unlabelled", str(unlabelled), "--overwrite", *extra]


@pytest.fixture(scope="module")
def unlabelled_dir(tmp_path_factory):
    from segdistill.data.synth import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("unlab"), count=5, size=48, seed=9) / "images"


@pytest.mark.slow
def test_train_with_unlabelled_images_end_to_end(synth_dir, unlabelled_dir, tmp_path, capsys):
    args = _semi_args(synth_dir, unlabelled_dir, tmp_path, "s", 3,
                      ["--set", "semi.start_epoch=2", "--set", "semi.refresh_every=1", "--set", "semi.fraction=0.5"])
    assert main(args) == 0
    err = capsys.readouterr().err
    assert err.count("pseudo-labels for 5 unlabelled images made by the epoch-") == 2  # epochs 2 and 3
    labels = sorted((tmp_path / "s" / "pseudo").glob("*.png"))
    assert len(labels) == 5
    sizes = sorted(Image.open(p).size for p in labels)
    assert sizes == sorted(Image.open(p).size for p in sorted(unlabelled_dir.glob("*.png")))
    assert read_model_info(tmp_path / "s" / "model.safetensors").summary["unlabelled_images"] == 5
    # Labelled images given as unlabelled are left out; nothing left is a clear error.
    rc = main(_semi_args(synth_dir, synth_dir / "images", tmp_path, "t", 1))
    assert rc == 2 and "semi.images: no unlabelled images left" in capsys.readouterr().err


@pytest.mark.slow
def test_resume_with_pseudo_labels_matches_uninterrupted_run(synth_dir, unlabelled_dir, tmp_path, capsys):
    # Pseudo-labels made once, at epoch 2; a run killed in epoch 4 (its state saved after epoch 3)
    # must train on the labels on disk, not remake them from its later model.
    extra = ["--set", "semi.start_epoch=2", "--set", "semi.refresh_every=0", "--set", "semi.fraction=0.4"]
    assert main(["-q", *_semi_args(synth_dir, unlabelled_dir, tmp_path, "full", 5, extra)]) == 0
    # 24 crops in batches of 4: 6 steps an epoch, so step 21 is mid-epoch 4.
    run_killed_at(_semi_args(synth_dir, unlabelled_dir, tmp_path, "cut", 5, extra), "train_step:21")
    assert history_rows(tmp_path / "cut") == 3
    capsys.readouterr()
    assert main(["train", "--resume", str(tmp_path / "cut")]) == 0
    assert "pseudo-labels for" not in capsys.readouterr().err  # reused, not remade
    assert_resumed_run_matches(tmp_path / "full", tmp_path / "cut", 5)


def test_before_start_epoch_training_is_unchanged(synth_dir, unlabelled_dir, tmp_path):
    # Until pseudo-labels start, a run with unlabelled images sees exactly the batches of one without.
    base = ["-q", "train", "--data", str(synth_dir), "--output-dir", str(tmp_path), *TINY_TRAIN]
    assert main([*base, "--name", "a"]) == 0
    assert main([*base, "--name", "b", "--unlabelled", str(unlabelled_dir), "--set", "semi.start_epoch=3"]) == 0
    ha = [r["train_loss"] for r in csv.DictReader(open(tmp_path / "a" / "history.csv"))]
    hb = [r["train_loss"] for r in csv.DictReader(open(tmp_path / "b" / "history.csv"))]
    assert len(ha) == 2 and ha == hb
    assert not (tmp_path / "b" / "pseudo").exists()


def test_a_broken_unlabelled_image_fails_before_training(synth_dir, tmp_path, capsys):
    folder = tmp_path / "unlab"
    _write(folder / "ok.png", np.zeros((16, 16), np.uint8))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    args = ["train", "--data", str(synth_dir), "--output-dir", str(tmp_path), "--name", "x", *TINY_TRAIN,
            "--unlabelled", str(folder), "--skip-check"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "broken.png" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x" / "history.csv").exists()
    assert main([*args[:-3], "--unlabelled", str(tmp_path / "nowhere")]) == 2
    assert "semi.images (--unlabelled):" in capsys.readouterr().err


def test_pseudo_labels_of_other_images_are_remade_on_resume(tmp_path):
    from segdistill.engine.semi import labels_match

    images = [_write(tmp_path / f"{n}.png", np.zeros((8, 8), np.uint8)) for n in "abc"]
    model = nn.Conv2d(1, 1, 1)
    make_pseudo_labels(model, Preprocess(), images, tmp_path / "pseudo", torch.device("cpu"), tta=False)
    assert labels_match(tmp_path / "pseudo", images)
    assert not labels_match(tmp_path / "pseudo", images[:2])  # an image removed: the labels shift
    assert not labels_match(tmp_path / "pseudo", images[::-1])
    (tmp_path / "pseudo" / "00001.png").unlink()
    assert not labels_match(tmp_path / "pseudo", images)


def test_pseudo_labels_made_in_shards_equal_one_pass(tmp_path):
    # Under torchrun each rank labels images rank::world_size; together they are the one-process set.
    from segdistill.engine.semi import write_label_index

    rng = np.random.default_rng(0)
    images = [_write(tmp_path / "u" / f"{i}.png", (rng.random((12, 10)) * 255).astype(np.uint8)) for i in range(5)]
    torch.manual_seed(0)
    model = nn.Conv2d(1, 1, 3, padding=1)
    whole = make_pseudo_labels(model, Preprocess(), images, tmp_path / "one", torch.device("cpu"), tta=True)
    for k in range(2):
        make_pseudo_labels(model, Preprocess(), images, tmp_path / "two", torch.device("cpu"), tta=True, shard=(k, 2))
    from segdistill.engine.semi import labels_match

    assert not labels_match(tmp_path / "two", images)  # no index until every share is written
    write_label_index(tmp_path / "two", images)
    assert labels_match(tmp_path / "two", images)
    assert [p.read_bytes() for p in whole] == [(tmp_path / "two" / p.name).read_bytes() for p in whole]
