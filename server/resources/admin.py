"""Dockyard's admin API under `routes.ADMIN_PREFIX`: repositories with their storage use, tag details, repository
delete, garbage collection, storage totals, read-only mode, and the state of event delivery (per endpoint; parked
events listed and replayed). JSON like the rest of the API; errors in the spec's
shape. Repository names can never start with `_`, so the prefix cannot collide with a repository. Like every
resource, these only parse, call the `Registry`, and shape the answer.
"""

from __future__ import annotations

import datetime

import falcon

from ..bodies import read_small
from ..errors import BadRequest, TooLarge
from ..parsing import boolean, count, json_document, page_size
from ..routes import ADMIN_EVENTS, ADMIN_REPOSITORIES
from .base import Resource, pagination, set_next_link


def _json_body(req: falcon.Request) -> dict:
    if not req.content_length:
        return {}
    limit = 64 * 1024
    data = read_small(req.bounded_stream, limit)
    if len(data) > limit:
        raise TooLarge({"limit": limit}, message=f"an admin request body is at most {limit} bytes")
    body = json_document(data or b"{}")
    if not isinstance(body, dict):
        raise BadRequest({"reason": "the body must be a JSON object"})
    return body


def _option(body: dict, req: falcon.Request, key: str, parse, default):
    """An option from the JSON body, else the query string, else the default; 400 when ill-typed."""
    value = body.get(key, req.get_param(key))
    return default if value is None else parse(value, key)


def _rfc3339(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class RepositoriesResource(Resource):
    """GET: repositories (those holding manifests) with tag and manifest counts, bytes unique and shared, and the
    time of the last push."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        maximum = self.registry.config.page_size_max
        n, last = pagination(req, default=100, maximum=min(maximum, 1000))
        page, more = self.registry.repository_page(n, last)
        for repository in page:
            repository["last_push"] = _rfc3339(repository["last_push"])
            repository["upstream"] = self.registry.upstream_of(repository["name"])  # a pull-through cache's
        if more and page:
            set_next_link(resp, ADMIN_REPOSITORIES, n, page[-1]["name"])
        resp.media = {"repositories": page}


class RepositoryResource(Resource):
    """DELETE: the repository leaves the catalog; its blobs go at the next GC unless another repository uses them."""

    def on_delete(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        resp.status = falcon.HTTP_202
        resp.media = self.registry.delete_repository(name, self.caller(req))


class RepositoryTagsResource(Resource):
    """GET: tags with digest, media type, pulled size and last push time, sorted by tag, paginated."""

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        n, last = pagination(req, default=1000, maximum=self.registry.config.page_size_max)
        tags, more = self.registry.tag_details(name, n, last)
        for tag in tags:
            tag["updated_at"] = _rfc3339(tag["updated_at"])
        if more and tags:
            set_next_link(resp, f"{ADMIN_REPOSITORIES}/{name}/tags", n, tags[-1]["tag"])
        resp.media = {"name": name, "tags": tags}


class GcResource(Resource):
    """POST: run garbage collection now; the report says what went (or would go, with dry_run) and bytes freed."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = _json_body(req)
        report = self.registry.collect_garbage(
            dry_run=_option(body, req, "dry_run", boolean, False),
            grace=_option(body, req, "grace_seconds", count, None),
            delete_untagged=_option(body, req, "delete_untagged", boolean, False))
        resp.media = report.to_dict()


class StorageResource(Resource):
    """GET: registry totals and per-repository bytes unique to it and shared with others."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.registry.storage_totals()


class ReadOnlyResource(Resource):
    """GET/PUT `{"read_only": bool}`: maintenance mode for every worker, without a restart."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"read_only": self.registry.read_only()}

    def on_put(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.registry.set_read_only(_option(_json_body(req), req, "read_only", boolean, True))
        resp.media = {"read_only": self.registry.read_only()}


def _time(timestamp: float | None) -> str | None:
    return None if timestamp is None else _rfc3339(timestamp)


class EventsResource(Resource):
    """GET: per notification endpoint, the events waiting (`backlog`), `parked`, queues being retried, the oldest
    waiting event, the last success and failure (with its error), and how many were delivered."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        endpoints = self.registry.event_status()
        for endpoint in endpoints:
            for key in ("oldest_pending", "last_success", "last_failure"):
                endpoint[key] = _time(endpoint[key])
        resp.media = {"endpoints": endpoints}


class ParkedEventsResource(Resource):
    """GET: an endpoint's parked events, oldest first, paginated with `n` and `last` (an event number)."""

    def on_get(self, req: falcon.Request, resp: falcon.Response, endpoint: str) -> None:
        n = page_size(req.get_param("n"), default=100, maximum=1000)
        last = _option({}, req, "last", count, 0)
        rows, more = self.registry.parked_events(endpoint, n, last)
        events = [{"id": row["uid"], "number": row["number"], "repository": row["repository"],
                   "action": row["action"], "timestamp": row["payload"].get("timestamp"),
                   "target": row["payload"].get("target"), "attempts": row["attempts"],
                   "parked_at": _time(row["parked_at"]), "last_error": row["last_error"]} for row in rows]
        if more and events:
            set_next_link(resp, f"{ADMIN_EVENTS}/{endpoint}/parked", n, str(events[-1]["number"]))
        resp.media = {"endpoint": endpoint, "events": events}


class ReplayEventsResource(Resource):
    """POST `{"ids": [...]}` (optional): queue the endpoint's parked events again, or the events named (parked,
    or delivered and still retained); answers how many were queued."""

    def on_post(self, req: falcon.Request, resp: falcon.Response, endpoint: str) -> None:
        ids = _json_body(req).get("ids")
        if ids is not None and (not isinstance(ids, list) or not 1 <= len(ids) <= 1000
                                or not all(isinstance(i, str) and 0 < len(i) <= 100 for i in ids)):
            raise BadRequest({"ids": "expected a list of 1 to 1000 event ids"}, message="invalid ids")
        resp.media = {"endpoint": endpoint, "replayed": self.registry.replay_events(endpoint, ids)}
