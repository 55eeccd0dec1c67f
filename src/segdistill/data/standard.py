"""Standard binary segmentation data sets: where each comes from, its licence, and how it becomes a
folder segdistill reads (``segdistill data list``, ``segdistill data download NAME [DIR]``).

Each entry names its official source files, with their length and SHA-256 where those are published
(docs/data.md, "Standard data sets", says where each was found and which are not), and a converter
(:mod:`.converters`) that writes masks as 0/255 PNG, 255 = the data set's foreground, in one of segdistill's layouts.

A download works inside the target folder: source files accumulate in ``DIR/.segdistill-download/``
(kept across an interrupted run, so that the next one resumes), archives are unpacked and converted
in a hidden staging folder, and the result is renamed into place only when the conversion is
complete; ``README.txt``, the last file renamed, marks a finished data set.
"""

from __future__ import annotations

import datetime
import difflib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from .converters import Conversion, Converter, convert_isbi2012, convert_kvasir_seg, convert_oxford_pets
from .download import extract, fetch, is_archive_name, sha256_file

log = logging.getLogger("segdistill")

MIRROR_ENV = "SEGDISTILL_DATA_MIRROR"
DOWNLOADS = ".segdistill-download"
STAGING_PREFIX = ".segdistill-staging-"


@dataclass(frozen=True)
class Source:
    """One file to download. ``size`` and ``sha256`` are the published values, None where no
    public source gives them: such a file is checked against the length the server announces, its
    SHA-256 is printed and written into README.txt, and its content is checked by the converter."""

    filename: str
    url: str
    size: int | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class StandardDataset:
    name: str
    title: str
    homepage: str
    licence: str  # short, for `data list`
    terms: str  # the licence or terms of use in full, for README.txt
    citation: str
    sources: tuple[Source, ...]
    download_size: str  # for `data list`
    layout: str  # what the folder holds
    masks: str  # what 0 and 255 mean, and how they were made
    convert: Converter


@dataclass
class DownloadResult:
    path: Path
    dataset: StandardDataset
    conversion: Conversion | None  # None: the folder already held this data set; nothing was done


# ---------------------------------------------------------------------------------------------
# The registry

_ISBI = "http://brainiac2.mit.edu/isbi_challenge/sites/default/files/"
_PETS = "https://www.robots.ox.ac.uk/~vgg/data/pets/data/"

DATASETS: dict[str, StandardDataset] = {d.name: d for d in (
    StandardDataset(
        name="isbi2012",
        title="ISBI 2012 EM membranes (neuronal structures in EM stacks)",
        homepage="http://brainiac2.mit.edu/isbi_challenge/",
        licence="no licence stated; research use",
        terms="No explicit licence is stated by the challenge; the data are distributed publicly for research, "
              "with the citations below. Treat as research-only.",
        citation="A. Cardona et al., PLoS Biology 8(10): e1000502 (2010); I. Arganda-Carreras et al., "
                 "Frontiers in Neuroanatomy 9:142 (2015).",
        sources=(Source("train-volume.tif", _ISBI + "train-volume.tif"),
                 Source("train-labels.tif", _ISBI + "train-labels.tif"),
                 Source("test-volume.tif", _ISBI + "test-volume.tif")),
        download_size="~24 MB (3 TIFF stacks)",
        layout="train/images/N.png + train/masks/N.png: the 30 labelled 512x512 slices (N = 0-29); "
               "unlabeled/N.png: the 30 slices of the test volume (its labels were never published).",
        masks="As published: 255 = cell interior, 0 = membrane. To segment the membranes (the usual target), "
              "train with data.invert: true, as configs/membrane.yaml does.",
        convert=convert_isbi2012,
    ),
    StandardDataset(
        name="kvasir-seg",
        title="Kvasir-SEG: colonoscopy polyps",
        homepage="https://datasets.simula.no/kvasir-seg/",
        licence="research and education only",
        terms="Free for research and educational purposes; commercial use requires prior written permission "
              "from the authors (dataset page).",
        citation="D. Jha, P. H. Smedsrud, M. A. Riegler, P. Halvorsen, T. de Lange, D. Johansen, H. D. Johansen, "
                 "\"Kvasir-SEG: A Segmented Polyp Dataset\", MMM 2020, LNCS 11962, pp. 451-462.",
        sources=(Source("kvasir-seg.zip", "https://datasets.simula.no/downloads/kvasir-seg.zip", 46_227_172,
                        "03b30e21d584e04facf49397a2576738fd626815771afbbf788f74a7153478f7"),),
        download_size="46 MB",
        layout="images/ (the 1000 JPEGs, bytes unchanged) + masks/ (PNG); the archive defines no split, so "
               "training splits off data.val_fraction. The 880/120 split of the MediaEval 2020 Medico task "
               "is listed at github.com/DebeshJha/2020-MediaEval-Medico-polyp-segmentation (use data.val_stems).",
        masks="255 = polyp. The archive's masks are JPEGs; pixels above 127 are polyp (removes JPEG noise).",
        convert=convert_kvasir_seg,
    ),
    StandardDataset(
        name="oxford-pets",
        title="Oxford-IIIT Pet: pet vs background",
        homepage="https://www.robots.ox.ac.uk/~vgg/data/pets/",
        licence="CC BY-SA 4.0",
        terms="Creative Commons Attribution-ShareAlike 4.0 International (dataset page); the copyright of the "
              "images stays with their owners.",
        citation="O. M. Parkhi, A. Vedaldi, A. Zisserman, C. V. Jawahar, \"Cats and Dogs\", CVPR 2012.",
        sources=(Source("images.tar.gz", _PETS + "images.tar.gz", 791_918_971,
                        "67195c5e1c01f1ab5f9b6a5d22b8c27a580d896ece458917e61d459337fa318d"),
                 Source("annotations.tar.gz", _PETS + "annotations.tar.gz", 19_173_078,
                        "52425fb6de5c424942b7626b428656fcbd798db970a937df61750c0f1d358e91")),
        download_size="811 MB",
        layout="train/ (the paper's trainval.txt, 3680 images) + test/ (test.txt, 3669), each images/ + masks/; "
               "training splits validation off train/. Images are moved unchanged, except the few that are not "
               "plain JPEGs, re-encoded as PNG.",
        masks="255 = pet, from the trimaps: 1 (pet) -> 255, 2 (background) -> 0, 3 (border, 'not classified') -> "
              "255. The border band runs along the pet's outline and holds its edge (fur, ears, tail tips); as "
              "background, thin parts would vanish. Masks are therefore a few pixels generous at the outline.",
        convert=convert_oxford_pets,
    ),
)}


