"""A content-addressed cache of built engines.

The key hashes what decides the engine: the graph (nodes, weights, I/O), the TensorRT flavor and
version, the engine-affecting build options, the input shapes and the target GPUs. An entry is two
files, `<key>.engine` and `<key>.json`; the JSON holds the engine's SHA-256, so a truncated or
altered entry is found, removed and rebuilt instead of being handed to the runtime.
Both files are written atomically, the engine first, so a reader never sees a JSON without its engine.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ...errors import SlimcError
from ...ir.onnx_io import atomic_write

__all__ = ["graph_hash", "cache_key", "EngineCache", "CacheEntry", "FORMAT"]

FORMAT = 1  # bump when the entry layout changes


def graph_hash(model) -> str:
    """SHA-256 of what TensorRT reads from the model: nodes, initializers, I/O, opsets (not doc strings).

    Hashed piece by piece, so models over the 2 GiB protobuf limit hash too.
    """
    h = hashlib.sha256()
    g = model.graph

    def add(tag: str, data: bytes) -> None:
        h.update(tag.encode() + len(data).to_bytes(8, "little") + data)

    for op in sorted((o.domain, o.version) for o in model.opset_import):
        add("opset", f"{op[0]}:{op[1]}".encode())
    for vi in list(g.input) + list(g.output):
        add("io", vi.SerializeToString(deterministic=True))
    for node in g.node:
        add("node", node.SerializeToString(deterministic=True))
    for t in g.initializer:
        head = t.__class__()
        head.CopyFrom(t)
        head.ClearField("raw_data")
        add("init", head.SerializeToString(deterministic=True))
        add("raw", t.raw_data)
    for f in model.functions:
        add("function", f.SerializeToString(deterministic=True))
    return h.hexdigest()


def cache_key(graph: str, flavor: dict, options: dict, input_shapes: list, target: dict) -> str:
    """The entry name: a hash of everything that changes the built engine."""
    blob = json.dumps({"format": FORMAT, "graph": graph, "flavor": flavor, "options": options,
                       "input_shapes": input_shapes, "target": target}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _valid_io(items) -> bool:
    """A list of {"name", "shape", "dtype"} records, as network_signature writes them."""
    return isinstance(items, list) and all(
        isinstance(i, dict) and isinstance(i.get("name"), str) and isinstance(i.get("shape"), list)
        and isinstance(i.get("dtype"), str) for i in items)


@dataclass(frozen=True)
class CacheEntry:
    """A cache hit: the engine bytes and the metadata stored with them."""

    key: str
    engine: bytes
    meta: dict
    path: Path


class EngineCache:
    """Engines on disk under `root`, by key. `get` returns None on a miss or a corrupt entry (and says which)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.last_problem: str | None = None

    def _paths(self, key: str) -> tuple[Path, Path]:
        return self.root / f"{key}.engine", self.root / f"{key}.json"

    def get(self, key: str) -> CacheEntry | None:
        self.last_problem = None
        engine_path, meta_path = self._paths(key)
        if not meta_path.exists():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            data = engine_path.read_bytes()
        except (OSError, ValueError) as exc:
            return self._corrupt(key, f"unreadable ({type(exc).__name__})")
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("key") != key:
            return self._corrupt(key, "metadata does not match this cache format or key")
        if len(data) != meta.get("engine_bytes") or hashlib.sha256(data).hexdigest() != meta.get("engine_sha256"):
            return self._corrupt(key, "engine checksum mismatch")
        if not _valid_io(meta.get("inputs")) or not _valid_io(meta.get("outputs")):  # e.g. edited by hand
            return self._corrupt(key, "metadata lacks the engine's inputs or outputs")
        return CacheEntry(key, data, meta, engine_path)

    def _corrupt(self, key: str, why: str) -> None:
        self.last_problem = f"corrupt cache entry {key[:12]}… ({why}); rebuilt"
        for p in self._paths(key):
            try:
                p.unlink()
            except OSError:
                pass
        return None

    def put(self, key: str, engine: bytes, meta: dict) -> Path:
        """Store an engine with its metadata; returns the engine's path."""
        engine_path, meta_path = self._paths(key)
        record = {**meta, "format": FORMAT, "key": key, "engine_bytes": len(engine),
                  "engine_sha256": hashlib.sha256(engine).hexdigest()}
        try:
            atomic_write(engine_path, lambda tmp: Path(tmp).write_bytes(engine))
            atomic_write(meta_path, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=2)))
        except OSError as exc:
            raise SlimcError(f"cannot write the TensorRT engine cache in '{self.root}': {exc.strerror}. "
                             "Set cache_dir=DIR (or $SLIMC_CACHE_DIR) to a writable folder, or cache=false.") from None
        return engine_path
