"""`slimc explore DIR`: open the IR dumps of a compile in Model Explorer, with overlays."""

from __future__ import annotations

import argparse

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    p = sub.add_parser("explore", help="open --dump-ir dumps in Model Explorer with slimc's overlays",
                       description="Open the ONNX pass dumps of a compile (--dump-ir DIR) in Google's Model "
                                   "Explorer, one graph per pass, with overlays: out channels, channels kept "
                                   "(with --compare DENSE_DIR), conv groups, nodes left in fp32, per-node ms "
                                   "(with --profile). Needs: pip install 'slimc[explore]'.")
    p.add_argument("dir", help="a --dump-ir folder (or one .onnx file)")
    p.add_argument("--compare", metavar="OTHER_DIR", help="a second dump folder shown beside it (e.g. the dense "
                   "model: channels kept are measured against its last graph)")
    p.add_argument("--profile", metavar="REPORT.json", help="'slimc profile --report' output: per-node ms overlay")
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    p.add_argument("--no-browser", action="store_true", help="print the URL only (headless machines)")
    p.add_argument("--timeout", type=float, default=3600, help="stop the server after this many seconds (3600)")
    p.add_argument("--prepare-only", action="store_true", help="write the overlays, start no server")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..explore import prepare, serve
    from ..explore.server import env_no_browser

    session = prepare(args.dir, compare=args.compare, profile=args.profile)
    print(f"{len(session.models)} graphs, {len(session.overlays)} overlays in {session.staging}")
    for path, model in session.overlays:
        print(f"  {model}: {path.name}")
    if args.prepare_only:
        return 0
    serve(session, port=args.port or None, open_browser=not (args.no_browser or env_no_browser()),
          timeout=args.timeout, on_ready=lambda url: print(f"Model Explorer: {url}", flush=True))
    return 0
