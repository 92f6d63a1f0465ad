"""Keeping the user's files safe: every path a run reads or writes, checked before any work.

* `RunPaths` collects a run's inputs and outputs and refuses (SlimcError) an output that is an
  input, or another output of the same run, by real path or by inode (hard links, symlinked folders).
* `check_replaceable` refuses to write over anything that is not a regular file (a device node such
  as /dev/null, a fifo, a directory): write-then-rename would turn it into a regular file.
* `read_text_bounded` reads a text file the user named with a size limit and a clear error for
  non-UTF-8 bytes (`--pipeline-file /dev/zero` fails at once instead of filling memory).
* `write_unit` writes the files of one artifact as a unit: all staged in a private temporary folder
  beside the target, a sidecar manifest with their SHA-256 written last, and the renames done under
  a lock on the folder, so concurrent saves never mix a pair and a reader can check the pair.
* `os_error` turns ENOSPC/EACCES/... into one user-facing paragraph.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Callable, Iterable

from ..errors import SlimcError

__all__ = ["RunPaths", "check_replaceable", "read_text_bounded", "write_unit", "verify_unit", "os_error",
           "input_files_of_spec", "TEXT_LIMIT", "MANIFEST_KEY"]

TEXT_LIMIT = 1 << 20  # pipeline scripts and similar hand-written text: 1 MiB is far past any real one
MANIFEST_KEY = "files"  # the sidecar key listing {name: {"bytes": n, "sha256": hex}} of the unit's files


def os_error(path, exc: OSError, doing: str = "write") -> SlimcError:
    """One paragraph for an OSError on `path`: what failed and what to do."""
    why = exc.strerror or str(exc)
    hint = {errno.ENOSPC: "The disk is full: free some space or choose another location",
            errno.EDQUOT: "The disk quota is used up: free some space or choose another location",
            errno.EROFS: "The file system is read-only: choose a writable location"}.get(
        exc.errno, "Choose a writable location")
    return SlimcError(f"cannot {doing} '{path}': {why}. {hint}; nothing was left half-written.")


# ---- what a path is ------------------------------------------------------------------------

def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a fifo (named pipe)"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def check_replaceable(path, what: str = "output") -> Path:
    """The real path to write `path` to; SlimcError when something other than a regular file is there.

    A symlink is followed (the file it points to is replaced, the link stays), so the check is on
    what the link points to.
    """
    path = Path(path)
    real = Path(os.path.realpath(path))
    try:
        st = os.stat(real)
    except (FileNotFoundError, NotADirectoryError):  # a new file (a missing folder is reported where it is made)
        return real
    except OSError as exc:
        raise os_error(path, exc) from None
    if not stat.S_ISREG(st.st_mode):
        raise SlimcError(f"cannot write {what} '{path}': it is {_kind(st.st_mode)}, not a regular file, and slimc "
                         "writes a new file and renames it into place, which would replace it. Give the path of a "
                         "file instead.")
    return real


def read_text_bounded(path, what: str, limit: int = TEXT_LIMIT) -> str:
    """The UTF-8 text of a small file the user named, read with a size limit."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise SlimcError(f"cannot read {what} '{path}': {exc.strerror or exc}.") from None
    if len(data) > limit:
        raise SlimcError(f"{what} '{path}' is larger than {limit // 1024} KiB; it is not a {what} (slimc stops "
                         "reading there instead of filling memory).")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise SlimcError(f"{what} '{path}' is not UTF-8 text (byte 0x{data[exc.start]:02x} at line {line}); "
                         "save it as UTF-8.") from None


# ---- outputs onto inputs ---------------------------------------------------------------------

def input_files_of_spec(spec) -> list[Path]:
    """The files a model spec reads: 'm.onnx', 'm.onnxtxt' (+ its '.onnx.data'), 'm.pt', 'file.py:factory'."""
    if not isinstance(spec, (str, os.PathLike)):
        return []
    text = str(spec)
    if text.endswith((".onnx", ".pt", ".pth")):
        return [Path(text), Path(text + ".data")]
    if text.endswith(".onnxtxt"):
        return [Path(text), Path(text).with_suffix(".onnx"), Path(text).with_suffix(".onnx.data")]
    head, sep, _ = text.rpartition(":")
    if sep and head.endswith(".py"):
        return [Path(head)]
    return []


def _identity(path: Path) -> tuple:
    """(device, inode) of an existing file, else its real path: two paths with equal identities are one file."""
    try:
        st = os.stat(path)
        return ("inode", st.st_dev, st.st_ino)
    except OSError:
        return ("path", os.path.realpath(path))


