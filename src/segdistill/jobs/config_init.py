"""``segdistill config init``: the commented default config, printed or written to a file."""

from __future__ import annotations

import sys
from pathlib import Path

from ..config import ConfigError, default_config_yaml
from ..fileio import write_text


def config_init(path: str | None = None, force: bool = False) -> None:
    """Print the default config (``path`` None or "-"), else write it to ``path``."""
    text = default_config_yaml()
    if path in (None, "-"):
        sys.stdout.write(text)
        return
    target = Path(path)  # type: ignore[arg-type]
    if target.exists() and not force:
        raise ConfigError(f"{target}: already exists (use --force to overwrite)")
    write_text(target, text)
    print(f"default config written to {target}")
