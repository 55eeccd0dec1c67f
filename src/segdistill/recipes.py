"""The recipes (``segdistill/configs/*.yaml``): exact runs that ship inside the package, so that
``segdistill train -c membrane`` and ``segdistill config init --recipe membrane`` work from any
install, a wheel included (the repository's ``configs/`` is a link to the same folder)."""

from __future__ import annotations

from pathlib import Path

from .errors import ConfigError

RECIPES_DIR = Path(__file__).resolve().parent / "configs"


def list_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def recipe_path(name: str) -> Path:
    """The shipped recipe called ``name`` (``membrane`` or ``membrane.yaml``)."""
    path = RECIPES_DIR / (name if name.endswith(".yaml") else f"{name}.yaml")
    if not path.is_file() or path.parent != RECIPES_DIR:
        raise ConfigError(f"no recipe named {name!r}; the recipes are: {', '.join(list_recipes())}")
    return path


def config_file(path: str | Path) -> Path:
    """``path`` when it is a file; else the recipe of that name where one ships; else ``path``
    (whose "not found" error then lists the recipes)."""
    p = Path(path)
    if p.is_file() or p.parent != Path(".") or p.suffix not in ("", ".yaml"):
        return p
    return recipe_path(p.stem) if (RECIPES_DIR / f"{p.stem}.yaml").is_file() else p
