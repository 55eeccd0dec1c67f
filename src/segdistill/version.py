"""The package's version and start time: the lowest module, so any layer may import them."""

import time

__version__ = "0.2.0.dev0"
STARTED = time.monotonic()
"""When this package was imported: the command line's time budget (--time) counts from here, so
that importing torch and reading the data count too."""
