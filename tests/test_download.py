"""segdistill data download / data list, offline: a local HTTP server serves tiny archives built here in
the real archives' layouts; faults (checksum, truncation, dropped connection) are injected by the server
per request, so nothing depends on timing."""

from __future__ import annotations

import hashlib
import io
import socket
import tarfile
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segdistill.cli import main
from segdistill.config import DataConfig
from segdistill.data.discovery import discover
from segdistill.data.download import extract
from segdistill.data.standard import DATASETS, DOWNLOADS, MIRROR_ENV, StandardDataset, fetch_dataset
from segdistill.errors import DataError

# ---------------------------------------------------------------------------------------------
# Tiny archives in the real layouts


def _encode(arr: np.ndarray, fmt: str, orientation: int = 1) -> bytes:
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(arr).save(buf, format=fmt, **({"quality": 95, "exif": exif.tobytes()} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _photo(seed: int, h: int = 24, w: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _tar(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tf.addfile(info)
    return buf.getvalue()


def _box_mask(h: int = 24, w: int = 32) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[6:18, 8:24] = 255
    return m


def kvasir_archive() -> tuple[bytes, dict[str, bytes]]:
    """kvasir-seg.zip as published: Kvasir-SEG/images/ID.jpg, Kvasir-SEG/masks/ID.jpg (3-channel JPEG
    masks). The third image carries an EXIF rotation (90 degrees) that its mask does not."""
    images = {f"cju{i}abc": _encode(_photo(i), "JPEG", orientation=6 if i == 2 else 1) for i in range(3)}
    members = {f"Kvasir-SEG/images/{k}.jpg": v for k, v in images.items()}
    members.update({f"Kvasir-SEG/masks/{k}.jpg": _encode(np.repeat(_box_mask()[..., None], 3, 2), "JPEG") for k in images})
    members["Kvasir-SEG/kavsir_bboxes.json"] = b"{}"
    return _zip(members), images


def _trimap() -> np.ndarray:
    t = np.full((24, 32), 2, np.uint8)  # background
    t[6:18, 8:24] = 3  # border band
    t[8:16, 10:22] = 1  # pet
    return t


PET_NAMES = {"train": ["Abyssinian_1", "beagle_2", "Bengal_3"], "test": ["pug_4", "boxer_5"]}


def pets_archives() -> tuple[bytes, bytes]:
    """images.tar.gz (images/NAME.jpg, one of them a PNG named .jpg, plus a stray .mat) and
    annotations.tar.gz (annotations/{trainval,test}.txt, trimaps/NAME.png and AppleDouble ._ files, xmls/)."""
    names = PET_NAMES["train"] + PET_NAMES["test"]
    images = {f"images/{n}.jpg": _encode(_photo(i), "PNG" if n == "beagle_2" else "JPEG") for i, n in enumerate(names)}
    images["images/Abyssinian_100.mat"] = b"not an image"
    ann = {f"annotations/trimaps/{n}.png": _encode(_trimap(), "PNG") for n in names}
    ann.update({f"annotations/trimaps/._{n}.png": b"\x00\x05\x16\x07" for n in names})
    ann["annotations/trainval.txt"] = "".join(f"{n} 1 1 1\n" for n in PET_NAMES["train"] + ["missing_9"]).encode()
    ann["annotations/test.txt"] = b"#Image CLASS-ID SPECIES BREED ID\n" + "".join(
        f"{n} 2 2 2\n" for n in PET_NAMES["test"]).encode()
    ann["annotations/xmls/Abyssinian_1.xml"] = b"<annotation/>"
    return _tar(images), _tar(ann)


def _tiff_stack(pages: list[np.ndarray]) -> bytes:
    frames = [Image.fromarray(p) for p in pages]
    buf = io.BytesIO()
    frames[0].save(buf, format="TIFF", save_all=True, append_images=frames[1:])
    return buf.getvalue()


def isbi_files() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    labels = [np.where(rng.random((16, 16)) < 0.25, 0, 255).astype(np.uint8) for _ in range(3)]  # 0 = membrane
    return {"train-volume.tif": _tiff_stack([rng.integers(0, 255, (16, 16), dtype=np.uint8) for _ in range(3)]),
            "train-labels.tif": _tiff_stack(labels),
            "test-volume.tif": _tiff_stack([rng.integers(0, 255, (16, 16), dtype=np.uint8) for _ in range(2)])}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def entry(name: str, files: dict[str, bytes], checksums: bool = True) -> StandardDataset:
    """The registry entry ``name`` with the tiny files' lengths and checksums in place of the real ones."""
    ds = DATASETS[name]
    return replace(ds, sources=tuple(
        replace(s, size=len(files[s.filename]) if checksums else None, sha256=_sha(files[s.filename]) if checksums else None)
        for s in ds.sources))


def _visible(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) if folder.exists() else []


def _mask_values(folder: Path) -> set[int]:
    return set().union(*(np.unique(np.asarray(Image.open(p))).tolist() for p in folder.iterdir()))


# ---------------------------------------------------------------------------------------------
# Tests


def test_data_list_and_unknown_name(capsys):
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("isbi2012", "kvasir-seg", "oxford-pets"):
        assert name in out
    assert "CC BY-SA 4.0" in out and "https://datasets.simula.no/kvasir-seg/" in out
    assert main(["data", "download", "kvasir"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown data set 'kvasir'" in err and "did you mean kvasir-seg?" in err


def test_kvasir_download_cli_then_data_check(server, tmp_path, monkeypatch, capsys):
    archive, images = kvasir_archive()
    server.serve("kvasir-seg", {"kvasir-seg.zip": archive})
    monkeypatch.setitem(DATASETS, "kvasir-seg", entry("kvasir-seg", {"kvasir-seg.zip": archive}))
    dest = tmp_path / "kvasir"
    assert main(["-q", "data", "download", "kvasir-seg", str(dest), "--mirror", server.url]) == 0
    assert "3 pairs written to" in capsys.readouterr().out
    assert sorted(p.name for p in dest.iterdir()) == ["README.txt", "images", "masks"]  # no downloads, no staging
    written = {p.name: p for p in (dest / "images").iterdir()}
    assert sorted(written) == ["cju0abc.jpg", "cju1abc.jpg", "cju2abc.png"]
    assert all(written[f"{k}.jpg"].read_bytes() == images[k] for k in ("cju0abc", "cju1abc"))  # bytes unchanged
    rotated = Image.open(written["cju2abc.png"])  # the stored grid, without the tag: aligned with its mask
    assert rotated.size == (32, 24) and rotated.getexif().get(0x0112) is None
    assert sorted(p.name for p in (dest / "masks").iterdir()) == [f"{k}.png" for k in sorted(images)]
    assert _mask_values(dest / "masks") == {0, 255}
    readme = (dest / "README.txt").read_text()
    assert readme.startswith("segdistill data set: kvasir-seg\n")
    assert "research and educational purposes" in readme and "255 = polyp" in readme
    assert f"SHA-256 {_sha(archive)} (matches the published checksum)" in readme
    assert main(["-q", "data", "check", str(dest)]) == 0
    # a second run finds the data set there and does nothing
    n = len(server.requests)
    assert main(["-q", "data", "download", "kvasir-seg", str(dest), "--mirror", server.url]) == 0
    assert "already holds kvasir-seg" in capsys.readouterr().out and len(server.requests) == n


def test_oxford_pets_trimaps_and_splits(server, tmp_path):
    images, annotations = pets_archives()
    files = {"images.tar.gz": images, "annotations.tar.gz": annotations}
    server.serve("oxford-pets", files)
    result = fetch_dataset(entry("oxford-pets", files), tmp_path / "pets", mirror=server.url, progress=False)
    dest = result.path
    assert result.conversion.pairs == {"train": 3, "test": 2}
    assert result.conversion.skipped == ["missing_9: listed in trainval.txt, no image"]
    assert _visible(dest) == ["README.txt", "test", "train"] and not (dest / DOWNLOADS).exists()
    assert sorted(p.name for p in (dest / "train" / "images").iterdir()) == ["Abyssinian_1.jpg", "Bengal_3.jpg",
                                                                             "beagle_2.png"]  # a PNG named .jpg
    mask = np.asarray(Image.open(dest / "train" / "masks" / "Abyssinian_1.png"))
    trimap = _trimap()
    assert (mask[trimap == 1] == 255).all() and (mask[trimap == 3] == 255).all() and (mask[trimap == 2] == 0).all()
    assert "3 (border, 'not classified') -> 255" in (dest / "README.txt").read_text()
    split = discover(DataConfig(root=str(dest), val_fraction=0.34))
    assert split.layout == "split" and len(split.train) + len(split.val) == 3  # test/ stays out of training


def test_isbi2012_stacks_without_published_checksums(server, tmp_path, caplog):
    files = isbi_files()
    server.serve("isbi2012", files)
    with caplog.at_level("INFO", logger="segdistill"):
        result = fetch_dataset(entry("isbi2012", files, checksums=False), tmp_path / "membrane", mirror=server.url,
                               progress=False)
    dest = result.path
    assert f"train-labels.tif: SHA-256 {_sha(files['train-labels.tif'])} (no published checksum" in caplog.text
    assert result.conversion.pairs == {"train": 3} and result.conversion.unlabelled == 2
    assert _visible(dest) == ["README.txt", "train", "unlabeled"]
    label = np.asarray(Image.open(io.BytesIO(files["train-labels.tif"])))  # first page
    assert (np.asarray(Image.open(dest / "train" / "masks" / "0.png")) == label).all()  # 255 = cell interior, as published
    readme = (dest / "README.txt").read_text()
    assert "255 = cell interior, 0 = membrane" in readme and "no published checksum to compare with" in readme
    assert len(discover(DataConfig(root=str(dest / "train"), val_fraction=0.0)).train) == 3


def test_checksum_mismatch_deletes_the_file_and_a_rerun_succeeds(server, tmp_path, capsys):
    archive, _ = kvasir_archive()
    ds = entry("kvasir-seg", {"kvasir-seg.zip": archive})
    corrupted = bytearray(archive)
    corrupted[len(corrupted) // 2] ^= 0xFF
    server.serve("kvasir-seg", {"kvasir-seg.zip": bytes(corrupted)})
    dest = tmp_path / "kvasir"
    with pytest.raises(DataError) as e:
        fetch_dataset(ds, dest, mirror=server.url, progress=False)
    msg = str(e.value)
    assert msg.startswith("kvasir-seg.zip: SHA-256 mismatch") and f"expected {_sha(archive)}" in msg
    assert f"got {_sha(bytes(corrupted))}" in msg and "deleted" in msg and "\n" not in msg
    assert not dest.exists()  # nothing behind: this run created the folder, and removed it
    server.serve("kvasir-seg", {"kvasir-seg.zip": archive})
    assert fetch_dataset(ds, dest, mirror=server.url, progress=False).conversion.pairs == {"": 3}


def test_truncated_download_fails_then_resumes_with_range(server, tmp_path):
    archive, _ = kvasir_archive()
    server.serve("kvasir-seg", {"kvasir-seg.zip": archive})
    server.faults["/kvasir-seg/kvasir-seg.zip"] = ["truncate"]
    ds, dest = entry("kvasir-seg", {"kvasir-seg.zip": archive}), tmp_path / "kvasir"
    with pytest.raises(DataError, match=r"truncated download: received [\d,]+ of [\d,]+ bytes \(Content-Length\)"):
        fetch_dataset(ds, dest, mirror=server.url, progress=False)
    assert _visible(dest) == []  # only the hidden part, kept to resume
    part = dest / DOWNLOADS / "kvasir-seg.zip.part"
    assert part.stat().st_size == len(archive) // 2
    assert fetch_dataset(ds, dest, mirror=server.url, progress=False).conversion.pairs == {"": 3}
    assert server.requests[-1] == ("/kvasir-seg/kvasir-seg.zip", f"bytes={len(archive) // 2}-")
    assert _visible(dest) == ["README.txt", "images", "masks"] and not (dest / DOWNLOADS).exists()


def test_dropped_connection_fails_then_a_rerun_completes(server, tmp_path):
    images, annotations = pets_archives()
    files = {"images.tar.gz": images, "annotations.tar.gz": annotations}
    server.serve("oxford-pets", files)
    server.faults["/oxford-pets/annotations.tar.gz"] = ["drop"]
    ds, dest = entry("oxford-pets", files), tmp_path / "pets"
    with pytest.raises(DataError, match=r"annotations.tar.gz: download interrupted after [\d,]+ of [\d,]+ bytes"):
        fetch_dataset(ds, dest, mirror=server.url, progress=False)
    assert _visible(dest) == []
    assert (dest / DOWNLOADS / "images.tar.gz").is_file()  # complete and verified: not fetched again
    assert fetch_dataset(ds, dest, mirror=server.url, progress=False).conversion.pairs == {"train": 3, "test": 2}
    later = [r for r in server.requests[2:]]
    assert [path for path, _ in later] == ["/oxford-pets/annotations.tar.gz"]
    assert later[0][1] in (None, *(f"bytes={n}-" for n in range(1, len(annotations))))  # resumed, or clean


def test_a_server_that_ignores_range_starts_clean(server, tmp_path):
    archive, _ = kvasir_archive()
    server.serve("kvasir-seg", {"kvasir-seg.zip": archive})
    server.ignore_range = True
    dest = tmp_path / "kvasir"
    (dest / DOWNLOADS).mkdir(parents=True)
    (dest / DOWNLOADS / "kvasir-seg.zip.part").write_bytes(b"left by an interrupted run, and not even a prefix")
    result = fetch_dataset(entry("kvasir-seg", {"kvasir-seg.zip": archive}), dest, mirror=server.url, progress=False)
    assert result.conversion.pairs == {"": 3}
    assert server.requests[-1][1] is not None  # it asked to resume; the whole file came back and was kept


def test_network_errors_and_size_mismatch(server, tmp_path):
    archive, _ = kvasir_archive()
    ds, dest = entry("kvasir-seg", {"kvasir-seg.zip": archive}), tmp_path / "kvasir"
    with pytest.raises(DataError, match=r"^kvasir-seg.zip: network error: .*answered HTTP 404"):
        fetch_dataset(ds, dest, mirror=server.url, progress=False)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(DataError, match=r"network error: cannot reach .*SEGDISTILL_DATA_MIRROR"):
        fetch_dataset(ds, dest, mirror=closed, progress=False)
    server.serve("kvasir-seg", {"kvasir-seg.zip": archive + b"more"})
    with pytest.raises(DataError, match=r"offers [\d,]+ bytes, but the published file has [\d,]+"):
        fetch_dataset(ds, dest, mirror=server.url, progress=False)
    assert not dest.exists()


def test_mirror_from_the_environment_and_a_folder_that_holds_other_files(server, tmp_path, monkeypatch):
    archive, _ = kvasir_archive()
    mirror = tmp_path / "mirror"
    (mirror / "kvasir-seg").mkdir(parents=True)
    (mirror / "kvasir-seg" / "kvasir-seg.zip").write_bytes(archive)
    monkeypatch.setenv(MIRROR_ENV, mirror.as_uri())  # file:// works as a mirror too
    ds = entry("kvasir-seg", {"kvasir-seg.zip": archive})
    assert fetch_dataset(ds, tmp_path / "a", progress=False).conversion.pairs == {"": 3}
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match=r"b: not empty \(holds notes.txt\); choose a new folder for kvasir-seg"):
        fetch_dataset(ds, tmp_path / "b", progress=False)
    assert _visible(tmp_path / "b") == ["notes.txt"]


def test_extraction_refuses_escaping_paths_and_skips_links(tmp_path):
    bad_zip = tmp_path / "bad.zip"
    bad_zip.write_bytes(_zip({"ok/a.txt": b"a", "../evil.txt": b"x"}))
    with pytest.raises(DataError, match=r"bad.zip: unsafe path in the archive: '../evil.txt'"):
        extract(bad_zip, tmp_path / "out1")
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "out1" / "ok").exists()  # nothing written
    bad_tar = tmp_path / "bad.tar.gz"
    bad_tar.write_bytes(_tar({"/etc/evil": b"x"}))
    with pytest.raises(DataError, match="unsafe path"):
        extract(bad_tar, tmp_path / "out2")
    linked = tmp_path / "links.tar.gz"
    linked.write_bytes(_tar({"images/a.jpg": b"a"}, links={"images/passwd.jpg": "/etc/passwd", "up": "../.."}))
    extract(linked, tmp_path / "out3")
    assert sorted(p.relative_to(tmp_path / "out3").as_posix() for p in (tmp_path / "out3").rglob("*")) == [
        "images", "images/a.jpg"]
    garbage = tmp_path / "page.zip"
    garbage.write_bytes(b"<html>please log in</html>")
    with pytest.raises(DataError, match="not a zip or tar archive"):
        extract(garbage, tmp_path / "out4")


def test_ctrl_c_keeps_the_part_and_says_how_to_resume(server, tmp_path, monkeypatch, capsys):
    import segdistill.data.standard as standard

    archive, _ = kvasir_archive()
    server.serve("kvasir-seg", {"kvasir-seg.zip": archive})
    monkeypatch.setitem(DATASETS, "kvasir-seg", entry("kvasir-seg", {"kvasir-seg.zip": archive}))
    dest = tmp_path / "kvasir"

    def interrupted_fetch(url: str, target: Path, *args: object, **kwargs: object) -> str:
        Path(f"{target}.part").write_bytes(archive[:100])  # what a Ctrl-C mid-transfer leaves
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(standard, "fetch", interrupted_fetch)
        assert main(["-q", "data", "download", "kvasir-seg", str(dest), "--mirror", server.url]) == 130
    assert "interrupted; run the same command again to resume the download" in capsys.readouterr().err
    assert _visible(dest) == [] and (dest / DOWNLOADS / "kvasir-seg.zip.part").stat().st_size == 100
    assert main(["-q", "data", "download", "kvasir-seg", str(dest), "--mirror", server.url]) == 0
    assert server.requests[-1][1] == "bytes=100-"
