"""Reports people read: the self-contained HTML report. Sits on top of `profile`; reads dicts only."""

from .html import render_html_report, write_html_report

__all__ = ["render_html_report", "write_html_report"]
