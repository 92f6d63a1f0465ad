"""Errors meant for the user: one paragraph that says what was wrong and what to do."""

from __future__ import annotations

import difflib

__all__ = ["SlimcError", "closest", "first_line"]


class SlimcError(Exception):
    """A problem with the user's input (model, pipeline, files, options).

    The CLI prints the message alone (no traceback) and exits with code 2.
    """

    exit_code = 2


def closest(word: str, choices) -> str:
    """A ' (did you mean X?)' hint, or '' when nothing is close."""
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (runtimes write pages), or its type name when empty."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
