"""Reading and writing ONNX models: binary `.onnx`, the text syntax `.onnxtxt`, external data.

Writes are atomic (temporary file + rename), so an interrupted run never leaves a half-written
model where the user expects one. Weights go to an external `.data` file when the model is too
large for one protobuf (2 GiB) or when asked, as for the IR dumps.
"""

from __future__ import annotations

import copy
import errno
import os
import secrets
from pathlib import Path

from ..errors import SlimcError, first_line

__all__ = ["fits_protobuf", "write_json", "load_onnx", "save_onnx", "save_onnx_text", "model_size_bytes", "PROTOBUF_LIMIT", "atomic_write"]

PROTOBUF_LIMIT = 2**31 - 1
_EXTERNAL_THRESHOLD = 1024


def _weight_bytes(model) -> int:
    """Bytes held by the initializers, read from field lengths (no protobuf size walk, which costs
    ~0.2 s on resnet50)."""
    total = 0
    for t in model.graph.initializer:
        total += len(t.raw_data) + 4 * (len(t.float_data) + len(t.int32_data)) \
            + 8 * (len(t.int64_data) + len(t.double_data) + len(t.uint64_data))
    return total


# Below this many bytes of weights, the rest of a graph cannot push it past the limit.
_SURELY_FITS = PROTOBUF_LIMIT - 256 * 2**20


def model_size_bytes(model) -> int:
    """Serialized size; protobuf refuses to even measure a message past 2 GiB, so say 'over'."""
    from google.protobuf.message import EncodeError

    if _weight_bytes(model) >= PROTOBUF_LIMIT:
        return PROTOBUF_LIMIT
    try:
        return model.ByteSize()
    except EncodeError:
        return PROTOBUF_LIMIT


def fits_protobuf(model) -> bool:
    """Whether the model serialises into one protobuf (under 2 GiB)."""
    if _weight_bytes(model) < _SURELY_FITS:
        return True
    return model_size_bytes(model) < PROTOBUF_LIMIT


def load_onnx(path: str | os.PathLike):
    """Load an `.onnx` (with its external data) or `.onnxtxt` file, or fail with a clear message."""
    import onnx
    import onnx.external_data_helper as edh

    path = Path(path)
    if not path.is_file():
        raise SlimcError(f"ONNX file '{path}' does not exist.")
    try:
        if path.suffix == ".onnxtxt":
            model = onnx.parser.parse_model(path.read_text())
            edh.load_external_data_for_model(model, str(path.parent))
        else:
            model = onnx.load(str(path))
    except Exception as exc:  # protobuf DecodeError, parser errors, missing external data
        raise SlimcError(
            f"cannot read '{path}' as an ONNX model: {str(exc).strip() or type(exc).__name__}. "
            "The file may be truncated or not an ONNX model; re-export it (torch.onnx.export) and try again."
        ) from None
    if not len(model.graph.node) and not len(model.graph.output):
        raise SlimcError(f"'{path}' holds no ONNX graph (no nodes, no outputs); it is probably not an ONNX model.")
    try:
        onnx.checker.check_model(model if fits_protobuf(model) else str(path))
    except Exception as exc:
        raise SlimcError(f"'{path}' is not a valid ONNX model: {first_line(exc)}") from None
    return model


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call `write(tmp_path)` then move the temporary file onto `path` in one rename.

    Only a regular file (or nothing) is ever replaced: a device node, fifo or directory at `path`
    is refused, and a symlink is written through (the file it points to is replaced, the link stays).
    """
    from .files import check_replaceable, os_error

    shown = Path(path)
    path = check_replaceable(shown)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _new_temp_file(path)
    except OSError as exc:
        raise os_error(shown, exc) from None
    try:
        try:
            write(tmp)
            os.replace(tmp, path)
        except OSError as exc:  # a full disk while writing, or `path` became a directory meanwhile
            raise os_error(shown, exc) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: str | os.PathLike, data) -> None:
    """Write `data` as indented JSON, atomically (reports, sidecars)."""
    import json

    text = json.dumps(data, indent=2, default=str)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _new_temp_file(path: Path) -> str:
    """An empty, new file beside `path`. Not mkstemp: its files are private (0600), and the result
    should get the permissions a plain open() gives (the umask), like files other tools write."""
    for _ in range(100):
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary file name", str(path.parent))


def save_onnx(model, path: str | os.PathLike, external_data: bool | None = None) -> Path:
    """Save atomically; weights go to `<name>.data` beside it when `external_data` (default: only over 2 GiB).

    The caller's model is never modified (external-data conversion works on a copy).
    """
    import onnx

    path = Path(path)
    if external_data is None:
        external_data = not fits_protobuf(model)
    if not external_data:
        atomic_write(path, lambda tmp: onnx.save_model(model, tmp))
        return path
    from .files import write_unit

    data_name = path.name + ".data"
    staged = copy.deepcopy(model)

    def write(folder: Path) -> None:
        onnx.save_model(staged, str(folder / path.name), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=data_name, size_threshold=_EXTERNAL_THRESHOLD)

    write_unit(path, write, sidecar=None)  # model and its .data land together, under the folder's lock
    return path


def save_onnx_text(model, path: str | os.PathLike) -> Path:
    """Write the ONNX text syntax (`onnx.printer`) with weights in `<stem>.onnx.data` beside it.

    The text stays small and readable; `load_onnx` reads it back with its weights.
    Also writes `<stem>.onnx` (for Netron) sharing the same data file.
    """
    import onnx

    path = Path(path)
    binary = path.with_suffix(".onnx")
    staged = copy.deepcopy(model)
    save_onnx(staged, binary, external_data=True)
    # Reload the header only (not the weights): its tensors carry the external-data offsets.
    header = onnx.load(str(binary), load_external_data=False)
    text = onnx.printer.to_text(header)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return path


