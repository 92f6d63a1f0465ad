"""How close a compiled model stays to the original: errors, cosine, top-1 agreement, non-finite values.

The result is one dict, always (the check never raises: a compile must not die of its own check):

* measured:  {"ok": bool, "failure": text or None, "max_abs_err", "rel_err", "cosine",
              "top1_agreement", "nonfinite", "samples", "inputs"}
  `ok` is False when an output's shape changed, when the compiled model fails on inputs the
  original runs on, or when it yields NaN/Inf where the original does not (or the reverse):
  a NaN is a failure, never a small error.
* unmeasured: {"error": "failed to measure: <why>"} when the original itself cannot run on any
  of the inputs, or the check hit something it cannot compare.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from ..errors import first_line as _first_line

__all__ = ["fidelity"]


def fidelity(reference: Callable, candidate: Callable, input_sets: Sequence[Sequence[np.ndarray]],
             fallback: Sequence[np.ndarray] | None = None, passthrough: tuple = ()) -> dict:
    """Compare the first output of two callables over several input sets.

    fallback: inputs known to be valid (the example inputs); used once when the original
    rejects every random set (e.g. a Div by an integer input drawn as zero).
    passthrough: exception types the caller handles itself (e.g. an artifact built for another machine).
    top1_agreement is reported for classifier-like outputs ([N, C] with C > 1), else None.
    """
    try:
        return _fidelity(reference, candidate, input_sets, fallback, passthrough)
    except passthrough:
        raise
    except Exception as exc:  # the check must never end the compile
        return {"error": f"failed to measure: {type(exc).__name__}: {_first_line(exc)}"}


def _fidelity(reference, candidate, input_sets, fallback, passthrough) -> dict:
    pairs, rejected, kind = [], None, "random"
    for inputs in input_sets:
        try:
            ref = reference(inputs)[0]
        except Exception as exc:  # this draw is outside the original's domain; try the others
            rejected = rejected or exc
            continue
        pairs.append((inputs, ref))
    if not pairs and fallback is not None:
        try:
            pairs.append((fallback, reference(fallback)[0]))
            kind = "examples"
        except Exception as exc:
            rejected = exc
    if not pairs:
        why = f"the original model does not run on the check's inputs ({_first_line(rejected)})" if rejected \
            else "no input sets"
        return {"error": f"failed to measure: {why}"}
    refs, gots = [], []
    for inputs, ref in pairs:
        try:
            got = candidate(inputs)[0]
        except passthrough:
            raise
        except Exception as exc:
            return _failed(f"the compiled model fails on inputs the original runs on: {_first_line(exc)}",
                           len(pairs), kind)
        ref, got = np.asarray(ref), np.asarray(got)
        if ref.shape != got.shape:
            return _failed(f"output shape {ref.shape} became {got.shape}", len(pairs), kind)
        refs.append(ref)
        gots.append(got)
    return _compare(refs, gots, kind)


def _failed(why: str, samples: int, kind: str) -> dict:
    return {"ok": False, "failure": why, "max_abs_err": None, "rel_err": None, "cosine": None,
            "top1_agreement": None, "nonfinite": 0, "samples": samples, "inputs": kind}


def _compare(refs: list[np.ndarray], gots: list[np.ndarray], kind: str) -> dict:
    if not all(r.dtype.kind in "biuf" for r in refs + gots):  # strings, objects: equal or not
        same = all(np.array_equal(r, g) for r, g in zip(refs, gots))
        out = {"ok": same, "failure": None if same else "non-numeric outputs differ", "max_abs_err": 0.0 if same
               else None, "rel_err": None, "cosine": None, "top1_agreement": None, "nonfinite": 0,
               "samples": len(refs), "inputs": kind}
        return out
    ref = np.concatenate([r.astype(np.float64).ravel() for r in refs])
    got = np.concatenate([g.astype(np.float64).ravel() for g in gots])
    # NaN where the original has NaN (acosh of a negative) is agreement; anything else non-finite is not.
    same_special = (np.isnan(ref) & np.isnan(got)) | (np.isinf(ref) & (ref == got))
    finite = np.isfinite(ref) & np.isfinite(got)
    nonfinite = int(np.sum(~finite & ~same_special))
    r, g = ref[finite], got[finite]
    diff = g - r
    denom = float(np.linalg.norm(r)) or 1.0
    cos_den = float(np.linalg.norm(r) * np.linalg.norm(g))
    top1 = None
    if all(x.ndim == 2 and x.shape[1] > 1 and x.size for x in refs) and not nonfinite:
        top1 = float(np.mean(np.concatenate([a.argmax(axis=1) == b.argmax(axis=1) for a, b in zip(refs, gots)])))
    failure = None
    if nonfinite:
        failure = (f"{nonfinite} output values are NaN or Inf where the original's are not (or the reverse), "
                   f"e.g. a value past the range of a lower precision")
    if nonfinite and not diff.size:  # nothing finite left to measure an error on
        return {**_failed(failure, len(refs), kind), "nonfinite": nonfinite}
    return {
        "ok": failure is None,
        "failure": failure,
        "max_abs_err": float(np.max(np.abs(diff))) if diff.size else 0.0,
        "rel_err": float(np.linalg.norm(diff) / denom),
        # Two all-zero outputs agree exactly; one zero output against another has no direction to compare.
        "cosine": float(np.sum(r * g) / cos_den) if cos_den else float(not np.any(r) and not np.any(g)),
        "top1_agreement": top1,
        "nonfinite": nonfinite,
        "samples": len(refs),
        "inputs": kind,
    }
