"""Issue 15: a registry UI on another origin, in the same headless Chromium. A page served from
http://localhost:<port> (another site than http://127.0.0.1:<registry port> for the browser, not merely another
port) signs in at the token endpoint, then fetches the catalog, a tag list and a manifest with a long Accept header
(so the browser preflights), with credentials, reads a 401 challenge and deletes the manifest: with `auth` on, in
htpasswd and token modes. With the `cors` middleware every request succeeds; without it the same page fails at every
step and deletes nothing."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.e2e

REPOSITORY = "cors/app"
LONG_ACCEPT = ", ".join(["application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.index.v1+json",
                         "application/vnd.docker.distribution.manifest.v2+json",
                         "application/vnd.docker.distribution.manifest.list.v2+json"])

PAGE = """<!doctype html>
<meta charset="utf-8"><title>another origin</title>
<h1>A registry UI on another origin</h1>
<pre id="out">running</pre>
<script>
const q = new URLSearchParams(location.search);
const registry = q.get("registry"), user = q.get("user"), password = q.get("password"), digest = q.get("digest");
const accept = q.get("accept");
const results = [];
let auth = "Basic " + btoa(user + ":" + password);
async function step(name, run) {
  try {
    results.push({name, ok: true, ...(await run())});
  } catch (error) {
    results.push({name, ok: false, error: error.name + ": " + error.message});
  }
}
(async () => {
  await step("token", async () => {
    const form = new URLSearchParams({grant_type: "password", username: user, password, access_type: "offline",
      client_id: "another-origin", scope: "registry:catalog:* repository:cors/app:pull,delete"});
    const r = await fetch(registry + "/auth/token", {method: "POST", body: form, credentials: "include"});
    const body = await r.json();
    auth = "Bearer " + body.token;
    return {status: r.status, refresh: Boolean(body.refresh_token)};
  });
  const headers = () => ({Authorization: auth});
  await step("catalog", async () => {
    const r = await fetch(registry + "/v2/_catalog?n=10", {headers: headers(), credentials: "include"});
    return {status: r.status, body: await r.json(), api: r.headers.get("Docker-Distribution-API-Version")};
  });
  await step("tags", async () => {
    const r = await fetch(registry + "/v2/cors/app/tags/list", {headers: headers(), credentials: "include"});
    return {status: r.status, body: await r.json()};
  });
  await step("manifest", async () => {
    const r = await fetch(registry + "/v2/cors/app/manifests/1",
                          {headers: {...headers(), Accept: accept}, credentials: "include"});
    return {status: r.status, digest: r.headers.get("Docker-Content-Digest"), mediaType: (await r.json()).mediaType};
  });
  await step("challenge", async () => {
    const r = await fetch(registry + "/v2/cors/app/tags/list", {credentials: "include"});
    return {status: r.status, challenge: r.headers.get("WWW-Authenticate"), code: (await r.json()).errors[0].code};
  });
  await step("delete", async () => {
    const r = await fetch(registry + "/v2/cors/app/manifests/" + digest,
                          {method: "DELETE", headers: headers(), credentials: "include"});
    return {status: r.status};
  });
  window.results = results;
  document.getElementById("out").textContent = JSON.stringify(results, null, 1);
})();
</script>
"""


@pytest.fixture(scope="module")
def servers(make_server, pusher, e2e, other_site, tmp_path_factory):
    """Per auth mode, a registry with the cors middleware allowing the other site, and one without it."""
    layout = e2e.OCILayout(tmp_path_factory.mktemp("cors-layout"))
    layout.add_image(layer_sizes=(5_000,), tag="1")
    made = {}
    for mode in ("htpasswd", "token"):
        for kind in ("cors", "plain"):
            server = make_server(mode, cors_origin=other_site.origin if kind == "cors" else None, workers=1)
            pusher(server, layout, "1", REPOSITORY)
            made[mode, kind] = server
    return made


@pytest.fixture(autouse=True)
def nothing_went_wrong(browser, servers):
    yield
    browser.assert_clean_console()
    for key, server in servers.items():
        assert not server.errors_5xx(), f"5xx from the {key} server: {server.errors_5xx()}"


def run_page(browser, other_site, server, web) -> dict:
    from urllib.parse import urlencode

    digest = server.digest(REPOSITORY, "1")
    assert len(LONG_ACCEPT) > 128  # past what a browser sends without a preflight
    url = other_site.page("/ui.html", PAGE) + "?" + urlencode({
        "registry": server.url, "user": "alice", "password": web.PASSWORDS["alice"], "digest": digest,
        "accept": LONG_ACCEPT})
    browser.load(url)
    results = browser.until(lambda: browser.js("return window.results"), "the cross-origin page did not finish")
    return {r["name"]: r for r in results} | {"digest": digest}


@pytest.mark.parametrize("mode", ["htpasswd", "token"])
def test_with_cors_a_page_on_another_origin_does_everything(browser, other_site, servers, web, mode):
    server = servers[mode, "cors"]
    mark = server.mark()
    results = run_page(browser, other_site, server, web)
    browser.shot(f"cross-origin-with-cors-{mode}")
    browser.expected_errors.append(f"{server.url}/v2/cors/app/tags/list - Failed to load resource: the server "
                                   "responded with a status of 401")  # the challenge step, on purpose
    failed = {name: r for name, r in results.items() if name != "digest" and not r["ok"]}
    assert not failed, json.dumps(results, indent=1)
    assert results["token"]["status"] == 200 and results["token"]["refresh"]
    assert results["catalog"]["body"]["repositories"] == [REPOSITORY]
    assert results["catalog"]["api"] == "registry/2.0"  # an exposed header, readable
    assert results["tags"]["body"] == {"name": REPOSITORY, "tags": ["1"]}
    assert results["manifest"]["status"] == 200 and results["manifest"]["digest"] == results["digest"]
    assert results["challenge"]["status"] == 401 and results["challenge"]["code"] == "UNAUTHORIZED"
    assert results["challenge"]["challenge"].startswith("Basic" if mode == "htpasswd" else "Bearer")
    assert results["delete"]["status"] == 202
    assert server.request("GET", f"/v2/{REPOSITORY}/manifests/{results['digest']}").status_code == 404
    # The browser preflighted, without credentials, and was answered before any authentication.
    seen = server.since(mark)
    preflights = [e for e in seen if e["method"] == "OPTIONS"]
    assert {e["path"].split("?")[0] for e in preflights} >= {"/v2/_catalog", f"/v2/{REPOSITORY}/tags/list",
                                               f"/v2/{REPOSITORY}/manifests/1",
                                               f"/v2/{REPOSITORY}/manifests/{results['digest']}"}
    assert all(e["status"] == 204 and e["user"] is None for e in preflights)
    assert any(e["method"] == "DELETE" and e["status"] == 202 and e["user"] == "alice" for e in seen)


@pytest.mark.parametrize("mode", ["htpasswd", "token"])
def test_without_cors_the_same_page_fails_and_deletes_nothing(browser, other_site, servers, web, mode):
    server = servers[mode, "plain"]
    mark = server.mark()
    results = run_page(browser, other_site, server, web)
    browser.shot(f"cross-origin-without-cors-{mode}")
    browser.expected_errors += ["has been blocked by CORS policy", f"{server.url}/"]
    for name in ("token", "catalog", "tags", "manifest", "challenge", "delete"):
        assert not results[name]["ok"] and results[name]["error"].startswith("TypeError"), json.dumps(results)
    assert server.tags(REPOSITORY) == ["1"]
    assert server.request("GET", f"/v2/{REPOSITORY}/manifests/{results['digest']}").status_code == 200
    # The preflights reached the registry and got what they got before the cors middleware existed: a challenge,
    # or (for the catalog, which anonymous callers may list here) Falcon's bare `Allow`, with no CORS header.
    preflights = {e["path"].split("?")[0]: e["status"] for e in server.since(mark) if e["method"] == "OPTIONS"}
    assert preflights[f"/v2/{REPOSITORY}/manifests/1"] == 401 and preflights["/v2/_catalog"] == 200, preflights
    assert not any(e["method"] == "DELETE" for e in server.since(mark))
