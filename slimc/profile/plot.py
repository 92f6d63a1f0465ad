"""Pictures of a profile: horizontal bars of the top modules (matplotlib, the `plot` extra)."""

from __future__ import annotations

from pathlib import Path

from ..errors import SlimcError
from .result import Profile, compare

__all__ = ["plot_profiles"]


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only; never open a window
        import matplotlib.pyplot as plt
    except ImportError:
        raise SlimcError("drawing the profile needs matplotlib: pip install 'slimc[plot]'.") from None
    return plt


def plot_profiles(profiles: list[Profile], path: str | Path, top: int = 20) -> Path:
    """Bars of ms per module, top `top`; two profiles of one backend are drawn side by side (before/after).

    Written atomically as PNG (or SVG, by the suffix).
    """
    from ..ir.onnx_io import atomic_write

    plt = _pyplot()
    backends = list(dict.fromkeys(p.backend for p in profiles))
    fig, axes = plt.subplots(1, len(backends), figsize=(6.5 * len(backends), 0.32 * top + 1.6), squeeze=False)
    for ax, backend in zip(axes[0], backends):
        mine = [p for p in profiles if p.backend == backend]
        if len(mine) >= 2:
            rows = compare(mine[0], mine[1])[:top][::-1]
            names = [r["module"] for r in rows]
            y = range(len(rows))
            ax.barh([i + 0.2 for i in y], [r["ms_before"] for r in rows], height=0.4, label=mine[0].label or "before")
            ax.barh([i - 0.2 for i in y], [r["ms_after"] for r in rows], height=0.4, label=mine[1].label or "after")
            ax.legend(loc="lower right", fontsize=8)
        else:
            rows = mine[0].by_module()[:top][::-1]
            names = [r["module"] for r in rows]
            y = range(len(rows))
            ax.barh(list(y), [r["ms"] for r in rows], height=0.7)
        ax.set_yticks(list(y))
        ax.set_yticklabels(names, fontsize=8)
        ax.set_xlabel("ms per typical run")
        sums = ", ".join(f"{p.label or 'model'}: {p.profiled_ms:.2f} of {p.end_to_end_ms:.2f} ms" for p in mine)
        ax.set_title(f"{backend} — top {len(rows)} modules\n{sums}", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fmt = "svg" if path.suffix.lower() == ".svg" else "png"
    atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=90))
    plt.close(fig)
    return path
