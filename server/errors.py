"""The one table of registry error codes, and the one serializer of error bodies.

Storage, metadata and resources raise `RegistryError` subclasses; the app's error handler turns them into
`{"errors": [{"code", "message", "detail"}]}` with the status from this table. The codes are those of the OCI
Distribution Spec (spec.md, "Error Codes") plus the Docker V2 API's TAG_INVALID. This module never imports falcon.
"""

from __future__ import annotations

import json
from typing import Any

# code -> (HTTP status, message). The single source of truth for both.
ERROR_TABLE: dict[str, tuple[int, str]] = {
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
    "TAG_INVALID": (400, "manifest tag did not match URI"),
    "UNAUTHORIZED": (401, "authentication required"),
    "DENIED": (403, "requested access to the resource is denied"),
    "UNSUPPORTED": (405, "the operation is unsupported"),
    "TOOMANYREQUESTS": (429, "too many requests"),
}


class RegistryError(Exception):
    """A failure the client is told about. Subclasses fix the code; `status` may be narrowed per raise."""

    code = "UNSUPPORTED"

    def __init__(self, detail: Any = None, *, status: int | None = None, message: str | None = None,
                 headers: dict[str, str] | None = None):
        default_status, default_message = ERROR_TABLE[self.code]
        self.status = status or default_status
        self.message = message or default_message
        self.detail = detail
        self.headers = headers or {}
        super().__init__(f"{self.code}: {self.message}" + (f" ({detail})" if detail is not None else ""))

    def to_dict(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"code": self.code, "message": self.message}
        entry["detail"] = self.detail if self.detail is not None else {}
        return entry


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
TagInvalid = _error_class("TAG_INVALID")
Unauthorized = _error_class("UNAUTHORIZED")
Denied = _error_class("DENIED")
Unsupported = _error_class("UNSUPPORTED")
TooManyRequests = _error_class("TOOMANYREQUESTS")


def error_body(*errors: RegistryError) -> bytes:
    """Serialize errors in the spec's shape."""
    return json.dumps({"errors": [e.to_dict() for e in errors]}, separators=(",", ":")).encode()


def error_for_status(status: int, detail: Any = None, message: str | None = None) -> RegistryError:
    """The registry error for a bare HTTP failure raised by the framework (unknown route, bad method...)."""
    code = {
        400: "UNSUPPORTED",
        401: "UNAUTHORIZED",
        403: "DENIED",
        404: "UNSUPPORTED",
        405: "UNSUPPORTED",
        411: "SIZE_INVALID",
        413: "SIZE_INVALID",
        416: "SIZE_INVALID",
        429: "TOOMANYREQUESTS",
    }.get(status, "UNSUPPORTED")
    cls = _BY_CODE[code]
    return cls(detail, status=status, message=message)


_BY_CODE = {cls.code: cls for cls in RegistryError.__subclasses__()}
