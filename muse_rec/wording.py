"""Counts as a reader says them: "1 user", "2 users", "1,200 users" (one rule for every printed line).

A printed count with a fixed plural read "1 users" wherever a count can be 1 (a small table, one seed,
one finished run).
"""
from __future__ import annotations

from typing import Optional


def count(n: int, noun: str, plural: Optional[str] = None) -> str:
    """``n`` with thousands separators and ``noun``, singular for exactly one, else ``plural``
    (default ``noun + "s"``; pass it for nouns such as "category" -> "categories")."""
    return f"{n:,} {noun if n == 1 else (plural if plural is not None else noun + 's')}"
