import numpy as np
import pytest
import torch
from PIL import Image

from segdistill.config import AugmentConfig, DataConfig
from segdistill.data.dataset import Item, SegDataset
from segdistill.data.discovery import discover, mask_key, split_pairs
from segdistill.data.imageio import read_image, read_mask
from segdistill.data.preprocess import Preprocess
from segdistill.errors import DataError


def _pair(folder_img, folder_mask, stem, size=(20, 16), mask_name=None, value=255):
    folder_img.mkdir(parents=True, exist_ok=True)
    folder_mask.mkdir(parents=True, exist_ok=True)
    w, h = size
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w), dtype=np.uint8)).save(folder_img / f"{stem}.png")
    m = np.zeros((h, w), np.uint8)
    m[: h // 2] = value
    Image.fromarray(m).save(folder_mask / f"{mask_name or stem}.png")


def test_flat_layout_with_mask_suffixes(tmp_path):
    for i, suffix in enumerate(["", "_mask", "_gt", "_label"]):
        _pair(tmp_path / "images", tmp_path / "masks", f"im{i}", mask_name=f"im{i}{suffix}")
    split = discover(DataConfig(root=str(tmp_path), val_fraction=0.25))
    assert split.layout == "flat"
    assert len(split.train) == 3 and len(split.val) == 1
    assert {p.stem for p in split.train + split.val} == {"im0", "im1", "im2", "im3"}


def test_split_layout(tmp_path):
    for part, n in (("train", 3), ("val", 2)):
        for i in range(n):
            _pair(tmp_path / part / "images", tmp_path / part / "masks", f"{part}{i}")
    split = discover(DataConfig(root=str(tmp_path)))
    assert split.layout == "split" and len(split.train) == 3 and len(split.val) == 2


def test_keras_layout_with_zero_subfolders(tmp_path):
    for part, n in (("train", 3), ("val", 2)):
        for i in range(n):
            _pair(tmp_path / f"{part}_images" / "0", tmp_path / f"{part}_masks" / "0", f"{part}{i}")
    split = discover(DataConfig(root=str(tmp_path)))
    assert split.layout == "keras" and len(split.train) == 3 and len(split.val) == 2
    # custom folder names come from the config
    (tmp_path / "train_images").rename(tmp_path / "ti")
    split = discover(DataConfig(root=str(tmp_path), keras_names=["ti", "train_masks", "val_images", "val_masks"]))
    assert len(split.train) == 3


def test_explicit_paths(tmp_path):
    _pair(tmp_path / "a", tmp_path / "b", "x")
    _pair(tmp_path / "a", tmp_path / "b", "y")
    split = discover(DataConfig(train_images=str(tmp_path / "a"), train_masks=str(tmp_path / "b"), val_fraction=0.5))
    assert split.layout == "explicit" and len(split.train) == 1 and len(split.val) == 1


def test_seeded_split_is_deterministic_and_val_stems():
    from segdistill.data.discovery import Pair

    pairs = [Pair(str(i), None, None) for i in range(30)]  # type: ignore[arg-type]
    a = split_pairs(pairs, 0.2, seed=3)
    b = split_pairs(list(reversed(pairs)), 0.2, seed=3)
    assert [p.stem for p in a[1]] == [p.stem for p in b[1]] and len(a[1]) == 6
    tr, va = split_pairs(pairs, 0.2, 0, val_stems=["24", "25"])
    assert [p.stem for p in va] == ["24", "25"] and len(tr) == 28
    with pytest.raises(DataError, match="val_stems"):
        split_pairs(pairs, 0.2, 0, val_stems=["99"])


def test_mask_key():
    assert mask_key("cell_mask") == "cell" and mask_key("a_GT") == "a" and mask_key("_mask") == "_mask"


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "I;16", "LA", "1"])
def test_image_modes(tmp_path, mode):
    arr = np.random.default_rng(0).integers(0, 255, (9, 7, 3), dtype=np.uint8)
    im = Image.fromarray(arr).convert(mode) if mode != "I;16" else Image.fromarray(arr[..., 0].astype(np.uint16) * 257)
    path = tmp_path / ("x.tif" if mode == "I;16" else "x.png")
    im.save(path)
    for channels, c in (("gray", 1), ("rgb", 3)):
        x = read_image(path, channels)
        assert x.shape == (9, 7, c) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1


def test_16bit_tiff_scaled(tmp_path):
    arr = np.full((4, 4), 65535, np.uint16)
    arr[0, 0] = 0
    Image.fromarray(arr).save(tmp_path / "x.tif")
    x = read_image(tmp_path / "x.tif", "gray")
    assert x[0, 0, 0] == 0 and x[1, 1, 0] == pytest.approx(1.0)


@pytest.mark.parametrize("values", [(0, 1), (0, 255), (0, 7)])
def test_mask_values_mean_the_same(tmp_path, values):
    m = np.zeros((6, 6), np.uint8)
    m[:3] = values[1]
    Image.fromarray(m).save(tmp_path / "m.png")
    assert read_mask(tmp_path / "m.png").sum() == 18


