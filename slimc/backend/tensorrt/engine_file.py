"""Saved engines: load one back as an artifact, or describe it (`slimc inspect model.engine`)."""

from __future__ import annotations

import json
from pathlib import Path

from ...errors import SlimcError
from .flavor import import_flavor
from .gpu_probe import probe_gpu
from .runner import EngineRunner, TensorRTArtifact

__all__ = ["load_engine", "inspect_engine", "format_engine_info"]


def _sidecar(path: Path) -> dict:
    """The sidecar beside a saved engine, after checking the engine matches it (size and SHA-256)."""
    from ...ir.files import verify_unit

    return verify_unit(path)


def load_engine(path, flavor: str | None = None) -> TensorRTArtifact:
    """A saved `.engine` (with its `.json` sidecar when present) as an artifact that can run on a GPU."""
    path = Path(path)
    if not path.is_file():
        raise SlimcError(f"engine file '{path}' does not exist.")
    side = _sidecar(path)
    flav = import_flavor(flavor or side.get("flavor", "auto"))
    return TensorRTArtifact(flav, path.read_bytes(), {**side, "cache_hit": False})


def inspect_engine(path, layers: bool = True) -> dict:
    """The sidecar of a saved engine and, where a GPU can deserialize it, its layers (EngineInspector JSON)."""
    path = Path(path)
    if not path.is_file():
        raise SlimcError(f"engine file '{path}' does not exist.")
    side = _sidecar(path)
    info = {"engine": str(path), "engine_bytes": path.stat().st_size,
            "sidecar": side or None, "layers": None, "layers_unavailable": None}
    if not side:
        info["layers_unavailable"] = f"no sidecar '{path.with_suffix('.json').name}' beside the engine"
    if not layers:
        return info
    status = probe_gpu()
    if not status.usable:
        info["layers_unavailable"] = f"reading the layers needs an NVIDIA GPU ({status.reason})"
        return info
    try:
        flav = import_flavor(side.get("flavor", "auto"))
        with EngineRunner(flav, path.read_bytes()) as runner:
            inspector = runner.engine.create_engine_inspector()
            inspector.execution_context = runner.context
            text = inspector.get_engine_information(flav.module.LayerInformationFormat.JSON)
        info["layers"] = json.loads(text)
        info["layers_unavailable"] = None
    except SlimcError as exc:
        info["layers_unavailable"] = str(exc)
    return info


def format_engine_info(info: dict) -> str:
    """The engine description as text for the terminal."""
    side = info.get("sidecar") or {}
    lines = [f"{info['engine']}  ({info['engine_bytes']:,} bytes)"]
    if side:
        label = "TensorRT" if side.get("flavor") == "full" else "TensorRT for RTX"
        lines.append(f"  built by {label} {side.get('version', '?')}"
                     f"{', slimc ' + side['slimc'] if side.get('slimc') else ''}")
        for kind in ("inputs", "outputs"):
            for io in side.get(kind, []):
                shape = "x".join("?" if d < 0 else str(d) for d in io["shape"])
                lines.append(f"  {kind[:-1]:6} {io['name']}: {shape} {io['dtype']}")
        for name, p in (side.get("profile") or {}).items():
            lines.append(f"  profile {name}: min {p['min']} opt {p['opt']} max {p['max']}")
        opts = {k: v for k, v in (side.get("options") or {}).items() if v not in (None, [], False)}
        if opts:
            lines.append("  options " + " ".join(f"{k}={v}" for k, v in opts.items()))
    layers = info.get("layers")
    if layers is not None:
        items = layers.get("Layers", []) if isinstance(layers, dict) else layers
        lines.append(f"  layers ({len(items)}):")
        for layer in items:
            lines.append("    " + (layer if isinstance(layer, str) else
                                   f"{layer.get('Name', '?')}  [{layer.get('LayerType', '?')}]"))
    elif info.get("layers_unavailable"):
        lines.append(f"  layers: not shown — {info['layers_unavailable']}")
    return "\n".join(lines)
