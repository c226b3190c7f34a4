"""Issue 15: the built-in web UI's files, served by Dockyard under `ui_prefix`: content types, caching, security
headers, on and off with one setting, and hostile paths answered 404 in the spec's error shape, never a file outside
the asset directory."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import webtest

from dockyard.middleware.htpasswd import hash_password, write_users
from dockyard.server import web
from dockyard.server.app import create_app
from dockyard.server.config import Config, ConfigError, load_config

STATIC = Path(web.__file__).parent / "static"


@pytest.fixture
def ui(tmp_path) -> webtest.TestApp:
    return webtest.TestApp(create_app(Config(data=str(tmp_path / "data"))))


def auth_entry(tmp_path, **options) -> dict:
    htpasswd = tmp_path / "htpasswd"
    if not htpasswd.exists():
        write_users(htpasswd, {"alice": hash_password("alice-secret", rounds=4)})
    return {"name": "auth", "options": {"htpasswd": str(htpasswd), **options}}


def asset_base(client, prefix="/ui/") -> str:
    page = client.get(prefix).text
    match = re.search(r'src="(' + re.escape(prefix) + r'assets/[0-9a-f]{16}/)app\.js"', page)
    assert match, page
    return match.group(1)


def assert_error_shape(resp, code):
    assert resp.content_type == "application/json"
    (error,) = resp.json["errors"]
    assert error["code"] == code and set(error) == {"code", "message", "detail"}


def assert_secured(resp):
    csp = resp.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp and "http" not in csp
    assert "require-trusted-types-for 'script'" in csp
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["X-Frame-Options"] == "DENY"
    assert resp.headers["Referrer-Policy"] == "no-referrer"


def test_the_index_is_served_at_the_prefix_revalidated_on_every_load(ui):
    resp = ui.get("/ui/")
    assert resp.content_type == "text/html" and resp.charset == "utf-8"
    assert resp.headers["Cache-Control"] == "no-cache"
    assert_secured(resp)
    assert "<script>" not in resp.text and "{{" not in resp.text  # no inline script, placeholders filled
    assert not re.search(r"(src|href)=\"https?:", resp.text)  # nothing from elsewhere
    again = ui.get("/ui/", headers={"If-None-Match": resp.headers["ETag"]}, status=304)
    assert again.body == b""
    head = ui.head("/ui/")
    assert head.headers["Content-Length"] == str(len(resp.body)) and head.body == b""
    redirect = ui.get("/ui", status=301)
    assert redirect.headers["Location"].endswith("/ui/")


@pytest.mark.parametrize("filename, content_type", [
    ("app.js", "text/javascript"), ("api.js", "text/javascript"), ("util.js", "text/javascript"),
    ("style.css", "text/css"), ("icon.svg", "image/svg+xml"),
])
def test_assets_are_immutable_under_a_version_with_their_content_type(ui, filename, content_type):
    base = asset_base(ui)
    resp = ui.get(base + filename)
    assert resp.content_type == content_type
    assert resp.body == (STATIC / filename).read_bytes()
    assert resp.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert_secured(resp)


def test_every_shipped_file_is_served_and_no_script_uses_markup_sinks(ui):
    base = asset_base(ui)
    for path in STATIC.iterdir():
        if path.name != "index.html":
            ui.get(base + path.name)
        if path.suffix == ".js":
            source = path.read_text()
            for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
                assert sink not in source, f"{path.name} uses {sink}"
            assert "http://" not in source and "https://" not in source  # nothing fetched from elsewhere


def test_the_version_changes_with_the_content(tmp_path):
    copy = tmp_path / "static"
    copy.mkdir()
    for path in STATIC.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    _, before = web.load_assets(copy)
    (copy / "style.css").write_bytes(b"body{}")
    _, after = web.load_assets(copy)
    assert before != after and before == web.load_assets(STATIC)[1]


def test_config_tells_the_page_where_to_sign_in(tmp_path):
    plain = webtest.TestApp(create_app(Config(data=str(tmp_path / "a"))))
    assert plain.get("/ui/config.json").json == {"api": "/v2/", "token_endpoint": None, "auth": False,
                                                 "prefix": "/ui/", "assets": asset_base(plain)}
    assert plain.get("/ui/config.json").headers["Cache-Control"] == "no-store"
    htpasswd = webtest.TestApp(create_app(Config(data=str(tmp_path / "b"), middleware=(auth_entry(tmp_path),))))
    assert htpasswd.get("/ui/config.json").json["token_endpoint"] == "/auth/token"
    assert htpasswd.get("/ui/config.json").json["auth"] is True
    closed = webtest.TestApp(create_app(Config(data=str(tmp_path / "c"),
                                               middleware=(auth_entry(tmp_path, issue_tokens=False),))))
    assert closed.get("/ui/config.json").json["token_endpoint"] is None
    token = webtest.TestApp(create_app(Config(data=str(tmp_path / "d"), middleware=(
        auth_entry(tmp_path, token={"path": "/token", "service": "s"}),))))
    assert token.get("/ui/config.json").json["token_endpoint"] == "/token"


def test_the_ui_is_served_anonymously_with_auth_on(tmp_path):
    client = webtest.TestApp(create_app(Config(data=str(tmp_path / "data"), middleware=(auth_entry(tmp_path),))))
    client.get(asset_base(client) + "app.js")
    client.get("/v2/", status=401)


def test_off_with_one_setting(tmp_path):
    client = webtest.TestApp(create_app(load_config(environ={"DOCKYARD_UI": "false",
                                                             "DOCKYARD_DATA": str(tmp_path / "data")})))
    assert_error_shape(client.get("/ui/", status=404), "NOT_FOUND")
    assert_error_shape(client.get("/ui/config.json", status=404), "NOT_FOUND")


def test_another_prefix(tmp_path):
    client = webtest.TestApp(create_app(Config(data=str(tmp_path / "data"), ui_prefix="/console/registry/")))
    client.get(asset_base(client, "/console/registry/") + "app.js")
    assert client.get("/console/registry/config.json").json["prefix"] == "/console/registry/"
    client.get("/ui/", status=404)


@pytest.mark.parametrize("prefix", ["ui", "/ui", "/", "//", "/v2/ui/", "/auth/ui/", "/ui/../", "/../ui/", "/ui//",
                                    "/.hidden/", "/u i/", "/ui/%2e%2e/", "/ü/", "/ui?/"])
def test_a_bad_prefix_stops_start_up(tmp_path, prefix):
    with pytest.raises(ConfigError, match="ui_prefix"):
        Config(data=str(tmp_path), ui_prefix=prefix)


HOSTILE = [
    "/ui/../../etc/passwd", "/ui/..", "/ui/./index.html", "/ui/assets/{v}/..", "/ui/assets/{v}/.",
    "/ui/assets/{v}/../../../../etc/passwd", "/ui/assets/{v}/%2e%2e", "/ui/assets/%2e%2e/%2e%2e",
    "/ui/assets/{v}/..%5c..%5cetc%5cpasswd", "/ui/assets/{v}/app.js%00.css", "/ui/assets/{v}/app.js/",
    "/ui/assets/{v}/index.html", "/ui/assets/{v}/__init__.py", "/ui/assets/{v}/../__init__.py",
    "/ui/assets/{v}/.gitignore", "/ui/assets/{v}/", "/ui/assets/0000000000000000/app.js", "/ui/assets/{v}",
    "/ui/assets/{v}/APP.JS", "/ui/assets/{v}/app.js~", "/ui/assets/{v}/%C0%AE%C0%AE", "/ui/assets/{v}/" + "a" * 5000,
    "/ui/index.html", "/ui/static/app.js", "/ui/config.json/..", "/ui/%00", "/ui/assets/{v}/app.js;.css",
    "/ui/assets/{v}/%ff%fe", "/ui/assets/{v}/%C3%A9.js",
]


@pytest.mark.parametrize("path", HOSTILE)
def test_hostile_paths_get_a_4xx_in_the_error_shape_never_a_file(ui, path):
    version = asset_base(ui).split("/")[-2]
    resp = ui.get(path.replace("{v}", version), status="*", expect_errors=True)
    # A path not in canonical form (dot segments, encoded dots, NUL, backslashes) is refused before routing (400,
    # the `headers` stage); a plain name the asset table lacks is a 404.
    plain = re.fullmatch(r"(/[A-Za-z0-9_~-][A-Za-z0-9._~-]*)+/?", path.replace("{v}", version))
    if plain:
        assert resp.status_int == 404, (path, resp.status, resp.body[:200])
    assert resp.status_int in (400, 404), (path, resp.status, resp.body[:200])
    assert_error_shape(resp, "NOT_FOUND" if resp.status_int == 404 else "BAD_REQUEST")
    assert b"root:" not in resp.body and b"import" not in resp.body and b"<html" not in resp.body


@pytest.mark.parametrize("raw", ["/ui/assets/{v}/..%2f..%2fserver%2fconfig.py", "/ui/%2f%2fetc%2fpasswd"])
def test_encoded_slashes_are_refused_like_everywhere(ui, raw):
    version = asset_base(ui).split("/")[-2]
    raw = raw.replace("{v}", version)
    from urllib.parse import unquote

    resp = ui.get(unquote(raw), extra_environ={"RAW_URI": raw}, status="*", expect_errors=True)
    assert 400 <= resp.status_int < 500
    assert_error_shape(resp, resp.json["errors"][0]["code"])


@pytest.mark.parametrize("method", ["post", "put", "delete", "patch"])
def test_the_ui_is_read_only(ui, method):
    for path in ("/ui/", asset_base(ui) + "app.js", "/ui/config.json"):
        resp = getattr(ui, method)(path, status=405)
        assert_error_shape(resp, "UNSUPPORTED")


def test_hostile_query_strings_and_headers_change_nothing(ui):
    page = ui.get("/ui/")
    assert ui.get("/ui/?q=<script>alert(1)</script>&x=%00").body == page.body
    assert ui.get("/ui/", headers={"If-None-Match": "\x00" * 100 + "*"}).status_int == 200
    assert ui.get("/ui/", headers={"Accept-Encoding": "gzip, br", "Range": "bytes=0-3"}).body == page.body


def test_a_plain_install_ships_the_ui_files():
    """pyproject's package-data must name every kind of file in static/ (test_packaging checks an installed copy)."""
    text = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    suffixes = {path.suffix for path in STATIC.iterdir()}
    for suffix in suffixes:
        assert f'"*{suffix}"' in text.split('"dockyard.server.web.static" = [', 1)[1].split("]", 1)[0], \
            f"{suffix} files of the web UI are not in package-data"


