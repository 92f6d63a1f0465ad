"""`slimc passes`: every registered pass, its level, whether it is lossless, its options."""

from __future__ import annotations

import argparse
import dataclasses
import typing


def add_parser(sub) -> None:
    p = sub.add_parser("passes", help="list every pass with its level, losslessness and options")
    p.set_defaults(run=run)


def describe_passes() -> list[dict]:
    from ..passes.registry import format_value, option_type_name, registered_passes

    out = []
    for name, cls in registered_passes().items():
        hints = typing.get_type_hints(cls)
        opts = []
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            opts.append({"name": f.name.replace("_", "-"), "type": option_type_name(hints[f.name]),
                         "default": format_value(default)})
        out.append({"name": name, "level": cls.level if not cls.produces else f"{cls.level}->{cls.produces}",
                    "lossless": cls.lossless, "summary": cls.summary, "options": opts})
    return out


def run(args: argparse.Namespace) -> int:
    for p in describe_passes():
        print(f"{p['name']:<16} {p['level']:<9} {'lossless' if p['lossless'] else 'lossy':<9} {p['summary']}")
        for o in p["options"]:
            setting = f"{o['name']}={o['default']}"
            print(f"    {setting:<28} {o['type']}")
    return 0
