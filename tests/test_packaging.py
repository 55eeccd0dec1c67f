"""Packaging: the recipes by name, one version, and the one-line install hint for a missing extra
(simulated in a subprocess by an import hook that refuses the package, as if it were not installed)."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

import segdistill
from segdistill.cli import main
from segdistill.config import load_config
from segdistill.errors import ConfigError
from segdistill.recipes import RECIPES_DIR, list_recipes

ROOT = Path(__file__).resolve().parents[1]


def test_recipes_ship_in_the_package_and_load_by_name() -> None:
    assert RECIPES_DIR.parent == Path(segdistill.__file__).resolve().parent
    assert {"membrane", "membrane_distill"} <= set(list_recipes())
    by_name, by_path = load_config("membrane"), load_config(RECIPES_DIR / "membrane.yaml")
    assert by_name == by_path and by_name.name == "membrane" and by_name.model.args["base"] == 16
    assert load_config("membrane.yaml", ["train.epochs=3"]).train.epochs == 3
    with pytest.raises(ConfigError, match=r"membrain: config file not found \(nor a recipe: membrane, membrane_distill\)"):
        load_config("membrain")


def test_config_init_writes_a_recipe(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "mine.yaml"
    assert main(["config", "init", "--recipe", "membrane_distill", str(out)]) == 0
    assert out.read_text() == (RECIPES_DIR / "membrane_distill.yaml").read_text()
    assert load_config(out).distill.student.args["stem"] == "unshuffle4"
    assert main(["config", "init", "--recipe", "nope", str(tmp_path / "x.yaml")]) == 2
    assert "no recipe named 'nope'; the recipes are: membrane, membrane_distill" in capsys.readouterr().err


def test_one_version() -> None:
    assert importlib.metadata.version("segdistill") == segdistill.__version__
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project and "version" in project["dynamic"]  # read from segdistill/version.py


_BLOCK = """
import sys
class _NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == {module!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, _NotInstalled())
from segdistill.cli import main
sys.exit(main({argv!r}))
"""


def _without(module: str, argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _BLOCK.format(module=module, argv=argv)],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("module, extra, argv", [
    ("av", "video", ["predict", "{model}", "{tmp}/clip.mp4", "--out", "{tmp}/pred"]),
    ("h5py", "keras", ["import-keras", "{tmp}/old.h5"]),
    ("openvino", "openvino", ["predict", "{model}", "{tmp}/a.png", "--backend", "openvino", "--out", "{tmp}/pred"]),
])
def test_a_missing_extra_is_one_line_naming_the_install(module: str, extra: str, argv: list[str], tiny_model: Path,
                                                       synth_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "clip.mp4").write_bytes(b"\x00" * 64)
    (tmp_path / "old.h5").write_bytes(b"\x89HDF\r\n\x1a\n")
    (tmp_path / "a.png").write_bytes(next((synth_dir / "images").iterdir()).read_bytes())
    argv = [a.format(model=tiny_model, tmp=tmp_path) for a in argv]
    done = _without(module, argv)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert "error: " in last and f'pip install "segdistill[{extra}]"' in last, done.stderr


def test_importing_segdistill_needs_no_extra() -> None:
    done = subprocess.run([sys.executable, "-c", _BLOCK.split("from segdistill")[0].format(module="av", argv=[])
                           + "import segdistill.data.video, segdistill.jobs.predict, segdistill.deploy.keras_h5"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
