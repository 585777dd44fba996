"""What one party may tell another about a failure: a reason and one bounded line of detail.

A site reports why it refused or failed a task as a ``Reason`` code plus, when the error is
marked ``public`` (it quotes no data), the error's message as one line. The aggregator
stores and shows such lines, and as the text comes from a peer it is cleaned and bounded
again there: one hostile site must not fill the store or the operator's terminal.
"""

from __future__ import annotations

from confide.errors import ConfideError

__all__ = ["MAX_DETAIL", "one_line", "public_detail"]

MAX_DETAIL = 200
"""The longest detail line stored or shown, in characters."""


def one_line(text: str, *, limit: int = MAX_DETAIL) -> str:
    """``text`` as a single printable line of at most ``limit`` characters.

    Control characters (newlines, escapes that could rewrite a terminal) become spaces,
    runs of spaces shrink to one, and an over-long line ends in ``...``.
    """
    cleaned = "".join(ch if ch.isprintable() else " " for ch in text[: limit * 4])
    line = " ".join(cleaned.split())
    if len(line) > limit:
        line = line[: limit - 3].rstrip() + "..."
    return line


def public_detail(err: ConfideError, *, fallback: str) -> str:
    """The one-line detail a site may send for ``err``: its public text, else ``fallback``."""
    if isinstance(err.public, str):
        return one_line(err.public)
    return one_line(err.message if err.public else fallback)
