"""`slimc report-html`: one self-contained HTML file from reports slimc already wrote."""

from __future__ import annotations

import argparse

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    p = sub.add_parser("report-html", help="a self-contained HTML report from compile/profile JSON and a search folder",
                       description="Combine a compile report (--report), a profile report (slimc profile --report) "
                                   "and a search output folder (pareto.png, summary.md) into one HTML file.")
    p.add_argument("-o", "--output", required=True, metavar="FILE.html", help="the HTML file to write")
    p.add_argument("--compile-report", metavar="REPORT.json", help="slimc compile --report output")
    p.add_argument("--profile", metavar="PROFILE.json", help="slimc profile --report output")
    p.add_argument("--search", metavar="DIR", help="slimc search output folder")
    p.set_defaults(run=run)


def _read(path: str | None, what: str) -> dict | None:
    import json
    from pathlib import Path

    from ..errors import SlimcError

    if path is None:
        return None
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise SlimcError(f"cannot read the {what} '{path}': {exc}. Give the JSON file slimc wrote.") from None


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..errors import SlimcError
    from ..report import write_html_report

    if not (args.compile_report or args.profile or args.search):
        raise SlimcError("give at least one of --compile-report, --profile, --search.")
    if args.search and not Path(args.search).is_dir():
        raise SlimcError(f"search folder '{args.search}' does not exist.")
    compile_report = _read(args.compile_report, "compile report")
    if compile_report is not None and "passes" not in compile_report:
        raise SlimcError(f"'{args.compile_report}' is not a compile report (no 'passes'); write one with "
                         "'slimc compile ... --report FILE'.")
    write_html_report(args.output, compile_report, _read(args.profile, "profile report"), args.search)
    print(f"HTML report: {args.output}")
    return 0
