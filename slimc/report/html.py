"""One self-contained HTML file: per-pass table, op histograms, latency breakdown, search Pareto plot.

Everything is inline (CSS, SVG charts, the Pareto PNG as base64): the file opens from disk or a CI
artifact store with no server and no network. It reads the dicts slimc already writes (compile
report, profile report) and a search output folder; it runs nothing.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from ..ir.stats import human as _human

__all__ = ["render_html_report", "write_html_report"]

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1100px;color:#1d2733;padding:0 16px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #d8dee6;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0;font-size:13px}th,td{padding:3px 10px;border-bottom:1px solid #e6eaef;text-align:left}
td.num{text-align:right}th{background:#f2f5f8}
td.flag{color:#b3261e;font-weight:600}.meta{color:#556}.bar-a{fill:#4c78a8}.bar-b{fill:#f58518}
svg text{font:11px system-ui,sans-serif;fill:#1d2733}pre{background:#f6f8fa;padding:10px;overflow:auto;font-size:12px}
"""


def _e(x) -> str:
    return html.escape(str(x))


def _table(head: list[str], rows: list[list], flags: list[bool] | None = None) -> str:
    out = ["<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"]
    for i, row in enumerate(rows):
        flag = " flag" if flags and flags[i] else ""
        out.append("<tr>" + "".join(f'<td class="{_kind(c)}{flag}">{_e(c)}</td>' for c in row) + "</tr>")
    return "\n".join(out + ["</table>"])


def _kind(cell) -> str:
    """'num' for numbers (right-aligned), 'txt' for names."""
    text = str(cell).rstrip("kMG%")
    try:
        float(text)
        return "num"
    except ValueError:
        return "num" if text == "-" else "txt"


