"""The registry's URL space, written once: the API root, the V2 route templates and the admin API's prefix.

Repository names never start with `_`, so everything under `/v2/_` is Dockyard's own: `_catalog` (the spec's) and
the admin API under ADMIN_PREFIX.
"""

from __future__ import annotations

API_ROOT = "/v2/"
ADMIN_PREFIX = "/v2/_dockyard"
CATALOG = "/v2/_catalog"
TAGS = "/v2/{name}/tags/list"
MANIFEST = "/v2/{name}/manifests/{reference}"
UPLOADS = "/v2/{name}/blobs/uploads/"
UPLOAD = "/v2/{name}/blobs/uploads/{upload_id}"
BLOB = "/v2/{name}/blobs/{digest}"
REFERRERS = "/v2/{name}/referrers/{digest}"

ADMIN_REPOSITORIES = ADMIN_PREFIX + "/repositories"
ADMIN_REPOSITORY = ADMIN_PREFIX + "/repositories/{name}"
ADMIN_REPOSITORY_TAGS = ADMIN_PREFIX + "/repositories/{name}/tags"
ADMIN_GC = ADMIN_PREFIX + "/gc"
ADMIN_STORAGE = ADMIN_PREFIX + "/storage"
ADMIN_READ_ONLY = ADMIN_PREFIX + "/read-only"
ADMIN_EVENTS = ADMIN_PREFIX + "/events"
ADMIN_EVENTS_PARKED = ADMIN_PREFIX + "/events/{endpoint}/parked"
ADMIN_EVENTS_REPLAY = ADMIN_PREFIX + "/events/{endpoint}/replay"

HEALTH = "/healthz"
READY = "/readyz"
METRICS = "/metrics"


def is_admin_path(path: str) -> bool:
    return path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/")
