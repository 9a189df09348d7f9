"""The ``autoprune`` command: a thin layer over the Python API.

User errors (:class:`~autoprune.errors.AutopruneError`) print one line on stderr and exit 2;
``--debug`` shows the traceback instead. Each subcommand lives in a module that exposes
``register(subparsers)``; they are listed in ``COMMAND_MODULES``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from autoprune.errors import AutopruneError

COMMAND_MODULES = (
    "autoprune.cli.search",
    "autoprune.cli.run",
    "autoprune.cli.compare",
    "autoprune.cli.lut",
    "autoprune.cli.sensitivity",
    "autoprune.cli.export",
    "autoprune.cli.units",
    "autoprune.cli.jobs",
)


class Parser(argparse.ArgumentParser):
    """argparse with the CLI's error contract: a usage error is one ``autoprune: error:`` line, exit 2."""

    def error(self, message: str) -> NoReturn:
        raise AutopruneError(f"{message}; see {self.prog} --help")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="autoprune",
        description="Automated per-layer pruning-ratio search (AMC/DDPG, NetAdapt, baselines).",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def importable_cwd() -> None:
    """Factories in the working directory import (``"mynets:resnet"`` run from the project), as with
    ``python -m``; PYTHONPATH carries it to the local Ray workers and DataLoader workers too."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if cwd not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([cwd, *filter(None, paths)])


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    importable_cwd()
    debug = "--debug" in argv or os.environ.get("AUTOPRUNE_DEBUG") == "1"
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                            format="%(levelname)s %(name)s: %(message)s")
        logging.captureWarnings(True)  # library warnings (torch, SB3) only with -v: stderr stays one line
        logging.getLogger("py.warnings").setLevel(logging.INFO if args.verbose else logging.ERROR)
        return int(args.func(args) or 0)
    except AutopruneError as exc:
        if debug:
            raise
        message = " ".join(str(exc).split())
        print(f"autoprune: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("autoprune: interrupted; finished trials are saved (resume with --resume RUN_DIR)", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
