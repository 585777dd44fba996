"""Pages of a listing: how many items, where the next page starts, and a byte budget.

Every Admin listing is paged (issue 9.7): a reply holds at most ``page_size`` items (0: the
default, larger values capped at ``MAX_PAGE``) and stops early once its items reach
``REPLY_BUDGET`` bytes, far below gRPC's 8 MiB message limit, so no amount of stored data can
make a listing unanswerable. Each item is bounded by the wire limits on what sites send
(``confide.wire.bounds``); a page always holds at least one item.

A page token is ``<kind>:<key>``: the key of the last item sent (a sequence number, a row
number, a round or a site id). Callers treat it as opaque.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from google.protobuf.message import Message

from confide.errors import MalformedMessage

__all__ = ["DEFAULT_PAGE", "MAX_PAGE", "REPLY_BUDGET", "fill", "page_size", "parse_token", "token"]

DEFAULT_PAGE = 500
"""Items in a page when the request asks for none in particular."""
MAX_PAGE = 1000
"""The most items one page holds."""
REPLY_BUDGET = 1 << 20
"""Bytes of items one reply carries at most (plus one item's worth)."""

T = TypeVar("T")
_MAX_TOKEN = 200


def page_size(*requested: int) -> int:
    """The page size for a request: the smallest non-zero ``requested``, default, capped."""
    asked = [n for n in requested if n > 0]
    return min(min(asked, default=DEFAULT_PAGE), MAX_PAGE)


def token(kind: str, key: object) -> str:
    """The token that resumes a ``kind`` listing after ``key``."""
    return f"{kind}:{key}"


def parse_token(kind: str, value: str, convert: Callable[[str], T]) -> T | None:
    """The key in a ``kind`` token (None for an empty token).

    Raises:
        MalformedMessage: not a token of this listing.
    """
    if not value:
        return None
    prefix, sep, key = value.partition(":")
    if len(value) > _MAX_TOKEN or not sep or prefix != kind:
        raise MalformedMessage("not a page token of this listing")
    try:
        return convert(key)
    except ValueError as exc:
        raise MalformedMessage("not a page token of this listing") from exc


def fill(
    out: Any,
    items: Iterable[tuple[object, Message]],
    *,
    more: bool,
    kind: str,
    budget: int = REPLY_BUDGET,
) -> str:
    """Append ``(key, message)`` items to the repeated field ``out`` within the page's bounds.

    Args:
        out: a repeated message field of the reply.
        items: the candidates in listing order, at most a page size of them.
        more: whether the store holds items after these.
        kind: the token kind.
        budget: the reply's byte budget.

    Returns:
        the next page's token ("" when this page ends the listing).
    """
    used = 0
    last: object = None
    stopped = False
    for key, msg in items:
        size = msg.ByteSize()
        if last is not None and used + size > budget:
            stopped = True
            break
        out.append(msg)
        used += size
        last = key
    if last is None or not (stopped or more):
        return ""
    return token(kind, last)