def test_the_admin_listing_says_when_each_repository_was_last_pushed(tmp_path):
    from helpers import image_manifest, put_manifest

    now = [1_700_000_000.0]
    client = webtest.TestApp(create_app(Config(data=str(tmp_path / "data")), clock=lambda: now[0]))
    put_manifest(client, "old", "1", image_manifest(client, "old", layers=[b"old"]))
    now[0] += 3600
    put_manifest(client, "new", "1", image_manifest(client, "new", layers=[b"new"]))
    listed = {r["name"]: r["last_push"] for r in client.get("/v2/_dockyard/repositories").json["repositories"]}
    assert listed == {"old": "2023-11-14T22:13:20Z", "new": "2023-11-14T23:13:20Z"}


def test_the_readme_shows_the_ui_and_says_why_it_is_built_this_way():
    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text()
    section = readme[readme.index("## Web UI"):readme.index("## registry-tui")]
    image = re.search(r"!\[[^\]]+\]\(([^)]+\.png)\)", section).group(1)
    png = (root / image).read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) < 100_000, "the README's screenshot: a small PNG"
    for needed in ("Why it is built this way", "no build step", "Content-Security-Policy", "same origin",
                   "another origin", "location /registry-ui/", "REGISTRY_URL"):
        assert needed in section
