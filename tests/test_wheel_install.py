"""The pip path of the README, end to end: build the wheel, install it into a fresh venv after the
CPU torch wheel, check that no CUDA package came with it and that the extras stayed out, then run
the recipes' commands (train -c membrane, predict, distill -c membrane_distill, export) from that
install on tiny synthetic data, outside the repository.

Runs in about a minute here: torch is installed from the local CPU wheel (pip's find-links, no
index) and nothing is byte-compiled. Where no such wheel is at hand (installing torch from an index
would take minutes, and PyPI's Linux default is the CUDA build) the test skips and says so.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--epochs", "1", "--input-size", "32", "--batch-size", "4", "--set", "train.samples_per_epoch=4",
        "--set", "data.val_stems=null", "--threads", "1"]
CUDA_PACKAGES = ("nvidia", "cuda", "triton")


def _run(args: list[str], cwd: Path, timeout: int = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def _build_wheel(tmp: Path) -> Path:
    """The wheel, built from a copy of what it is made of (the working tree gets no build/ folder)."""
    src = tmp / "src-copy"
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    # This venv's setuptools where it is new enough for pyproject.toml (license as SPDX: 77), which
    # spares a download of the build requirements; else pip's isolated build fetches them.
    own = int(importlib.metadata.version("setuptools").split(".")[0]) >= 77
    done = _run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", *(["--no-build-isolation"] if own else []),
                 "-q", "-w", str(tmp / "dist")], cwd=src)
    assert done.returncode == 0, done.stderr[-2000:]
    return next((tmp / "dist").glob("segdistill-*.whl"))


def _fresh_venv(tmp: Path, wheel: Path) -> Path:
    venv = tmp / "venv"
    assert _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp).returncode == 0
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-compile", "--disable-pip-version-check"]
    # The torch floor is checked by naming another version and PyTorch's CPU index (docs/install.md).
    torch_version = os.environ.get("SEGDISTILL_TEST_TORCH") or importlib.metadata.version("torch").split("+")[0]
    index = os.environ.get("SEGDISTILL_TEST_TORCH_INDEX")
    done = _run([*pip, *(["--index-url", index] if index else ["--no-index", "--no-deps"]), f"torch=={torch_version}"],
                cwd=tmp, timeout=900)
    if done.returncode != 0:
        pytest.skip(f"no local CPU wheel of torch {torch_version} to install quickly (pip's find-links; "
                    "SEGDISTILL_TEST_TORCH_INDEX names an index): the README's pip path was not tried")
    done = _run([*pip, str(wheel)], cwd=tmp, timeout=600)
    if done.returncode != 0 and any(s in done.stderr for s in ("No matching distribution", "NewConnectionError",
                                                               "Could not fetch", "Temporary failure",
                                                               "Read timed out", "ProxyError")):
        pytest.skip(f"the wheel's requirements cannot be installed here (no package index): {done.stderr[-300:]}")
    assert done.returncode == 0, done.stderr[-2000:]
    return venv


@pytest.mark.slow
def test_the_wheel_installs_with_cpu_torch_and_runs_the_recipes(tmp_path: Path) -> None:
    wheel = _build_wheel(tmp_path)
    venv = _fresh_venv(tmp_path, wheel)
    listed = _run([str(venv / "bin" / "python"), "-m", "pip", "list", "--format=freeze"], cwd=tmp_path).stdout.lower()
    names = {line.split("==")[0] for line in listed.split()}
    assert not [n for n in names if n.startswith(CUDA_PACKAGES)], sorted(names)
    assert "torch" in names and not names & {"av", "h5py"}  # the extras stay out of the core install
    site = next((venv / "lib").glob("python*/site-packages/segdistill"))
    assert (site / "py.typed").is_file() and (site / "configs" / "membrane.yaml").is_file()

    work = tmp_path / "work"  # outside the repository: the recipes must come from the package
    work.mkdir()
    env = {**os.environ, "SEGDISTILL_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
    exe = str(venv / "bin" / "segdistill")

    def cli(*args: str, rc: int = 0) -> str:
        done = _run([exe, *args], cwd=work, env=env)
        assert done.returncode == rc, f"segdistill {' '.join(args)}:\n{done.stderr[-3000:]}"
        return done.stdout + done.stderr

    cli("data", "synth", "data", "--count", "8", "--size", "48")
    cli("train", "-c", "membrane", "--data", "data", "--output-dir", "runs", "--name", "teacher",
        "--set", "model.args.base=4", "--set", "model.args.depth=2", *TINY)
    assert (work / "runs" / "teacher" / "model.safetensors").is_file()
    cli("predict", "runs/teacher", "data/images", "--out", "preds", "--name", "teacher")
    assert len(list((work / "preds" / "teacher").glob("*.png"))) == 8
    cli("distill", "-c", "membrane_distill", "--teacher", "runs/teacher", "--images", "data/images", "--data", "data",
        "--output-dir", "runs", "--name", "student", "--set", "distill.student.args.base=4", *TINY)
    cli("export", "runs/student")
    cli("predict", "runs/student/model.onnx", "data/images", "--out", "preds", "--name", "onnx")
    assert len(list((work / "preds" / "onnx").glob("*.png"))) == 8
    (work / "clip.mp4").write_bytes(b"\x00" * 32)
    err = cli("predict", "runs/teacher", "clip.mp4", "--out", "preds", rc=2).strip().splitlines()
    assert err[-1].endswith('pip install "segdistill[video]"') and "Traceback" not in "\n".join(err)