class RunPaths:
    """Every file a run reads and writes; `check()` refuses overlaps before any work.

    Example::

        paths = RunPaths()
        paths.input("model", "m/model.onnx")
        paths.output("--output-dir", "m/model.onnx")
        paths.check()   # SlimcError: --output-dir 'm/model.onnx' is the input model ...
    """

    def __init__(self):
        self.inputs: list[tuple[str, Path]] = []
        self.outputs: list[tuple[str, Path]] = []

    def input(self, label: str, path) -> "RunPaths":
        if path is not None and Path(path).exists():
            self.inputs.append((label, Path(path)))
        return self

    def inputs_of_spec(self, label: str, spec) -> "RunPaths":
        for p in input_files_of_spec(spec):
            self.input(label, p)
        return self

    def output(self, label: str, path) -> "RunPaths":
        if path is not None:
            self.outputs.append((label, Path(path)))
        return self

    def outputs_in(self, label: str, paths: Iterable) -> "RunPaths":
        for p in paths:
            self.output(label, p)
        return self

    def check(self) -> None:
        seen: dict[tuple, tuple[str, Path]] = {}
        for label, path in self.inputs:
            seen.setdefault(_identity(path), (f"input {label}", path))
        for label, path in self.outputs:
            ident = _identity(path)
            if ident in seen:
                other_label, other = seen[ident]
                if other_label.startswith("input"):
                    raise SlimcError(
                        f"{label} would write '{path}', which is the {other_label} '{other}'; slimc never "
                        "overwrites its inputs. Choose another output location.")
                raise SlimcError(f"{label} would write '{path}', which {other_label} also writes; give the two "
                                 "outputs different paths.")
            seen[ident] = (label, path)
            check_replaceable(path, label)


# ---- artifacts as one unit -----------------------------------------------------------------------

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def _folder_lock(folder: Path, shared: bool = False):
    """A flock on the folder itself (no lock file left behind): saves take turns (exclusive), and a
    reader checking a unit (shared) never sees it between two renames of a save."""
    import fcntl

    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def write_unit(main: Path, write: Callable[[Path], None], sidecar: dict | None) -> Path:
    """Write one artifact's files as a unit; returns `main`.

    `write(staging)` writes the files under their final names into the folder `staging`; when
    `sidecar` is given, it is written last as `main.with_suffix('.json')` with the size and SHA-256
    of every other file under MANIFEST_KEY (`verify_unit` checks them at load). Nothing replaces the
    old files until every new one is complete, and the renames hold a lock on the target folder.
    """
    main = Path(main)
    folder = main.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=folder, prefix=f".{main.name}.", suffix=".tmp"))
    except OSError as exc:
        raise os_error(main, exc) from None
    try:
        try:
            write(staging)
            names = sorted(p.name for p in staging.iterdir())
            if sidecar is not None:
                side = main.with_suffix(".json")
                files = {n: {"bytes": (staging / n).stat().st_size, "sha256": _sha256(staging / n)} for n in names}
                (staging / side.name).write_text(json.dumps({**sidecar, MANIFEST_KEY: files}, indent=2, default=str))
                names.append(side.name)  # last: its presence vouches for the files before it
            for n in names:
                check_replaceable(folder / n, "artifact file")
            with _folder_lock(folder):
                for n in names:
                    os.replace(staging / n, folder / n)
        except OSError as exc:
            raise os_error(main, exc) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return main


def verify_unit(main: Path) -> dict:
    """The sidecar of an artifact written by `write_unit`, after checking every listed file's SHA-256.

    An artifact without a sidecar, or with one written before manifests existed, returns what there is
    ({} without a sidecar); a mismatch is a SlimcError naming the file.
    """
    main = Path(main)
    side = main.with_suffix(".json")
    if not side.is_file():
        return {}
    with _folder_lock(main.parent, shared=True):
        try:
            data = json.loads(read_text_bounded(side, "artifact sidecar", 64 << 20))
        except ValueError as exc:
            raise SlimcError(f"the sidecar '{side}' is not valid JSON ({exc}); save the artifact again.") from None
        if not isinstance(data, dict):
            raise SlimcError(f"the sidecar '{side}' is not a JSON object; save the artifact again.")
        for name, want in (data.get(MANIFEST_KEY) or {}).items():
            f = main.parent / str(name)
            if not isinstance(want, dict) or not f.is_file() or f.stat().st_size != want.get("bytes") \
                    or _sha256(f) != want.get("sha256"):
                raise SlimcError(f"'{f}' does not match its sidecar '{side}' (size or SHA-256 differ): the two come "
                                 "from different saves or the file was changed. Save the artifact again.")
    return data