def list_datasets() -> list[StandardDataset]:
    return list(DATASETS.values())


def get_dataset(name: str) -> StandardDataset:
    """The registry entry for ``name`` (case-insensitive); DataError with the closest names otherwise."""
    key = name.strip().lower()
    if key in DATASETS:
        return DATASETS[key]
    close = difflib.get_close_matches(key, list(DATASETS), n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise DataError(f"unknown data set '{name}'{hint}; known: {', '.join(DATASETS)} ('segdistill data list')")


def source_url(dataset: StandardDataset, source: Source, mirror: str | None = None) -> str:
    """The official URL, or MIRROR/NAME/FILE where a mirror is given (argument, else $SEGDISTILL_DATA_MIRROR)."""
    mirror = mirror or os.environ.get(MIRROR_ENV) or None
    return f"{mirror.rstrip('/')}/{dataset.name}/{source.filename}" if mirror else source.url


# ---------------------------------------------------------------------------------------------
# Downloading into a folder


def download_dataset(name: str, dest: str | Path | None = None, mirror: str | None = None,
                     progress: bool = True) -> DownloadResult:
    """Download the standard data set ``name`` into ``dest`` (default: ./NAME) and convert it.

    Args:
        mirror: base URL (or file:// folder) holding MIRROR/NAME/FILE; default $SEGDISTILL_DATA_MIRROR,
            else the official sources.
        progress: progress bars (on a terminal).
    Returns:
        The folder and what was written (``conversion`` None when it already held the data set).
    Raises:
        DataError: unknown name, a folder that holds other files, network errors, truncated or
            interrupted downloads (kept to resume), checksum mismatches (file deleted), unusable
            archives. No converted data is left behind on any error.
    """
    dataset = get_dataset(name)
    return fetch_dataset(dataset, Path(dest) if dest is not None else Path(dataset.name), mirror, progress)


def fetch_dataset(dataset: StandardDataset, dest: Path, mirror: str | None = None,
                  progress: bool = True) -> DownloadResult:
    """:func:`download_dataset` for a registry entry (the tests pass entries of their own)."""
    if dest.exists() and not dest.is_dir():
        raise DataError(f"{dest}: is a file, not a folder")
    if _holds(dest, dataset):
        log.info("%s already holds %s (README.txt); nothing to download", dest, dataset.name)
        return DownloadResult(dest, dataset, None)
    held = sorted(p.name for p in dest.iterdir() if not p.name.startswith(".")) if dest.is_dir() else []
    if held:
        raise DataError(f"{dest}: not empty (holds {', '.join(held[:3])}{', ...' if len(held) > 3 else ''}); "
                        f"choose a new folder for {dataset.name}")
    created = not dest.exists()
    downloads = dest / DOWNLOADS
    downloads.mkdir(parents=True, exist_ok=True)
    for stale in dest.glob(STAGING_PREFIX + "*"):  # left by a hard kill mid-conversion: never trusted
        shutil.rmtree(stale, ignore_errors=True)
    try:
        files, digests = _download_sources(dataset, downloads, mirror, progress)
        conversion = _convert(dataset, files, digests, dest, mirror, progress)
    except BaseException:
        _tidy(dest, downloads, created)
        raise
    shutil.rmtree(downloads, ignore_errors=True)
    return DownloadResult(dest, dataset, conversion)


def _holds(dest: Path, dataset: StandardDataset) -> bool:
    readme = dest / "README.txt"
    try:
        return readme.is_file() and readme.read_text(encoding="utf-8").splitlines()[0] == _readme_marker(dataset)
    except (OSError, UnicodeDecodeError, IndexError):
        return False


def _readme_marker(dataset: StandardDataset) -> str:
    return f"segdistill data set: {dataset.name}"


def _download_sources(dataset: StandardDataset, downloads: Path, mirror: str | None,
                      progress: bool) -> tuple[dict[str, Path], dict[str, str]]:
    files: dict[str, Path] = {}
    digests: dict[str, str] = {}
    for src in dataset.sources:
        target = downloads / src.filename
        digest = _verified(target, src)
        if digest is None:
            url = source_url(dataset, src, mirror)
            log.info("downloading %s from %s", src.filename, url)
            digest = fetch(url, target, src.sha256, src.size, progress,
                           offline_hint=f"check the connection, or set {MIRROR_ENV} to a mirror (docs/data.md)")
            if src.sha256 is None:
                log.info("%s: SHA-256 %s (no published checksum to compare with; recorded in README.txt)",
                         src.filename, digest)
        files[src.filename], digests[src.filename] = target, digest
    return files, digests


def _verified(target: Path, src: Source) -> str | None:
    """The SHA-256 of a file a previous run completed, if it matches the published one; a complete
    file without a published checksum cannot be trusted across runs and is downloaded again."""
    if not target.is_file():
        return None
    digest = sha256_file(target) if src.sha256 is not None else None
    if digest is not None and digest == src.sha256:
        log.info("%s: already downloaded (SHA-256 matches)", src.filename)
        return digest
    target.unlink()
    return None


def _convert(dataset: StandardDataset, files: dict[str, Path], digests: dict[str, str], dest: Path,
             mirror: str | None, progress: bool) -> Conversion:
    """Unpack and convert in a hidden staging folder inside ``dest``, then rename the result into place
    (README.txt last); the staging folder goes away whatever happens."""
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=dest))
    try:
        unpacked, out = staging / "unpacked", staging / "out"
        out.mkdir()
        for name, path in files.items():
            if is_archive_name(name):
                log.info("unpacking %s", name)
                extract(path, unpacked)
        unpacked.mkdir(exist_ok=True)
        log.info("converting %s", dataset.name)
        conversion = dataset.convert(files, unpacked, out, progress)
        if not any(conversion.pairs.values()):
            raise DataError(f"{dataset.name}: the downloaded files gave no image/mask pairs "
                            f"({'; '.join(conversion.skipped[:3]) or 'nothing found'})")
        (out / "README.txt").write_text(_readme(dataset, conversion, digests, mirror), encoding="utf-8")
        entries = sorted(out.iterdir(), key=lambda p: p.name == "README.txt")  # README.txt last
        for entry in entries:
            os.replace(entry, dest / entry.name)
        return conversion
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _tidy(dest: Path, downloads: Path, created: bool) -> None:
    """After a failure: drop the downloads folder if nothing resumable is in it, and ``dest`` itself
    if this run created it and it is empty again."""
    for folder in (downloads, dest) if created else (downloads,):
        try:
            folder.rmdir()  # only succeeds when empty
        except OSError:
            pass


def _readme(dataset: StandardDataset, conversion: Conversion, digests: dict[str, str], mirror: str | None) -> str:
    lines = [
        _readme_marker(dataset),
        dataset.title,
        "",
        f"Downloaded with 'segdistill data download {dataset.name}' on {datetime.date.today().isoformat()}.",
        f"Home page: {dataset.homepage}",
        f"Licence: {dataset.terms}",
        f"Citation: {dataset.citation}",
        "",
        f"Masks: 0/255 PNG. {dataset.masks}",
        f"Layout: {dataset.layout}",
        f"Written: {conversion.describe()}.",
        "",
        "Source files:",
    ]
    for src in dataset.sources:
        url = source_url(dataset, src, mirror)
        check = ("matches the published checksum" if src.sha256 is not None
                 else "no published checksum to compare with")
        lines.append(f"  {src.filename}  {url}\n    SHA-256 {digests[src.filename]} ({check})")
    if conversion.skipped:
        lines += ["", f"Skipped ({len(conversion.skipped)}):"] + [f"  {s}" for s in conversion.skipped]
    return "\n".join(lines) + "\n"
