"""Counts and quoted errors as a reader sees them (one rule for every printed line).

`count`: "1 user", "2 users", "1,200 users"; a printed count with a fixed plural read "1 users" wherever
a count can be 1 (a small table, one seed, one finished run). `one_line`: another library's error text
inside a one-line message.
"""
from __future__ import annotations

from typing import Optional


def count(n: int, noun: str, plural: Optional[str] = None) -> str:
    """``n`` with thousands separators and ``noun``, singular for exactly one, else ``plural``
    (default ``noun + "s"``; pass it for nouns such as "category" -> "categories")."""
    return f"{n:,} {noun if n == 1 else (plural if plural is not None else noun + 's')}"


def one_line(e: BaseException) -> str:
    """The text of ``e`` as one printable line, for a message that quotes it. Arrow's text of a damaged
    Parquet file spans lines and holds the bytes it choked on ("Couldn't deserialize thrift: don't know
    what type: \\x0f\\nDeserializing page header failed.\\n"), DCP's and torch's readers' too."""
    return one_line_text(str(e))


def one_line_text(text: str) -> str:
    """``text`` as one printable line: runs of whitespace become one space, other unprintable characters
    their escape. For a message's own words that quote a user's input (a path given with a newline)."""
    folded = " ".join(text.split())
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in folded)
