"""Parsers of everything a request carries: one function per header, query parameter and body format.

Each either returns a value within its stated bounds or raises a `RegistryError` (a 4xx in the spec's shape):
no input can make one raise anything else (tests/server/test_parsing.py holds that with hypothesis). Digits are
ASCII digits only (`str.isdigit` accepts "²" and "٣"), integers are bounded before `int()` sees them, JSON is
strict (no NaN or Infinity, bounded nesting and number length).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any
from urllib.parse import parse_qs

from .errors import (BadRequest, ManifestInvalid, NameInvalid, PaginationNumberInvalid, RangeInvalid,
                     RegistryError, TooLarge)

MAX_DIGITS = 18  # below 2**63: a byte offset or a count, never more
JSON_MAX_DEPTH = 64  # a manifest nests 4 deep; an admin body 1
JSON_MAX_NUMBER = 40  # characters of one JSON number
FORM_MAX = 64 * 1024

_UINT = re.compile(rf"[0-9]{{1,{MAX_DIGITS}}}")
_BYTE_RANGE = re.compile(rf"bytes=([0-9]{{0,{MAX_DIGITS}}})-([0-9]{{0,{MAX_DIGITS}}})")
_CONTENT_RANGE = re.compile(rf"(?:bytes[ =])?([0-9]{{1,{MAX_DIGITS}}})-([0-9]{{1,{MAX_DIGITS}}})")
_PATH_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")


# -- the path --------------------------------------------------------------------------------------------------

def check_path(path: str, raw: str | None) -> None:
    """Refuse a request path that is not in canonical form, so that every decision (routing, authorization, rate
    classes, logging, read-only mode) judges the one spelling the router routes. `raw` is the path as sent (before
    percent-decoding) when the server tells it."""
    raw_path = (raw or path).split("?", 1)[0]
    lowered = raw_path.lower()
    if "%2f" in lowered or "%5c" in lowered:
        raise NameInvalid({"path": raw_path[:300]}, message="encoded slashes are not allowed in the path")
    if (not path.startswith("/") or "//" in path or _PATH_CHARS.search(path) or "%2e" in lowered
            or any(segment in (".", "..") for segment in path.split("/"))):
        raise BadRequest({"path": raw_path[:300]},
                         message="the path is not in canonical form (empty, '.' or '..' segments, or encoded dots)")


# -- query parameters ------------------------------------------------------------------------------------------

def page_size(raw: str | None, *, default: int | None, maximum: int) -> int | None:
    """`n` of tags/list and _catalog: a non-negative integer, capped at `maximum` (the Link header leads on)."""
    if raw is None or raw == "":
        return default
    if not _UINT.fullmatch(raw):
        raise PaginationNumberInvalid({"n": raw[:100]}, message="n must be a non-negative integer")
    return min(int(raw), maximum)


def boolean(raw: Any, name: str) -> bool:
    """A boolean option: JSON true/false, or "1", "true", "0", "false" in a query string."""
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.lower() in ("1", "true", "0", "false"):
        return raw.lower() in ("1", "true")
    raise BadRequest({name: _shown(raw), "expected": "true or false"}, message=f"invalid {name}")


def count(raw: Any, name: str) -> int:
    """A non-negative integer option: a JSON integer, or ASCII digits in a query string."""
    if isinstance(raw, str) and _UINT.fullmatch(raw):
        return int(raw)
    if isinstance(raw, int) and not isinstance(raw, bool) and 0 <= raw < 10 ** MAX_DIGITS:
        return raw
    raise BadRequest({name: _shown(raw), "expected": "a non-negative integer"}, message=f"invalid {name}")


def _shown(value: Any) -> Any:
    """A value echoed into an error detail: short, and of a JSON-safe type."""
    if isinstance(value, (bool, int)) and not (isinstance(value, int) and abs(value) >= 10 ** MAX_DIGITS):
        return value
    return str(value)[:100]


# -- headers ---------------------------------------------------------------------------------------------------

def byte_range(header: str, size: int) -> tuple[int, int] | None:
    """`Range`: (start, end inclusive) of a single byte range; None to serve the whole blob (unparsable or
    multi-range, which RFC 9110 allows a server to ignore). An unsatisfiable range is RANGE_INVALID carrying
    `Content-Range: bytes */size` (RFC 9110 14.4)."""
    match = _BYTE_RANGE.fullmatch(header.strip())
    if not match or match.group(1) == match.group(2) == "":
        return None
    if size == 0:  # no byte of an empty blob can be asked for
        raise _unsatisfiable(header, size)
    first, last = match.groups()
    if first == "":  # suffix range: the last N bytes
        length = int(last)
        if length == 0:
            raise _unsatisfiable(header, size)
        return max(0, size - length), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or (last and int(last) < start):
        raise _unsatisfiable(header, size)
    return start, end


def _unsatisfiable(header: str, size: int) -> RangeInvalid:
    return RangeInvalid({"Range": header[:100], "size": size}, message="requested range not satisfiable",
                        headers={"Content-Range": f"bytes */{size}"})


def content_range(header: str) -> tuple[int, int]:
    """`Content-Range` of an upload chunk: (start, end inclusive)."""
    match = _CONTENT_RANGE.fullmatch(header.strip())
    if not match or int(match.group(2)) < int(match.group(1)):
        raise RangeInvalid({"Content-Range": header[:100]}, message="malformed Content-Range")
    return int(match.group(1)), int(match.group(2))


# -- bodies ----------------------------------------------------------------------------------------------------

def json_document(data: bytes, *, invalid: type[RegistryError] = BadRequest, what: str = "the body") -> Any:
    """Strict JSON: UTF-8, no NaN or Infinity, no number longer than JSON_MAX_NUMBER characters, nesting no deeper
    than JSON_MAX_DEPTH. Anything else is `invalid` (MANIFEST_INVALID for manifests, BAD_REQUEST otherwise)."""
    depth = _nesting(data)
    if depth > JSON_MAX_DEPTH:
        raise invalid({"reason": f"{what} nests {depth} levels deep (at most {JSON_MAX_DEPTH})"})
    try:
        return json.loads(data, parse_constant=_no_constant, parse_int=_bounded_int, parse_float=_bounded_float)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise invalid({"reason": f"{what} is not valid JSON: {str(exc)[:200]}"}) from None
    except _Refused as exc:
        raise invalid({"reason": f"{what}: {exc}"}) from None
    except (RecursionError, ValueError):
        raise invalid({"reason": f"{what} is not valid JSON"}) from None


def manifest_document(data: bytes) -> Any:
    return json_document(data, invalid=ManifestInvalid, what="the manifest")


class _Refused(ValueError):
    pass


def _no_constant(name: str):
    raise _Refused(f"{name} is not JSON")


def _bounded_int(text: str) -> int:
    if len(text) > JSON_MAX_NUMBER:
        raise _Refused(f"a number of {len(text)} digits")
    return int(text)


def _bounded_float(text: str) -> float:
    if len(text) > JSON_MAX_NUMBER:
        raise _Refused(f"a number of {len(text)} characters")
    value = float(text)
    if not math.isfinite(value):  # 1e400 parses to inf, which JSON cannot say back
        raise _Refused(f"{text} is out of range")
    return value


_STRUCTURE = re.compile(rb'[\[\]{}"\\]')


def _nesting(data: bytes) -> int:
    """The deepest nesting of arrays and objects (strings skipped); stops counting once past the limit."""
    depth = deepest = 0
    in_string = False
    escaped = -1  # the position of a character a backslash escapes
    for match in _STRUCTURE.finditer(data):
        position = match.start()
        if position == escaped:
            continue
        char = data[position]
        if in_string:
            if char == 0x5C:  # backslash
                escaped = position + 1
            elif char == 0x22:  # quote
                in_string = False
        elif char == 0x22:
            in_string = True
        elif char in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > JSON_MAX_DEPTH:
                    return deepest
        elif char in (0x5D, 0x7D):
            depth -= 1
    return deepest


def form(data: bytes) -> dict[str, list[str]]:
    """An `application/x-www-form-urlencoded` body (the token endpoint's POST)."""
    if len(data) > FORM_MAX:
        raise TooLarge({"reason": "form too large", "limit": FORM_MAX})
    try:
        return parse_qs(data.decode("utf-8"), keep_blank_values=True, strict_parsing=False, max_num_fields=100)
    except (UnicodeDecodeError, ValueError):
        raise BadRequest({"reason": "the form is not valid UTF-8 form data"}) from None
