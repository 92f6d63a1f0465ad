"""The end of a search: best.txt, pareto.png, summary.md in the run folder."""

from __future__ import annotations

import math
from pathlib import Path

from ..ir.onnx_io import atomic_write

__all__ = ["best_record", "pareto_ids", "write_reports", "plot_pareto", "summary_markdown"]


def _ok(records: list[dict]) -> list[dict]:
    return [r for r in records if r.get("metrics") and r["status"] != "failed"]


def best_record(records: list[dict]) -> dict | None:
    """The feasible trial with the highest score (lower latency, then lower id, breaks ties)."""
    feasible = [r for r in _ok(records) if r["status"] == "ok"]
    if not feasible:
        return None
    return min(feasible, key=lambda r: (-r["metrics"]["score"], _lat(r), r["id"]))


def _lat(r: dict) -> float:
    lat = r["metrics"].get("latency_ms")
    return math.inf if lat is None else lat


def pareto_ids(records: list[dict]) -> set[int]:
    """Ids of measured trials that no other trial beats on both score (higher) and latency (lower)."""
    pts = [(r["id"], r["metrics"]["score"], _lat(r)) for r in _ok(records)]
    front = set()
    for i, s, lat in pts:
        dominated = any((s2 >= s and l2 <= lat) and (s2 > s or l2 < lat) for j, s2, l2 in pts if j != i)
        if not dominated:
            front.add(i)
    return front


def plot_pareto(records: list[dict], path: Path, baseline: dict | None = None) -> str | None:
    """Score vs latency for every measured trial, the Pareto front highlighted.
    Returns None when written, else why not (matplotlib missing, nothing to plot)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "pareto.png not written: matplotlib is not installed (pip install matplotlib)"
    measured = [r for r in _ok(records) if r["metrics"].get("latency_ms") is not None]
    if not measured:
        return "pareto.png not written: no trial was measured"
    front = pareto_ids(measured)
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    for status, marker, colour, label in (("ok", "o", "tab:blue", "feasible"),
                                          ("infeasible", "x", "tab:gray", "infeasible")):
        pts = [r for r in measured if r["status"] == status]
        if pts:
            ax.scatter([r["metrics"]["latency_ms"] for r in pts], [r["metrics"]["score"] for r in pts],
                       marker=marker, c=colour, label=label, alpha=0.7)
    line = sorted((r for r in measured if r["id"] in front), key=lambda r: r["metrics"]["latency_ms"])
    ax.plot([r["metrics"]["latency_ms"] for r in line], [r["metrics"]["score"] for r in line], "-o",
            c="tab:red", label="Pareto front", mfc="none", ms=10)
    if baseline and baseline.get("latency_ms") is not None:
        ax.axvline(baseline["latency_ms"], ls=":", c="k", label="dense latency")
    ax.set_xlabel("latency, median (ms)")
    ax.set_ylabel(f"score ({measured[0]['metrics'].get('score_kind', 'score')})")
    ax.set_title("slimc search: score vs latency")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return None


def _fmt(x, digits=4) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return str(x)


def _human(n) -> str:
    if n is None:
        return "-"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"


def summary_markdown(records: list[dict], meta: dict, baseline: dict | None, note: str | None = None) -> str:
    best = best_record(records)
    front = pareto_ids(records)
    counts = {s: sum(r["status"] == s for r in records) for s in ("ok", "infeasible", "failed")}
    lines = ["# slimc search", "",
             f"* model: `{meta.get('model')}`", f"* pipeline: `{meta.get('pipeline')}`",
             f"* objective: {meta.get('objective')}; algorithm: {meta.get('algo')}; backend: {meta.get('backend')}",
             f"* constraints: {_constraints_text(meta.get('constraints') or {})}",
             f"* trials: {len(records)} ({counts['ok']} feasible, {counts['infeasible']} infeasible, "
             f"{counts['failed']} failed)"]
    if baseline:
        lines.append(f"* dense model: score {_fmt(baseline.get('score'))}, latency {_fmt(baseline.get('latency_ms'))}"
                     f" ms, MACs {_human(baseline.get('macs'))}, params {_human(baseline.get('params'))}")
    if best:
        m = best["metrics"]
        lines += [f"* best feasible: trial {best['id']}, score {_fmt(m['score'])}, latency "
                  f"{_fmt(m.get('latency_ms'))} ms, MACs {_human(m.get('macs'))} (best.txt):", "",
                  "```", best["pipeline"], "```"]
    else:
        lines.append("* no feasible trial: best.txt not written")
    if note:
        lines.append(f"* {note}")
    labels = list(meta.get("dimensions") or [])
    shown = labels if len(labels) <= 6 else []
    head = ["id", "status", "score", "latency ms", "MACs", "params", "seconds", "pareto"] + shown + ["note"]
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    ordered = sorted(records, key=lambda r: (r["status"] == "failed", -(r.get("metrics") or {}).get("score", 0) if
                                             r.get("metrics") else 0, r["id"]))
    for r in ordered:
        m = r.get("metrics") or {}
        note_text = r.get("error") or "; ".join(r.get("violations") or [])
        row = [str(r["id"]), r["status"], _fmt(m.get("score")), _fmt(m.get("latency_ms")), _human(m.get("macs")),
               _human(m.get("params")), _fmt(r.get("seconds"), 3), "*" if r["id"] in front else ""]
        row += [_fmt((r.get("options") or {}).get(k)) for k in shown]
        row.append(note_text.replace("|", "\\|").replace("\n", " ")[:160])
        lines.append("| " + " | ".join(row) + " |")
    if not shown and labels:
        lines += ["", f"{len(labels)} searched options per trial: see `options` in trials.jsonl."]
    return "\n".join(lines) + "\n"


def _constraints_text(c: dict) -> str:
    parts = [f"latency <= {c['latency_budget']}" if c.get("latency_budget") else None,
             f"MACs <= {c['macs_budget']}" if c.get("macs_budget") else None,
             f"score >= {c['min_score']:g}" if c.get("min_score") is not None else None]
    return ", ".join(p for p in parts if p) or "none"


def write_reports(folder: Path, records: list[dict], meta: dict, baseline: dict | None) -> list[str]:
    """Write best.txt, pareto.png, summary.md; return notes on anything not written."""
    notes = []
    best = best_record(records)
    best_path = folder / "best.txt"
    if best:
        atomic_write(best_path, lambda tmp: Path(tmp).write_text(best["pipeline"] + "\n"))
    elif best_path.exists():
        best_path.unlink()
    why = plot_pareto(records, folder / "pareto.png", baseline)
    if why:
        notes.append(why)
    text = summary_markdown(records, meta, baseline, "; ".join(notes) or None)
    atomic_write(folder / "summary.md", lambda tmp: Path(tmp).write_text(text))  # a full disk: a user error
    return notes
