"""How close a compiled model stays to the original: errors, cosine, top-1 agreement."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

__all__ = ["fidelity"]


def fidelity(reference: Callable, candidate: Callable, input_sets: Sequence[Sequence[np.ndarray]]) -> dict:
    """Compare the first output of two callables over several input sets.

    top1_agreement is reported for classifier-like outputs ([N, C] with C > 1), else None.
    """
    refs, gots = [], []
    for inputs in input_sets:
        refs.append(np.asarray(reference(inputs)[0], dtype=np.float64))
        gots.append(np.asarray(candidate(inputs)[0], dtype=np.float64))
    ref, got = np.concatenate([r.reshape(1, -1) if r.ndim < 2 else r for r in refs]), \
        np.concatenate([g.reshape(1, -1) if g.ndim < 2 else g for g in gots])
    if ref.shape != got.shape:
        return {"error": f"output shape {ref.shape} became {got.shape}"}
    diff = got - ref
    denom = float(np.linalg.norm(ref)) or 1.0
    cos_den = float(np.linalg.norm(ref) * np.linalg.norm(got))
    top1 = None
    if ref.ndim == 2 and ref.shape[1] > 1:
        top1 = float(np.mean(ref.argmax(axis=1) == got.argmax(axis=1)))
    return {
        "max_abs_err": float(np.max(np.abs(diff))) if diff.size else 0.0,
        "rel_err": float(np.linalg.norm(diff) / denom),
        # Two all-zero outputs agree exactly; one zero output against another has no direction to compare.
        "cosine": float(np.sum(ref * got) / cos_den) if cos_den else float(not np.any(ref) and not np.any(got)),
        "top1_agreement": top1,
        "samples": int(ref.shape[0]),
    }
