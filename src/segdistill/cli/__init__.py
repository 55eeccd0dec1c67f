"""Command line: the parser (cli/parsers.py, one function per command) and the commands
(cli/commands.py), each of which builds its settings and calls one job (segdistill/jobs/).

Errors caused by input (data, config, model files) print one line, ``error: ...``, and exit 2.
"""


from __future__ import annotations

import argparse
import logging
import os
import sys

from ..errors import SegdistillError
from ..version import __version__
from .commands import _config_from_args as _config_from_args  # tests build configs as the CLI does
from .commands import cmd_data_download, cmd_distill, cmd_train
from .flags import OneLineParser
from .parsers import PARSERS, Subcommands

log = logging.getLogger("segdistill")

DESCRIPTION = """Binary segmentation with a U-Net: train a model on images and masks, measure it, predict masks for
new images, and distil it into a small, fast student.

First steps:
  segdistill data download kvasir-seg                     a standard data set ('data list' shows them)
  segdistill data check DATA_DIR                          is the data usable? (images/ + masks/)
  segdistill train --data DATA_DIR                        train; prints the run folder
  segdistill evaluate runs/NAME --data DATA_DIR           scores on the images training held out
  segdistill predict runs/NAME new_images/                masks into predictions/new_images
  segdistill distill --teacher runs/NAME --images DIR     a small student that copies the model
  segdistill demo                                         all of it on built-in data
'segdistill COMMAND -h' shows a command's options; docs/first-hour.md walks through them."""


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="segdistill", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"segdistill {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = Subcommands(parser.add_subparsers(dest="command", required=True))
    for add in PARSERS:
        add(sub)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """parse_args, except that arguments the subcommand does not know are reported by the
    subcommand (its usage), with the closest of its flags."""
    import difflib

    args, extra = parser.parse_known_args(argv)
    if extra:
        own: argparse.ArgumentParser = getattr(args, "parser", parser)
        flags = [s for a in own._actions for s in a.option_strings if s.startswith("--")]
        unknown = next((e for e in extra if e.startswith("-")), None)
        close = difflib.get_close_matches(unknown.split("=")[0], flags, n=1) if unknown else []
        hint = f" (did you mean {close[0]}?)" if close else ""
        own.error(f"unrecognized arguments: {' '.join(extra)}{hint}")
    combination = getattr(args, "combination", None)  # flags.check_*: flags that make no sense together
    problem = combination(args) if combination else None
    if problem:
        getattr(args, "parser", parser).error(problem)
    return args


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = _parse(parser, argv)
    # Only torchrun's rank 0 prints progress: the RANK variable, read here as distributed.rank reads
    # it (importing that module loads torch, which `segdistill models` and --help do without).
    main_process = int(os.environ.get("RANK", "0")) == 0
    level = logging.WARNING if args.quiet or not main_process else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr, force=True)
    code = _run(args)
    if argv is None and int(os.environ.get("WORLD_SIZE", "1")) > 1 and "torch" in sys.modules:
        _leave(code)
    return code


def _leave(code: int) -> None:
    """End a torchrun rank's program without the interpreter's teardown. Once DDP has wrapped a
    model, Gloo's threads outlive ``destroy_process_group`` (a 12-line script shows them still
    running; see distributed.cleanup), and tearing them down at exit aborted a rank at random
    ("terminate called without an active exception", SIGABRT: CI and 2 of about 40 runs here)
    after its work was complete, so torchrun reported a failed run. Every output is written and
    renamed into place by now; the logs and streams are flushed here, and what is still held in
    reference cycles (a DataLoader's worker processes) is let go first."""
    import gc

    gc.collect()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _run(args: argparse.Namespace) -> int:
    """The command's exit code: 0, or 2 for bad input (one line), 130 when interrupted."""
    try:
        return int(args.fn(args) or 0)
    except SegdistillError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # full disk, permissions, a file where a folder should be, ...
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        resumable = args.fn in (cmd_train, cmd_distill)
        more = "; completed epochs are saved (resume with --resume RUN_DIR)" if resumable else ""
        if args.fn is cmd_data_download:
            more = "; run the same command again to resume the download"
        print("interrupted" + more, file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
