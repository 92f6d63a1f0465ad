"""`slimc explore`: the ONNX dumps of a compile in Google's Model Explorer, with slimc's overlays.

One graph per ONNX pass dump (`NN-pass.onnx` from `--dump-ir`), optionally a second dump folder
beside it, and node-data overlays written next to the dumps (`DIR/overlays/*.json`). The server
listens on 127.0.0.1 only and stops after `timeout` seconds (or Ctrl+C).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import SlimcError

__all__ = ["ExploreSession", "onnx_dumps", "prepare", "serve"]

_EXTRA_HINT = "pip install 'slimc[explore]'"


def onnx_dumps(directory: str | Path) -> list[Path]:
    """The ONNX pass dumps in a `--dump-ir` folder (or one .onnx file), in pass order."""
    path = Path(directory)
    if path.is_file() and path.suffix == ".onnx":
        return [path]
    if not path.is_dir():
        raise SlimcError(f"'{path}' is neither a --dump-ir folder nor an .onnx file.")
    found = sorted(p for p in path.glob("*.onnx") if not p.name.startswith("."))
    if not found:
        fx = sorted(p.name for p in path.glob("*.py"))
        hint = f" (it holds FX dumps {', '.join(fx[:3])}..., which Model Explorer cannot open)" if fx else ""
        raise SlimcError(f"'{path}' holds no .onnx pass dumps{hint}. Write them with "
                         "'slimc compile ... --dump-ir DIR' and a pipeline that reaches to-onnx.")
    return found


@dataclass
class ExploreSession:
    """What `prepare` staged: the graphs and overlay files to hand to Model Explorer."""

    models: list[Path]
    overlays: list[tuple[Path, str]]  # (node data file, model file name it applies to)
    staging: Path


def prepare(directory, compare=None, profile: str | Path | None = None) -> ExploreSession:
    """Stage the dumps (the second folder's prefixed 'other-') and write their overlays; runs no server."""
    from ..ir.onnx_io import write_json
    from .overlays import overlays_for
    import onnx

    mine = onnx_dumps(directory)
    other = onnx_dumps(compare) if compare else []
    base = Path(directory) if Path(directory).is_dir() else Path(directory).parent
    staging = base / "explore"
    staging.mkdir(parents=True, exist_ok=True)
    prof = json.loads(Path(profile).read_text()) if profile else None
    if profile and not prof.get("profiles"):
        raise SlimcError(f"'{profile}' holds no profiles; write one with 'slimc profile MODEL --report FILE'.")
    dense = onnx.load(str(other[-1]), load_external_data=False) if other else None
    models, overlays = [], []
    for prefix, files, ref in (("", mine, dense), ("other-", other, None)):
        for i, src in enumerate(files):
            staged = staging / f"{prefix}{src.name}"
            if staged.is_symlink() or staged.exists():
                staged.unlink()
            staged.symlink_to(src.resolve())
            model = onnx.load(str(src), load_external_data=False)
            # Per-node ms belongs to the final graph of the first folder, the one that was profiled.
            last = prefix == "" and i == len(files) - 1
            for name, data in overlays_for(model, dense=ref, profile=prof if last else None).items():
                out = staging / "overlays" / f"{staged.stem}.{name}.json"
                write_json(out, data)
                overlays.append((out, staged.name))
            models.append(staged)
    return ExploreSession(models, overlays, staging)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model_explorer():
    try:
        import model_explorer
        import model_explorer_onnx  # noqa: F401  (the ONNX adapter extension)
        from model_explorer import server
    except ImportError as exc:
        raise SlimcError(f"slimc explore needs Google's Model Explorer and its ONNX adapter ({exc}). "
                         f"Install them with: {_EXTRA_HINT}") from None
    return model_explorer, server


def serve(session: ExploreSession, port: int | None = None, open_browser: bool = True,
          timeout: float = 3600.0, on_ready=print) -> str:
    """Start Model Explorer on 127.0.0.1 for `timeout` seconds (Ctrl+C stops earlier); returns the URL."""
    model_explorer, server = _model_explorer()
    config = model_explorer.config()
    for model in session.models:
        config.add_model_from_path(str(model))
    for path, model_name in session.overlays:
        config.add_node_data_from_path(str(path), model_name=model_name)
    port = port or _free_port()
    # Model Explorer asks PyPI for a newer version from a non-daemon thread; explore stays offline.
    server._check_new_version = lambda print_msg=True: {"version": "", "runningVersion": "", "releaseUrl": "",
                                                         "desktopAppUrl": ""}
    thread = threading.Thread(target=server.start, daemon=True, kwargs=dict(
        host="127.0.0.1", port=port, config=config, no_open_in_browser=True, extensions=["model_explorer_onnx"]))
    thread.start()
    url = f"http://127.0.0.1:{port}/?data={config.to_url_param_value()}"
    _wait_listening(port, thread)
    on_ready(url)
    if open_browser:
        import webbrowser

        webbrowser.open_new_tab(url)
    deadline = time.monotonic() + timeout
    try:
        while thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    return url


def _wait_listening(port: int, thread: threading.Thread, limit: float = 60.0) -> None:
    end = time.monotonic() + limit
    while time.monotonic() < end:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if not thread.is_alive():
            break
        time.sleep(0.2)
    raise SlimcError(f"Model Explorer did not start listening on 127.0.0.1:{port}; see the messages above.")


def env_no_browser() -> bool:
    """No display: headless machines get the URL only."""
    return not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
