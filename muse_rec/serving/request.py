"""Ranking requests: parse and validate the JSON that `muse-rec rank` and the Ranker accept.

A request is ``{"user": <int>, "candidates": [<int>, ...]}`` with raw (hashed, int64) ids as in
the Taobao-MM release; a file may hold one request or a JSON list of them. An id may also be a
decimal string (``"-4611686018427387904"``), as proto3's JSON mapping writes int64: a JavaScript
client cannot send an exact integer beyond 2^53 as a number. Anything else is a
`RequestError` whose message says which request and which field is wrong; nothing malformed
reaches the model.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from muse_rec.json_files import INT64_MAX, INT64_MIN

REQUEST_KEYS = ("user", "candidates")


class RequestError(ValueError):
    """A malformed request; the message names the request index and the field."""


@dataclass(frozen=True)
class RankRequest:
    """One validated request.

    Attributes:
        user: raw user id (int64).
        candidates: ``[C]`` int64 raw candidate item ids, C >= 1, in request order.
    """

    user: int
    candidates: np.ndarray


_DECIMAL = re.compile(r"-?[0-9]{1,20}")
# int64's extremes have 19 digits: a longer JSON integer is out of range whatever its digits, and
# Python refuses to convert one of more than 4,300 digits at all (a ValueError traceback from
# json.loads, sys.int_info.default_max_str_digits), so it is kept as its text and named.
_INT64_DIGITS = len(str(INT64_MAX))


class _LongInteger(str):
    """A JSON integer literal too long for int64, shown by its length (it may have thousands of digits)."""

    def __repr__(self) -> str:
        return f"an integer of {len(self.lstrip('-'))} digits"


def _json_int(text: str) -> Union[int, _LongInteger]:
    """json's ``parse_int``: the integer, or for one longer than int64 takes, its `_LongInteger` text."""
    return int(text) if len(text.lstrip("-")) <= _INT64_DIGITS else _LongInteger(text)


def _int64(x: Any) -> Optional[int]:
    """``x`` as an int64 id: a JSON integer, or a decimal string of one; None for anything else."""
    if isinstance(x, str) and _DECIMAL.fullmatch(x):
        x = int(x)
    # bool is an int subclass in Python; true/false is never an id.
    if isinstance(x, int) and not isinstance(x, bool) and INT64_MIN <= x <= INT64_MAX:
        return x
    return None


def validate_request(obj: Any, where: str = "request") -> RankRequest:
    """Check one decoded JSON object and return it as a `RankRequest`."""
    if not isinstance(obj, dict):
        raise RequestError(f"{where}: expected an object {{\"user\": int, \"candidates\": [int, ...]}}, "
                           f"got {type(obj).__name__}")
    missing = [k for k in REQUEST_KEYS if k not in obj]
    if missing:
        raise RequestError(f"{where}: missing field(s) {missing}")
    extra = sorted(set(obj) - set(REQUEST_KEYS))
    if extra:
        raise RequestError(f"{where}: unknown field(s) {extra}; a request has exactly {list(REQUEST_KEYS)}")
    user = _int64(obj["user"])
    if user is None:
        raise RequestError(f"{where}.user: expected an int64 user id (an integer or a decimal string), "
                           f"got {obj['user']!r}")
    cands = obj["candidates"]
    if not isinstance(cands, list):
        raise RequestError(f"{where}.candidates: expected a list of int64 item ids, got {type(cands).__name__}")
    if not cands:
        raise RequestError(f"{where}.candidates: empty - nothing to rank")
    ids = [_int64(c) for c in cands]
    for i, c in enumerate(ids):
        if c is None:
            raise RequestError(f"{where}.candidates[{i}]: expected an int64 item id (an integer or a decimal "
                               f"string), got {cands[i]!r}")
    return RankRequest(user=user, candidates=np.asarray(ids, dtype=np.int64))


def _no_duplicate_keys(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    seen: Dict[str, Any] = {}
    for k, v in pairs:
        if k in seen:  # json.loads would silently keep the last value
            raise RequestError(f"duplicate key {k!r} in an object")
        seen[k] = v
    return seen


def _no_constant(name: str) -> Any:
    raise RequestError(f"{name} is not valid JSON (only finite numbers are)")


def parse_requests(text: Union[str, bytes], source: Optional[str] = None) -> List[RankRequest]:
    """Decode a JSON document (UTF-8) holding one request or a list of requests.

    Args:
        text: the document; bytes are decoded as UTF-8 (anything else is a `RequestError`).
        source: what to call the document in error messages (the file name, ``stdin``); every
            `RequestError` then starts with it, once. None: messages name only the request and field.
    """
    try:
        return _parse_document(text)
    except RequestError as e:
        if source is None:
            raise
        raise RequestError(f"{source}: {e}") from None


def _parse_document(text: Union[str, bytes]) -> List[RankRequest]:
    """`parse_requests` without the source: its messages name the request and field, or the JSON fault."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise RequestError(f"not UTF-8 text (byte {e.start}: {text[e.start:e.start + 1]!r})") from None
    try:
        doc = json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant, parse_int=_json_int)
    except json.JSONDecodeError as e:
        raise RequestError(f"not valid JSON: {e}") from None
    except RecursionError:
        raise RequestError("JSON nested too deeply (a request is one object with two fields)") from None
    if isinstance(doc, list):
        if not doc:
            raise RequestError("request list is empty")
        return [validate_request(r, f"request[{i}]") for i, r in enumerate(doc)]
    return [validate_request(doc)]
