"""``catdiff ...`` sub-commands: thin argument parsing over the library, one module per command group.

User errors print one line and exit with code 2; nothing else prints a traceback for them.
"""

from __future__ import annotations

import argparse
import errno
import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

from catdiff.cli import data, evaluate, sample, serve, train, txt2img
from catdiff.errors import UserError

COMMAND_GROUPS = (train, data, sample, evaluate, serve, txt2img)


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are a single line."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> Parser:
    parser = Parser(prog="catdiff", description="Train, sample and serve small diffusion models.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for group in COMMAND_GROUPS:
        group.add_parsers(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        args.run(args)
    except UserError as error:
        print(f"catdiff: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("catdiff: interrupted", file=sys.stderr)
        return 130
    except OSError as error:
        if error.errno not in STORAGE_ERRORS:
            raise
        print(f"catdiff: error: {storage_error(error)}", file=sys.stderr)
        return 2
    return 0


# What the disk or the file system refuses: the user's to fix, so one line, not a traceback.
STORAGE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}


def storage_error(error: OSError) -> str:
    """One line for a write the disk refused; every file catdiff replaces is replaced atomically,
    so what was there before is intact."""
    where = f" writing {error.filename}" if error.filename else ""
    if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return f"no space left{where} ({error.strerror}); files written before are intact: free space and run again"
    return f"cannot write{where} ({error.strerror})"


if __name__ == "__main__":
    sys.exit(main())
