"""Which files a backend's artifact is saved as, known before anything is built.

`artifact_main_path` is what every `Artifact.save` uses to turn its argument into the main file's path,
and `artifact_files` lists every file a save there writes, so a run can refuse, before any work,
an output directory that would overwrite one of its inputs.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["artifact_main_path", "artifact_files", "ARTIFACT_LAYOUT"]

# backend: (main file name in a directory, other files beside the main one as suffixes of its path)
ARTIFACT_LAYOUT: dict[str, tuple[str, tuple[str, ...]]] = {
    "onnxruntime": ("model.onnx", (".json", ".onnx.data")),
    "torch": ("model.pt", (".json",)),
    "openvino": ("model.xml", (".bin", ".json")),
    "tensorrt": ("model.engine", (".json",)),
}
_MAIN_SUFFIXES = {"torch": (".pt", ".pth")}


def artifact_main_path(backend: str, path) -> Path:
    """`path` itself when it names the main file (model.onnx for onnxruntime), else `path/<main name>`."""
    path = Path(path)
    main, _ = ARTIFACT_LAYOUT[backend]
    suffixes = _MAIN_SUFFIXES.get(backend, (Path(main).suffix,))
    return path if path.suffix in suffixes else path / main


def artifact_files(backend: str, path) -> list[Path]:
    """Every file saving `backend`'s artifact at `path` may write (the main file first)."""
    if backend not in ARTIFACT_LAYOUT:
        return []
    main = artifact_main_path(backend, path)
    _, others = ARTIFACT_LAYOUT[backend]
    return [main] + [main.with_suffix(s) if s.count(".") == 1 else main.parent / (main.stem + s) for s in others]
