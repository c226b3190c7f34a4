"""The one table of registry error codes, and the one serializer of error bodies.

Storage, metadata, the domain and resources raise `RegistryError` subclasses; the app's error handler turns them into
`{"errors": [{"code", "message", "detail"}]}` with the status from this table. Every code the server sends is here,
each with exactly one HTTP status: a raise site chooses the code, never the status.

- The OCI Distribution Spec's codes (spec.md, "Error Codes").
- Codes of the Docker V2 API and of Distribution's error registry that clients already know: TAG_INVALID,
  RANGE_INVALID, PAGINATION_NUMBER_INVALID, UNKNOWN, UNAVAILABLE.
- Dockyard's own, for what neither names: BAD_REQUEST, NOT_FOUND (no such endpoint), TOO_LARGE,
  INSUFFICIENT_STORAGE (507: a full disk is a condition the client is told about, not a 500), UPSTREAM_ERROR (502:
  the upstream of a pull-through cached repository is unreachable, refused Dockyard, or answered wrongly).

This module never imports falcon.
"""

from __future__ import annotations

import json
import math
from typing import Any

# code -> (HTTP status, message). The single source of truth for both.
ERROR_TABLE: dict[str, tuple[int, str]] = {
    # OCI Distribution Spec
    "BLOB_UNKNOWN": (404, "blob unknown to registry"),
    "BLOB_UPLOAD_INVALID": (400, "blob upload invalid"),
    "BLOB_UPLOAD_UNKNOWN": (404, "blob upload unknown to registry"),
    "DIGEST_INVALID": (400, "provided digest did not match uploaded content"),
    "MANIFEST_BLOB_UNKNOWN": (400, "manifest references a manifest or blob unknown to registry"),
    "MANIFEST_INVALID": (400, "manifest invalid"),
    "MANIFEST_UNKNOWN": (404, "manifest unknown to registry"),
    "NAME_INVALID": (400, "invalid repository name"),
    "NAME_UNKNOWN": (404, "repository name not known to registry"),
    "SIZE_INVALID": (400, "provided length did not match content length"),
    "UNAUTHORIZED": (401, "authentication required"),
    "DENIED": (403, "requested access to the resource is denied"),
    "UNSUPPORTED": (405, "the operation is unsupported"),
    "TOOMANYREQUESTS": (429, "too many requests"),
    # Docker V2 API and Distribution's error registry
    "TAG_INVALID": (400, "manifest tag did not match URI"),
    "RANGE_INVALID": (416, "invalid content range"),
    "PAGINATION_NUMBER_INVALID": (400, "invalid number of results requested"),
    "UNKNOWN": (500, "unknown error"),
    "UNAVAILABLE": (503, "service unavailable"),
    # Dockyard
    "BAD_REQUEST": (400, "malformed request"),
    "NOT_FOUND": (404, "no such endpoint"),
    "TOO_LARGE": (413, "request body too large"),
    "INSUFFICIENT_STORAGE": (507, "the registry's storage is full"),
    "UPSTREAM_ERROR": (502, "the upstream registry of this cached repository failed"),
}


class RegistryError(Exception):
    """A failure the client is told about. Subclasses fix the code, and with it the status."""

    code = "UNKNOWN"

    def __init__(self, detail: Any = None, *, message: str | None = None, headers: dict[str, str] | None = None):
        self.status, default_message = ERROR_TABLE[self.code]
        self.message = message or default_message
        self.detail = detail
        self.headers = headers or {}
        super().__init__(f"{self.code}: {self.message}" + (f" ({detail})" if detail is not None else ""))

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "detail": self.detail if self.detail is not None else {}}


def _error_class(code: str) -> type[RegistryError]:
    name = "".join(part.capitalize() for part in code.split("_"))
    return type(name, (RegistryError,), {"code": code, "__doc__": ERROR_TABLE[code][1]})


BlobUnknown = _error_class("BLOB_UNKNOWN")
BlobUploadInvalid = _error_class("BLOB_UPLOAD_INVALID")
BlobUploadUnknown = _error_class("BLOB_UPLOAD_UNKNOWN")
DigestInvalid = _error_class("DIGEST_INVALID")
ManifestBlobUnknown = _error_class("MANIFEST_BLOB_UNKNOWN")
ManifestInvalid = _error_class("MANIFEST_INVALID")
ManifestUnknown = _error_class("MANIFEST_UNKNOWN")
NameInvalid = _error_class("NAME_INVALID")
NameUnknown = _error_class("NAME_UNKNOWN")
SizeInvalid = _error_class("SIZE_INVALID")
Unauthorized = _error_class("UNAUTHORIZED")
Denied = _error_class("DENIED")
Unsupported = _error_class("UNSUPPORTED")
TooManyRequests = _error_class("TOOMANYREQUESTS")
TagInvalid = _error_class("TAG_INVALID")
RangeInvalid = _error_class("RANGE_INVALID")
PaginationNumberInvalid = _error_class("PAGINATION_NUMBER_INVALID")
Unknown = _error_class("UNKNOWN")
Unavailable = _error_class("UNAVAILABLE")
BadRequest = _error_class("BAD_REQUEST")
NotFound = _error_class("NOT_FOUND")
TooLarge = _error_class("TOO_LARGE")
InsufficientStorage = _error_class("INSUFFICIENT_STORAGE")
UpstreamError = _error_class("UPSTREAM_ERROR")

BY_CODE: dict[str, type[RegistryError]] = {cls.code: cls for cls in RegistryError.__subclasses__()}
# The code for each status the framework itself may answer (an unknown route, a method not allowed, ...).
_BY_STATUS = {status: code for code, (status, _) in reversed(list(ERROR_TABLE.items()))}
_BY_STATUS.update({400: "BAD_REQUEST", 404: "NOT_FOUND", 405: "UNSUPPORTED", 500: "UNKNOWN"})


def error_body(*errors: RegistryError) -> bytes:
    """Serialize errors in the spec's shape: always valid JSON, whatever a detail holds (a value JSON cannot say,
    such as NaN, or an object of another type, is written as its text)."""
    document = {"errors": [e.to_dict() for e in errors]}
    try:
        return json.dumps(document, separators=(",", ":"), allow_nan=False, default=str).encode()
    except (ValueError, TypeError, RecursionError):
        return json.dumps(_json_safe(document), separators=(",", ":"), allow_nan=False).encode()


def _json_safe(value: Any, depth: int = 0) -> Any:
    if depth > 32:
        return "..."
    if isinstance(value, dict):
        return {str(k): _json_safe(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v, depth + 1) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def error_for_status(status: int, detail: Any = None, message: str | None = None) -> RegistryError:
    """The registry error for a bare HTTP failure raised by the framework. Its status is the table's: a status
    with no code of its own becomes the generic code of its class (4xx BAD_REQUEST, 5xx UNKNOWN)."""
    code = _BY_STATUS.get(status) or ("BAD_REQUEST" if 400 <= status < 500 else "UNKNOWN")
    return BY_CODE[code](detail, message=message)