def test_rgb_palette_and_jpeg_masks(tmp_path):
    m = np.zeros((8, 8, 3), np.uint8)
    m[:4, :, 0] = 200
    Image.fromarray(m).save(tmp_path / "rgb.png")
    Image.fromarray(m).convert("P", palette=Image.ADAPTIVE, colors=2).save(tmp_path / "pal.png")
    Image.fromarray(m[..., 0]).save(tmp_path / "j.jpg", quality=60)
    for name in ("rgb.png", "pal.png", "j.jpg"):
        assert read_mask(tmp_path / name)[:4].all() and not read_mask(tmp_path / name)[4:].any(), name


def test_augmentation_moves_image_and_mask_together():
    # The image *is* the mask pattern, so after any geometric augmentation they must still agree.
    rng = np.random.default_rng(0)
    mask = np.zeros((48, 48), bool)
    mask[10:30, 5:20] = True
    mask[35:45, 30:46] = True
    aug = AugmentConfig(affine=1.0, elastic=1.0, color_p=0.0, noise_p=0.0, blur_p=0.0)
    pre = Preprocess(mean=[0.0], std=[1.0])

    class _DS(SegDataset):
        def _load(self, i):
            return mask[..., None].astype(np.float32), mask, None

    ds = _DS([Item(None, None)], pre, train=True, input_size=40, augment=aug, length=16, seed=1)  # type: ignore[arg-type]
    ds.set_epoch(1)
    agree = [((s["image"] > 0.5) == (s["mask"] > 0.5)).float().mean().item() for s in (ds[i] for i in range(16))]
    assert min(agree) > 0.97
    assert rng is not None


def test_samples_are_reproducible_per_epoch_and_index(synth_dir):
    split = discover(DataConfig(root=str(synth_dir)))
    items = [Item(p.image, p.mask) for p in split.train]
    a = SegDataset(items, Preprocess(), train=True, input_size=32, augment=AugmentConfig(), length=8, seed=5)
    b = SegDataset(items, Preprocess(), train=True, input_size=32, augment=AugmentConfig(), length=8, seed=5)
    a.set_epoch(3)
    b.set_epoch(3)
    assert torch.equal(a[4]["image"], b[4]["image"]) and torch.equal(a[4]["mask"], b[4]["mask"])
    b.set_epoch(4)
    assert not torch.equal(a[4]["image"], b[4]["image"])


def test_mixed_sizes_and_small_images(tmp_path):
    _pair(tmp_path / "images", tmp_path / "masks", "big", size=(50, 40))
    _pair(tmp_path / "images", tmp_path / "masks", "small", size=(7, 5))
    split = discover(DataConfig(root=str(tmp_path), val_fraction=0))
    ds = SegDataset([Item(p.image, p.mask) for p in split.train], Preprocess(), train=True, input_size=32, length=4)
    ds.set_epoch(1)
    assert all(ds[i]["image"].shape == (1, 32, 32) for i in range(4))
    ev = SegDataset([Item(p.image, p.mask) for p in split.train], Preprocess(), train=False)
    assert {tuple(ev[i]["mask"].shape) for i in range(2)} == {(1, 40, 50), (1, 5, 7)}


def test_invert_and_max_side(tmp_path):
    _pair(tmp_path / "images", tmp_path / "masks", "a", size=(64, 32))
    split = discover(DataConfig(root=str(tmp_path), val_fraction=0))
    pre = Preprocess(invert=True, max_side=32)
    ev = SegDataset([Item(p.image, p.mask) for p in split.train], pre, train=False, resize_masks=False)
    s = ev[0]
    assert s["image"].shape == (1, 16, 32)  # resized for the model
    assert s["mask"].shape == (1, 32, 64)  # metrics at the mask's own size
    assert s["mask"][0, :16].sum() == 0 and s["mask"][0, 16:].all()  # inverted


def test_synthetic_data_is_nontrivial(synth_dir):
    masks = sorted((synth_dir / "masks").glob("*.png"))
    fractions = [read_mask(m).mean() for m in masks]
    assert len(masks) == 12 and 0.03 < np.mean(fractions) < 0.5
    img = read_image(sorted((synth_dir / "images").glob("*.png"))[0], "gray")[..., 0]
    m = read_mask(masks[0])
    # objects are brighter on average, but intensities overlap: no single threshold separates them
    assert img[m].mean() > img[~m].mean()
    assert img[m].min() < img[~m].max()


def test_image_stem_with_mask_suffix_pairs_with_equal_mask_stem(tmp_path):
    _pair(tmp_path / "images", tmp_path / "masks", "cell_gt")  # same stem on both sides
    _pair(tmp_path / "images", tmp_path / "masks", "b", mask_name="b_mask")
    split = discover(DataConfig(root=str(tmp_path), val_fraction=0))
    assert sorted(p.stem for p in split.train) == ["b", "cell_gt"]


def test_dataset_longer_than_its_items_works_before_set_epoch(synth_dir):
    split = discover(DataConfig(root=str(synth_dir)))
    items = [Item(p.image, p.mask) for p in split.train]
    ds = SegDataset(items, Preprocess(), train=True, input_size=32, length=3 * len(items))
    assert ds[len(ds) - 1]["image"].shape == (1, 32, 32)  # no IndexError from a stale order


@pytest.mark.parametrize("layout", ["flat", "split", "keras"])
def test_layout_without_root_is_a_data_error(layout):
    with pytest.raises(DataError, match=f"data.layout {layout} needs data.root"):
        discover(DataConfig(layout=layout))
