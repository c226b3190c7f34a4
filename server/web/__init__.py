"""The built-in web UI: static files shipped in the package (`static/`), served under the `ui_prefix` setting.

The UI is plain HTML, CSS and a few ES modules, with no build step and nothing fetched from elsewhere: the browser
talks to the same HTTP API as every client (V2, the admin API, the token endpoint). This module only serves the
files, from memory:

* `<prefix>` is `index.html`, revalidated on every load (`no-cache`, an ETag) so an upgrade shows at once;
* `<prefix>assets/<version>/<file>`: the other files, under a version that is a digest of all of them, so they are
  cached for a year (`immutable`) and an upgrade changes every URL;
* `<prefix>config.json`: what the page cannot know by itself (where the token endpoint is, whether auth is on).

Files are looked up by exact name in a table read at start-up, never by joining a request path onto a directory,
so no path (`..`, encoded dots, slashes, NUL) can reach a file outside the asset directory: anything else is a 404
in the spec's error shape. Every answer carries a strict Content-Security-Policy (scripts, styles and requests to
this origin only; no inline script; Trusted Types, so assigning markup from script fails) and the usual
companions.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import falcon

from ..errors import NotFound

ASSET_DIR = Path(__file__).resolve().parent / "static"
INDEX = "index.html"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "manifest-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; "
       "require-trusted-types-for 'script'; trusted-types 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=(), interest-cohort=()",
}
IMMUTABLE = "public, max-age=31536000, immutable"


@dataclass(frozen=True)
class Asset:
    data: bytes
    content_type: str
    etag: str


def load_assets(directory: Path = ASSET_DIR) -> tuple[dict[str, Asset], str]:
    """name -> Asset for every regular file directly in `directory` with a known type, and their version."""
    assets = {}
    for path in sorted(directory.iterdir()):
        content_type = CONTENT_TYPES.get(path.suffix)
        if path.is_file() and content_type and not path.name.startswith("."):
            data = path.read_bytes()
            assets[path.name] = Asset(data, content_type, '"' + hashlib.sha256(data).hexdigest()[:32] + '"')
    if INDEX not in assets:
        raise RuntimeError(f"the web UI's {INDEX} is missing from {directory}: the package is incomplete")
    version = hashlib.sha256(b"".join(name.encode() + b"\0" + a.data for name, a in assets.items())).hexdigest()
    return assets, version[:16]


def _secure(resp: falcon.Response) -> None:
    for header, value in SECURITY_HEADERS.items():
        resp.set_header(header, value)


def _send(req: falcon.Request, resp: falcon.Response, asset: Asset, cache_control: str) -> None:
    _secure(resp)
    resp.cache_control = [cache_control]
    resp.etag = asset.etag
    if asset.etag in (req.get_header("If-None-Match") or ""):
        resp.status = falcon.HTTP_304
        return
    resp.content_type = asset.content_type
    resp.content_length = len(asset.data)
    if req.method != "HEAD":
        resp.data = asset.data


class IndexResource:
    def __init__(self, index: Asset):
        self.index = index

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        _send(req, resp, self.index, "no-cache")

    on_head = on_get


class AssetResource:
    def __init__(self, assets: dict[str, Asset], version: str):
        self.assets = assets
        self.version = version

    def on_get(self, req: falcon.Request, resp: falcon.Response, version: str, filename: str) -> None:
        asset = self.assets.get(filename) if version == self.version and filename != INDEX else None
        if asset is None:
            _secure(resp)
            raise NotFound({"path": req.path[:300]}, message="no such file in the web UI")
        _send(req, resp, asset, IMMUTABLE)

    on_head = on_get


class ConfigResource:
    def __init__(self, settings: dict):
        self.body = json.dumps(settings).encode()

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        _secure(resp)
        resp.cache_control = ["no-store"]
        resp.content_type = falcon.MEDIA_JSON
        resp.data = self.body

    on_head = on_get


class RedirectResource:
    """`/ui` -> `/ui/`, so relative links in the page resolve under the prefix."""

    def __init__(self, target: str):
        self.target = target

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        _secure(resp)
        resp.status = falcon.HTTP_301
        resp.location = self.target  # relative: right behind any proxy

    on_head = on_get


class WebUI:
    """The UI's routes, for `create_app`. `token_path`: the token endpoint, None when there is none; `auth`:
    whether an `auth` middleware guards the API (without one, every visitor may do everything)."""

    def __init__(self, prefix: str, *, token_path: str | None, auth: bool, asset_dir: Path = ASSET_DIR):
        self.prefix = prefix
        assets, self.version = load_assets(asset_dir)
        base = f"{prefix}assets/{self.version}/"
        index = assets[INDEX].data.replace(b"{{assets}}", base.encode())
        self.index = Asset(index, assets[INDEX].content_type, '"' + hashlib.sha256(index).hexdigest()[:32] + '"')
        self.assets = assets
        self.settings = {"api": "/v2/", "token_endpoint": token_path, "auth": auth, "prefix": prefix,
                         "assets": base}

    def routes(self):
        yield self.prefix, IndexResource(self.index)
        yield self.prefix.rstrip("/"), RedirectResource(self.prefix)
        yield self.prefix + "config.json", ConfigResource(self.settings)
        yield self.prefix + "assets/{version}/{filename}", AssetResource(self.assets, self.version)