def _bars_svg(labels: list[str], series: list[list[float]], names: list[str], unit: str) -> str:
    """Horizontal bars, one group per label, one bar per series (at most two: before/after)."""
    if not labels:
        return "<p class='meta'>nothing to draw</p>"
    peak = max((v for s in series for v in s), default=0) or 1.0
    label_w, bar_w, bar_h = 230, 560, 9 if len(series) > 1 else 14
    group_h = bar_h * len(series) + 6
    height = group_h * len(labels) + 30
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + bar_w + 90}" height="{height}" role="img">']
    for i, label in enumerate(labels):
        y0 = i * group_h + 4
        parts.append(f'<text x="{label_w - 6}" y="{y0 + group_h / 2 + 3}" text-anchor="end">{_e(label[:38])}</text>')
        for j, s in enumerate(series):
            w = bar_w * s[i] / peak
            y = y0 + j * bar_h
            parts.append(f'<rect class="bar-{"ab"[j]}" x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h - 1}">'
                         f'<title>{_e(names[j])}: {s[i]:.3f} {unit}</title></rect>')
            parts.append(f'<text x="{label_w + w + 4:.1f}" y="{y + bar_h - 2}">{s[i]:.3g}</text>')
    legend_y = height - 8
    for j, name in enumerate(names):
        x = label_w + j * (bar_w // 2)
        parts.append(f'<rect class="bar-{"ab"[j]}" x="{x}" y="{legend_y - 9}" width="10" height="10"/>'
                     f'<text x="{x + 14}" y="{legend_y}">{_e(name[:40])} ({unit})</text>')
    return "\n".join(parts + ["</svg>"])


def _passes_section(report: dict) -> str:
    b = report["before"]
    rows = [["0", "(input)", "", "", "", _human(b["params"]), _human(b["macs"]), b["nodes"]]]
    for i, p in enumerate(report.get("passes", []), start=1):
        s = p["stats"]
        rows.append([i, p["name"], p["level"], f"{p['seconds']:.3f}", "yes" if p["changed"] else "no",
                     _human(s["params"]), _human(s["macs"]), s["nodes"]])
    body = _table(["#", "pass", "level", "seconds", "changed", "params", "MACs", "nodes"], rows)
    fid = report.get("fidelity") or {}
    if "max_abs_err" in fid:
        body += (f"<p class='meta'>fidelity vs original ({fid['samples']} random inputs): max abs err "
                 f"{fid['max_abs_err']:.3g}, cosine {fid['cosine']:.6f}</p>")
    bench = report.get("benchmark") or {}
    if "median_ms" in bench:
        body += f"<p class='meta'>latency: median {bench['median_ms']:.2f} ms, p90 {bench['p90_ms']:.2f} ms</p>"
    return "<h2>Passes</h2>\n" + body


def _ops_section(report: dict, top: int = 20) -> str:
    before, after = report["before"].get("ops", {}), report["after"].get("ops", {})
    ops = sorted(set(before) | set(after), key=lambda o: -max(before.get(o, 0), after.get(o, 0)))[:top]
    svg = _bars_svg(ops, [[before.get(o, 0) for o in ops], [after.get(o, 0) for o in ops]],
                    ["before", "after"], "nodes")
    note = ("<p class='meta'>before: the model as given (module and function names for a PyTorch model), "
            "after: the final graph's ops.</p>")
    return "<h2>Op histogram, before and after</h2>\n" + note + svg


def _profile_section(profile: dict, top: int = 20) -> str:
    out = ["<h2>Latency breakdown</h2>"]
    profiles = profile.get("profiles", [])
    for backend in dict.fromkeys(p["backend"] for p in profiles):
        mine = [p for p in profiles if p["backend"] == backend]
        totals = "; ".join(f"{_e(p['label'] or 'model')}: {p['profiled_ms']:.2f} ms profiled of "
                           f"{p['end_to_end_ms']:.2f} ms end to end ({p['runs']} runs)" for p in mine)
        out.append(f"<h3>{_e(backend)}</h3><p class='meta'>{totals}</p>")
        rows = profile.get("compare", {}).get(backend)
        if rows:
            rows = rows[:top]
            out.append(_bars_svg([r["module"] for r in rows], [[r["ms_before"] for r in rows],
                                                               [r["ms_after"] for r in rows]],
                                 [mine[0]["label"] or "before", mine[1]["label"] or "after"], "ms"))
            out.append(_table(["module", "ms before", "ms after", "MACs before", "MACs after", "note"],
                              [[r["module"], f"{r['ms_before']:.3f}", f"{r['ms_after']:.3f}", _human(r["macs_before"]),
                                _human(r["macs_after"]), "fewer MACs, same time" if r["lost_macs_not_time"] else ""]
                               for r in rows], [r["lost_macs_not_time"] for r in rows]))
        else:
            mods = mine[0]["by_module"][:top]
            out.append(_bars_svg([m["module"] for m in mods], [[m["ms"] for m in mods]], ["ms"], "ms"))
            out.append(_table(["module", "ms", "MACs"], [[m["module"], f"{m['ms']:.3f}", _human(m["macs"])]
                                                        for m in mods]))
        for p in mine:
            out.append(f"<p class='meta'>{_e(p['label'] or 'model')}, by op type:</p>")
            out.append(_table(["op type", "layers", "ms"], [[r["op_type"], r["layers"], f"{r['ms']:.3f}"]
                                                          for r in p["by_op"][:top]]))
    return "\n".join(out)


def _search_section(folder: Path) -> str:
    out = ["<h2>Search</h2>"]
    png, summary = folder / "pareto.png", folder / "summary.md"
    if png.is_file():
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        out.append(f'<img alt="Pareto front" style="max-width:100%" src="data:image/png;base64,{data}">')
    if summary.is_file():
        out.append(f"<pre>{_e(summary.read_text())}</pre>")
    if len(out) == 1:
        out.append(f"<p class='meta'>{_e(folder)} holds no pareto.png or summary.md.</p>")
    return "\n".join(out)


def render_html_report(compile_report: dict | None = None, profile: dict | None = None,
                       search_dir: str | Path | None = None, title: str = "slimc report") -> str:
    """The report as one HTML string (see the module docstring)."""
    sections = []
    meta = []
    if compile_report:
        meta.append(f"model <b>{_e(compile_report.get('source', ''))}</b>, pipeline "
                    f"<code>{_e(compile_report.get('pipeline', ''))}</code>")
        if compile_report.get("backend"):
            meta.append(f"backend {_e(compile_report['backend'].get('backend'))}")
        sections += [_passes_section(compile_report), _ops_section(compile_report)]
    if profile and profile.get("profiles"):
        sections.append(_profile_section(profile))
    if search_dir is not None:
        sections.append(_search_section(Path(search_dir)))
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>"
            f"<style>{_CSS}</style></head><body>\n<h1>{_e(title)}</h1>\n<p class='meta'>{' · '.join(meta)}</p>\n"
            + "\n".join(sections) + "\n</body></html>\n")


def write_html_report(path: str | Path, compile_report: dict | None = None, profile: dict | None = None,
                      search_dir: str | Path | None = None) -> Path:
    """Write the report atomically; returns the path."""
    from ..ir.onnx_io import atomic_write

    text = render_html_report(compile_report, profile, search_dir)
    path = Path(path)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return path
