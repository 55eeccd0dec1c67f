"""``segdistill config init``: the commented default config, printed or written to a file."""

from __future__ import annotations

import sys
from pathlib import Path

from ..config import ConfigError, default_config_yaml
from ..fileio import write_text
from ..recipes import recipe_path


def config_init(path: str | None = None, force: bool = False, recipe: str | None = None) -> None:
    """Print the default config (``path`` None or "-"), else write it to ``path``; ``recipe``: a
    shipped recipe (``membrane``) instead of the defaults, to edit."""
    text = recipe_path(recipe).read_text(encoding="utf-8") if recipe else default_config_yaml()
    if path in (None, "-"):
        sys.stdout.write(text)
        return
    target = Path(path)  # type: ignore[arg-type]
    if target.exists() and not force:
        raise ConfigError(f"{target}: already exists (use --force to overwrite)")
    write_text(target, text)
    print(f"{f'recipe {recipe!r}' if recipe else 'default config'} written to {target}")
