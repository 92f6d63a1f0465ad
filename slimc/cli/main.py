"""The `slimc` command."""

from __future__ import annotations

import argparse
import sys

from . import compile_cmd, explore_cmd, inspect_cmd, opt_cmd, passes_cmd, profile_cmd, report_cmd, search_cmd

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slimc", description="Make trained neural networks smaller and faster.")
    parser.add_argument("--version", action="version", version="slimc 0.1.0")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for cmd in (compile_cmd, opt_cmd, inspect_cmd, passes_cmd, search_cmd, profile_cmd, explore_cmd, report_cmd):
        cmd.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from ..errors import SlimcError
    from .common import print_err

    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "trust_pickle", False):
            from ..frontend.specs import trusted_pickles

            with trusted_pickles():
                return args.run(args)
        return args.run(args)
    except SlimcError as exc:
        print_err(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        print_err("interrupted; nothing was written half-way.")
        return 130


if __name__ == "__main__":
    sys.exit(main())
