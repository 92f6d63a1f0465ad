"""Model specs: how a user names a model.

* an `nn.Module` object (deep-copied: the caller's module is never changed)
* `"torchvision:resnet50"`: a torchvision model with random weights (nothing is downloaded)
* `"path/to/file.py:factory"`: a callable in a Python file that returns an `nn.Module`
* `"model.onnx"` / `"model.onnxtxt"`: an ONNX model
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import importlib.util
import sys
from pathlib import Path
from typing import Any

from ..errors import SlimcError, closest, first_line

__all__ = ["load_model", "describe_source", "load_callable", "trusted_pickles"]


def describe_source(model: Any) -> str:
    return model if isinstance(model, str) else type(model).__name__


def load_model(model: Any):
    """Resolve a model spec to a private `nn.Module` (eval mode) or an `onnx.ModelProto`."""
    import onnx
    import torch

    if isinstance(model, torch.nn.Module):
        try:
            return copy.deepcopy(model).eval()
        except Exception as exc:
            raise SlimcError(
                f"cannot copy the {type(model).__name__} module ({exc}); slimc works on a private copy so your "
                "module is never changed. Make it deep-copyable (no open files or locks as attributes)."
            ) from None
    if isinstance(model, onnx.ModelProto):
        return copy.deepcopy(model)
    if not isinstance(model, (str, Path)):
        raise SlimcError(
            f"slimc cannot compile a {type(model).__name__}: give an nn.Module, an onnx.ModelProto, "
            "'torchvision:NAME', 'file.py:factory' or a path to an .onnx file."
        )
    spec = str(model)
    if spec.endswith((".onnx", ".onnxtxt")):
        from ..ir.onnx_io import load_onnx

        return load_onnx(spec)
    if spec.startswith("torchvision:"):
        return _torchvision(spec.split(":", 1)[1])
    if ":" in spec and spec.rsplit(":", 1)[0].endswith(".py"):
        path, factory = spec.rsplit(":", 1)
        return _from_factory(Path(path), factory)
    if spec.endswith((".pt", ".pth")):
        return _from_pickle(Path(spec))
    raise SlimcError(
        f"'{spec}' is not a model spec slimc understands. Use 'torchvision:NAME' (e.g. torchvision:resnet50), "
        "'path/to/file.py:factory' (a function returning an nn.Module), or a path to a .onnx file."
    )


def _torchvision(name: str):
    import torchvision

    known = torchvision.models.list_models()
    if name not in known:
        raise SlimcError(
            f"torchvision has no model '{name}'{closest(name, known)}. "
            "`python -c 'import torchvision; print(torchvision.models.list_models())'` lists them."
        )
    import inspect

    # weights=None: random weights, so nothing is downloaded at compile time. Segmentation and detection
    # builders also load a pretrained backbone unless told weights_backbone=None.
    builder = torchvision.models.get_model_builder(name)
    extra = {"weights_backbone": None} if "weights_backbone" in inspect.signature(builder).parameters else {}
    return builder(weights=None, **extra).eval()


def load_callable(spec: str, what: str = "function", *, cached: bool = False):
    """'path/to/file.py:name' -> the callable `name` defined in that file.

    cached: reuse the file's module when it was already imported (a search's eval function is looked
    up once per trial; re-running the user's file each time would redo its imports and set-up).
    """
    path_text, sep, name = spec.rpartition(":")
    path = Path(path_text)
    if not sep or not path_text.endswith(".py"):
        raise SlimcError(f"'{spec}' is not 'path/to/file.py:{what}'.")
    if not path.is_file():
        raise SlimcError(f"file '{path}' does not exist (from the spec '{spec}').")
    module_name = f"_slimc_user_{abs(hash(str(path.resolve())))}"
    if cached and module_name in sys.modules:
        return _callable_in(sys.modules[module_name], path, name)
    loader_spec = importlib.util.spec_from_file_location(module_name, path)
    mod = importlib.util.module_from_spec(loader_spec)
    sys.modules[module_name] = mod  # lets pickling and dataclasses in the user's file work
    try:
        loader_spec.loader.exec_module(mod)
    except Exception as exc:
        del sys.modules[module_name]
        raise SlimcError(f"importing '{path}' failed: {type(exc).__name__}: {exc}") from None
    return _callable_in(mod, path, name)


def _callable_in(mod, path: Path, name: str):
    fn = getattr(mod, name, None)
    if fn is None or not callable(fn):
        names = [n for n in vars(mod) if callable(getattr(mod, n)) and not n.startswith("_")]
        raise SlimcError(f"'{path}' has no callable '{name}'{closest(name, names)}.")
    return fn


def _from_factory(path: Path, factory: str):
    """Run the user's factory. User code can do anything the user can (read, write, exit); what slimc
    can do is keep its exits and errors from ending the run without a word."""
    import torch

    try:
        fn = load_callable(f"{path}:{factory}", "factory")
        built = fn()
    except SystemExit as exc:  # sys.exit() in the file or the factory: not slimc's exit code to give
        raise SlimcError(f"'{path}:{factory}' called sys.exit({exc.code!r}) while slimc was loading the model; "
                         "a factory must return an nn.Module instead of exiting.") from None
    except SlimcError:
        raise
    except Exception as exc:
        raise SlimcError(f"'{path}:{factory}()' raised {type(exc).__name__}: {exc}") from None
    if not isinstance(built, torch.nn.Module):
        raise SlimcError(
            f"'{path}:{factory}()' returned a {type(built).__name__}, not a torch.nn.Module. "
            "The factory must build and return the model."
        )
    return built.eval()


_TRUST_PICKLE: contextvars.ContextVar[bool] = contextvars.ContextVar("slimc_trust_pickle", default=False)


@contextlib.contextmanager
def trusted_pickles():
    """Within this block, `.pt` model files may hold pickled code (a whole pickled nn.Module).

    Unpickling runs whatever code the file names, with your permissions; only use it for files you
    made or trust. The CLI's `--trust-pickle` does this. Without it, `.pt` files load with
    `torch.load(weights_only=True)`, which runs no code. In Python you can also load the file
    yourself (`torch.load(path, weights_only=False)`) and pass the module.
    """
    token = _TRUST_PICKLE.set(True)
    try:
        yield
    finally:
        _TRUST_PICKLE.reset(token)


def _from_pickle(path: Path):
    import pickle

    import torch

    if not path.is_file():
        raise SlimcError(f"model file '{path}' does not exist.")
    trusted = _TRUST_PICKLE.get()
    try:
        obj = torch.load(str(path), weights_only=not trusted, map_location="cpu")
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if trusted or "unsupported global" not in text.lower():  # not a refused class: a damaged file
            detail = next((ln.strip() for ln in text.splitlines() if "Unsupported" in ln), text.strip()[:200])
            raise SlimcError(f"cannot load '{path}' with torch.load: {detail}") from None
        raise SlimcError(
            f"'{path}' is a pickle that names code to run when loaded (a whole pickled module, not only tensors), "
            "and slimc loads .pt files with torch.load(weights_only=True), which runs no code. If you made this "
            "file or trust it, add --trust-pickle (in Python: `with slimc.frontend.specs.trusted_pickles():`)."
        ) from None
    except Exception as exc:
        first = first_line(exc)
        raise SlimcError(f"cannot load '{path}' with torch.load: {first}") from None
    if not isinstance(obj, torch.nn.Module):
        raise SlimcError(
            f"'{path}' holds a {type(obj).__name__}, not a pickled nn.Module (a state_dict needs the model's "
            "code: use 'file.py:factory' instead)."
        )
    return obj.eval()
