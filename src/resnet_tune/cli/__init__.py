"""The ``resnet-tune`` command line: a thin layer that parses arguments into configs and calls the Python API.

Each module registers its commands: :mod:`.classify` (train, lr-find, evaluate, predict, embed, models),
:mod:`.export`, :mod:`.serve` (serve, explain) and :mod:`.segment`. Nothing below this package imports it, and
building the parser imports no PyTorch (``resnet-tune --help`` and ``--version`` answer at once).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Callable

#: when the command started (time.monotonic), before its imports: ``--budget`` counts from here
STARTED = time.monotonic()

from . import classify, export, segment, serve  # noqa: E402
from .options import HelpFormatter, add_config_options, config_values  # noqa: E402

__all__ = ["HelpFormatter", "STARTED", "add_config_options", "build_parser", "config_values", "main"]


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="resnet-tune", description="Build, fine-tune, evaluate and use residual networks.",
        epilog="Run `resnet-tune COMMAND --help` for a command's options. `resnet-tune train` with no options "
               "trains on the embedded handwritten-digits data.")
    parser.add_argument("--version", action="version", version=f"resnet-tune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, fn: Callable[[argparse.Namespace], int], help_: str, desc: str | None = None
            ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=desc or help_, formatter_class=HelpFormatter)
        p.set_defaults(func=fn)
        return p

    for module in (classify, export, serve, segment):
        module.register(add)
    classify.register_models(add)
    return parser


def main(argv: list[str] | None = None) -> int:
    from ..errors import ResnetTuneError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except ResnetTuneError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, PermissionError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head`
        return 0
    except KeyboardInterrupt:
        out = getattr(args, "output", None)
        hint = f"; continue with `resnet-tune train --resume {out}`" if args.command == "train" and out else ""
        print(f"interrupted{hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
