"""What a run can check before any work: its output paths, its numbers, its names.

`check_compile_run` is called at the start of `slimc.compile` (and of `slimc opt`, with the extra
files it writes): it refuses an output that is an input or another output of the run (real path or
inode, so also through symlinked folders and hard links), an output that is a device node or a
directory, an output directory that is an existing file, a folder that cannot be written, and
negative counts — all before the model is loaded, so a mistake costs nothing and changes nothing.
No directory is created here: a run that fails leaves no empty output folders behind.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

from .errors import SlimcError, closest
from .ir.files import RunPaths

__all__ = ["check_compile_run", "check_search_run", "check_leaf_modules"]

# search-store files (slimc.search.store / report), listed here so a store can be checked before it is opened
_STORE_FILES = ("trials.jsonl", "search.json", "baseline.json", "best.txt", "pareto.png", "summary.md")


def _check_folder_writable(folder: Path, label: str) -> None:
    """The nearest existing ancestor of `folder` is a directory slimc can create entries in (tested, undone)."""
    probe = Path(os.path.abspath(folder))
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise SlimcError(f"{label} '{folder}' cannot be written (cannot write into '{probe}': it is a file, not a "
                         "directory). Choose another location.")
    try:
        os.rmdir(tempfile.mkdtemp(dir=probe, prefix=".slimc-write-test-"))
    except OSError as exc:
        raise SlimcError(f"{label} '{folder}' cannot be written: {exc.strerror} (in '{probe}'). "
                         f"Choose another {label}.") from None


def check_compile_run(model, *, backend: str | None,
                      output_dir=None, report_path=None, dump_ir=None, benchmark_iters: int = 0,
                      fidelity_samples: int = 0, inputs: Iterable[tuple[str, object]] = (),
                      outputs: Iterable[tuple[str, object]] = ()) -> None:
    """Everything about a compile run that can be refused before any work (see the module doc).

    inputs / outputs: extra (label, path) pairs, e.g. ('--pipeline-file', path) or ('-o', 'x.onnx').
    """
    from .backend.files import ARTIFACT_LAYOUT, artifact_files, artifact_main_path
    from .ir.dump import prepare_dump_dir

    for flag, value in (("--benchmark", benchmark_iters), ("fidelity_samples", fidelity_samples)):
        if value is not None and value < 0:
            raise SlimcError(f"{flag} {value} must be 0 or more.")
    paths = RunPaths().inputs_of_spec("model", model)
    for label, p in inputs:
        paths.input(label, p)
    folders: list[tuple[Path, str]] = []  # probed for writability once the paths themselves are known good
    if output_dir is not None and backend in ARTIFACT_LAYOUT:
        main = artifact_main_path(backend, output_dir)
        if main.parent.exists() and not main.parent.is_dir():
            raise SlimcError(f"--output-dir '{main.parent}' is an existing file, not a directory; give a directory "
                             f"(or a '{Path(main.name).suffix}' file name) for the artifact.")
        paths.outputs_in("--output-dir", artifact_files(backend, output_dir))
        folders.append((main.parent, "output directory"))
    if report_path is not None:
        paths.output("--report", report_path)
        folders.append((Path(report_path).parent, "--report folder"))
    for label, p in outputs:
        paths.output(label, p)
        folders.append((Path(p).parent, f"{label} folder"))
    if dump_ir is not None:
        _check_dump_dir(paths, Path(dump_ir))
        folders.append((Path(dump_ir), "--dump-ir"))
    paths.check()
    for folder, label in dict.fromkeys(folders):
        _check_folder_writable(folder, label)
    if dump_ir is not None:
        prepare_dump_dir(dump_ir)  # last: clears an earlier dump only once everything else is known to be fine


def _check_dump_dir(paths: RunPaths, dump: Path) -> None:
    """The dump folder must not be, or hold, a file of the run (it is cleared of earlier dumps)."""
    real = os.path.realpath(dump)
    for label, p in paths.inputs + paths.outputs:
        if os.path.realpath(p) == real:
            raise SlimcError(f"--dump-ir '{dump}' is the path of {label} '{p}'; give a directory of its own.")
        if os.path.dirname(os.path.realpath(p)) == real:  # cleared of earlier dumps, or refused as used
            raise SlimcError(f"--dump-ir '{dump}' holds {label} '{p}'; give the IR dumps a directory of their own.")


def check_search_run(model, store, *, inputs: Iterable[tuple[str, object]] = ()) -> None:
    """The search store's files are none of the run's inputs (model, eval file, pipeline file)."""
    paths = RunPaths().inputs_of_spec("model", model)
    for label, p in inputs:
        if isinstance(p, (str, os.PathLike)) and str(p).rpartition(":")[0].endswith(".py"):
            p = str(p).rpartition(":")[0]
        paths.input(label, p)
    store = Path(store)
    if store.exists() and not store.is_dir():
        raise SlimcError(f"--store '{store}' is a file, not a directory; give a folder for the search's files.")
    paths.outputs_in("--store", (store / n for n in _STORE_FILES))
    paths.check()


def check_leaf_modules(module, leaf_modules: Sequence) -> None:
    """Every --leaf-module name matches a submodule name or class name of `module`; a typo is an error."""
    names = [n for n in leaf_modules if isinstance(n, str)]
    if not names:
        return
    qualnames = [q for q, _ in module.named_modules() if q]
    classes = {type(m).__name__ for m in module.modules()}
    for name in names:
        if name not in classes and name not in qualnames:
            raise SlimcError(f"--leaf-module '{name}' matches no submodule name or class of {type(module).__name__}"
                             f"{closest(name, list(classes) + qualnames)}. Names look like 'layer1.0' or 'MyBlock'.")
