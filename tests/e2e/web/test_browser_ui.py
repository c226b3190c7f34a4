"""Issue 15: Dockyard's own web UI in real headless Chromium against `dockyard serve`, with images pushed by skopeo
(a multi-arch index among them) and an artifact with a subject: browsing, deleting, signing in and out in htpasswd
and token modes, what anonymous visitors and non-admins see, the admin views, pusher-controlled text kept inert, no
password in any browser storage, no cross-site request acting for the signed-in user, a phone and a wide screen,
the keyboard and the dark theme. Every page visited is photographed; no console error and no 5xx anywhere."""

from __future__ import annotations

import json
import os
import time

import pytest

pytestmark = pytest.mark.e2e

XSS_SCRIPT = "<script>window.__xss = 'script'</script>"
XSS_IMG = "<img src=x onerror=\"window.__xss = 'img'\">"
SIGNATURE = "application/vnd.dockyard.e2e.signature"
SBOM = "application/spdx+json"


@pytest.fixture(scope="module")
def content(e2e, web, tmp_path_factory):
    """One OCI layout with everything the module pushes: images of distinct sizes, a two-platform index, an image
    whose config and annotations carry markup."""
    layout = e2e.OCILayout(tmp_path_factory.mktemp("web-layout"))
    images = {}
    for tag, size in (("1.0", 30_000), ("1.2", 10_000), ("1.10", 60_000), ("2.0-rc.1", 20_000)):
        images[tag] = layout.add_image(layer_sizes=(size,), tag=tag)
    layout.tag("latest", images["1.10"].descriptor)
    amd = layout.add_image(layer_sizes=(8_000,), arch="amd64")
    arm = layout.add_image(layer_sizes=(9_000,), arch="arm64")
    layout.add_index([amd, arm], tag="multi")
    for tag in ("hello", "secret", "doomed", "keep"):
        layout.add_image(layer_sizes=(4_000,), tag=tag)
    web.image_with_config(layout, {
        "created": "2025-02-03T04:05:06Z", "architecture": "amd64", "os": "linux",
        "config": {"Env": [f"PAYLOAD={XSS_IMG}"], "Cmd": ["/bin/sh", "-c", XSS_SCRIPT], "Entrypoint": ["/init"],
                   "Labels": {"org.example.script": XSS_SCRIPT, "org.example.img": XSS_IMG}},
        "rootfs": {"type": "layers", "diff_ids": []},
        "history": [{"created": "2025-02-03T04:05:06Z", "created_by": f"RUN echo {XSS_SCRIPT}"}],
    }, layer=os.urandom(2048), annotations={"org.example.note": XSS_IMG, "org.example.title": XSS_SCRIPT}, tag="xss")
    return layout, images, {"amd": amd, "arm": arm}


def seed(server, pusher, content, web):
    layout, images, platforms = content
    for tag in ("1.0", "1.2", "1.10", "latest", "2.0-rc.1"):
        pusher(server, layout, tag, "web/app")
    pusher(server, layout, "multi", "web/multi", index=True, as_tag="2.0")
    pusher(server, layout, "hello", "public/hello", as_tag="1")
    pusher(server, layout, "secret", "team/secret", as_tag="1")
    pusher(server, layout, "doomed", "web/doomed", as_tag="1")
    pusher(server, layout, "keep", "web/keep", as_tag="1")
    pusher(server, layout, "xss", "web/xss", as_tag="1")
    subject = images["1.0"].digest
    web.push_referrer(server, "web/app", subject, artifact_type=SIGNATURE,
                  annotations={"org.opencontainers.image.created": "2025-03-01T00:00:00Z"})
    web.push_referrer(server, "web/app", subject, artifact_type=SBOM, annotations={"org.example.format": "spdx"})
    xss = server.digest("web/xss", "1")
    web.push_referrer(server, "web/xss", xss, artifact_type=f"application/vnd.example+json; x={XSS_IMG}",
                  annotations={"org.example.evil": XSS_SCRIPT})


@pytest.fixture(scope="module")
def servers(make_server, pusher, content, web):
    made = {mode: make_server(mode) for mode in ("htpasswd", "token")}
    for server in made.values():
        seed(server, pusher, content, web)
    return made


@pytest.fixture(scope="module")
def htpasswd(servers):
    return servers["htpasswd"]


@pytest.fixture(autouse=True)
def nothing_went_wrong(request, browser, servers):
    """After every test: no console error in the browser, no 5xx from any server."""
    yield
    browser.assert_clean_console()
    for mode, server in servers.items():
        assert not server.errors_5xx(), f"5xx from the {mode} server: {server.errors_5xx()}"


def rows(browser, table: str) -> list[str]:
    return browser.texts(f"#{table} tbody tr")


def repository_names(browser) -> list[str]:
    browser.wait("#repositories, #empty, #no-catalog")
    return browser.texts("#repositories tbody td.name")


def tag_groups(browser) -> list[list[str]]:
    browser.wait("#tags")
    return [[tag.get_attribute("data-tag") for tag in row.find_elements("css selector", ".tag")]
            for row in browser.finds("#tags tbody tr")]


PASSWORDS = {"admin": "admin-pass-1", "alice": "alice-pass-2", "bob": "bob-pass-3"}  # as the servers' htpasswd


@pytest.fixture(autouse=True)
def same_passwords(web):
    assert web.PASSWORDS == PASSWORDS


def fresh(browser, server, user: str | None = None):
    """A new page load of the UI (which signs out whoever was signed in), then a sign-in."""
    browser.load(server.ui, "repositories")
    if user:
        browser.sign_in(user, PASSWORDS[user])
        browser.view("repositories")


# -- browsing ------------------------------------------------------------------------------------------------------

def test_browse_repositories_tags_manifest_platform_and_referrer(browser, htpasswd, content):
    _, images, platforms = content
    fresh(browser, htpasswd, "alice")
    names = repository_names(browser)
    assert names == ["public/hello", "web/app", "web/doomed", "web/keep", "web/multi", "web/xss"]  # not team/secret
    browser.shot("repositories")

    browser.click("#repositories a", text="web/app")
    browser.view("repository")
    # Grouped by digest (latest shares 1.10's manifest), in semver order: 1.2 before 1.10, 2.0-rc.1 last.
    assert tag_groups(browser) == [["1.0"], ["1.2"], ["1.10", "latest"], ["2.0-rc.1"]]
    assert "5 tags, 4 manifests" in browser.text("#summary")
    browser.shot("tags")
    browser.click("#sort-size")
    browser.wait("#sort-size", text="▲")
    assert tag_groups(browser) == [["1.2"], ["2.0-rc.1"], ["1.0"], ["1.10", "latest"]]
    browser.click("#sort-size")
    browser.wait("#sort-size", text="▼")
    assert tag_groups(browser)[0] == ["1.10", "latest"]
    browser.click("#sort-pushed")
    browser.wait("#sort-pushed", text="▲")
    assert sorted(sum(tag_groups(browser), [])) == sorted(["1.0", "1.2", "1.10", "latest", "2.0-rc.1"])
    browser.click("#sort-name")
    browser.wait("#sort-name", text="▲")
    assert tag_groups(browser)[0] == ["1.0"]
    pull = browser.find('.tag[data-tag="1.10"] button.copy').get_attribute("title")
    assert pull == f"docker pull {htpasswd.host}/web/app:1.10"
    browser.driver.execute_cdp_cmd("Browser.grantPermissions", {
        "origin": htpasswd.url, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]})
    browser.click('.tag[data-tag="1.10"] button.copy')
    browser.wait("#notice", text=f"Copied: {pull}")
    assert browser.js_async("navigator.clipboard.readText().then(arguments[0], (e) => arguments[0](String(e)))") \
        == pull

    browser.click(f'tr[data-digest="{images["1.0"].digest}"] a.digest')
    browser.view("manifest")
    browser.wait("#referrers")
    assert browser.text("#digest") == images["1.0"].digest
    layers = rows(browser, "layers")
    assert len(layers) == 1 and "KiB" in layers[0]
    assert "2024-01-01 00:00:00 UTC" in browser.text("#config")
    assert browser.text("#labels").count("dockyard.e2e.nonce") == 1
    assert "dockyard e2e layer 0" in browser.text("#history")
    referrers = browser.text("#referrers")
    assert SIGNATURE in referrers and SBOM in referrers
    browser.shot("manifest")

    browser.click("#referrers a.referrer", text="")  # the first referrer, whichever type
    browser.view("manifest")
    browser.wait("#artifact-type")
    assert browser.text("#artifact-type") in (SIGNATURE, SBOM)
    assert browser.text("#subject").startswith(images["1.0"].digest[:19])
    browser.shot("referrer")

    browser.visit("#/", "repositories")
    browser.click("#repositories a", text="web/multi")
    browser.view("repository")
    browser.wait("#tags td.platforms", text="linux/amd64, linux/arm64")
    browser.shot("index-tags")
    browser.click("#tags a.digest")
    browser.view("manifest")
    browser.wait("#platforms")
    assert rows(browser, "platforms")[0].startswith("linux/amd64")
    browser.shot("index")
    browser.click("#platforms a.platform", text=platforms["arm"].digest[:19])
    browser.view("manifest")
    browser.wait("#config")
    assert browser.text("#digest") == platforms["arm"].digest
    assert "linux/arm64" in browser.text("#config")
    browser.shot("platform")


def test_delete_tags_with_a_confirmation_that_says_what_goes(browser, htpasswd):
    fresh(browser, htpasswd, "alice")
    browser.visit("#/repository?name=web/app", "repository")
    digest_12 = htpasswd.digest("web/app", "1.2")
    digest_110 = htpasswd.digest("web/app", "1.10")
    browser.click('input[data-tag="1.2"]')
    browser.click('input[data-tag="latest"]')
    browser.click("#delete-selected", text="(2)")
    plan = browser.wait("#delete-plan")
    manifests = browser.text("#plan-manifests")
    assert "1.2" in manifests and digest_12[:19] in manifests
    alone = browser.text("#plan-tags")
    assert "latest" in alone and "stays, tagged 1.10" in alone and digest_110[:19] in alone
    assert plan.is_displayed()
    browser.shot("delete-confirmation")
    browser.click("#confirm")
    browser.wait("#notice", text="Deleted 2 tags, 1 manifest from web/app")
    browser.wait('.tag[data-tag="1.2"]', gone=True)
    assert "1.2" not in htpasswd.tags("web/app") and "latest" not in htpasswd.tags("web/app")
    assert "1.10" in htpasswd.tags("web/app")
    assert htpasswd.request("GET", f"/v2/web/app/manifests/{digest_12}").status_code == 404
    assert tag_groups(browser) == [["1.0"], ["1.10"], ["2.0-rc.1"]]

    # An index: the confirmation says what becomes of its platform manifests. Cancelled: nothing goes.
    browser.visit("#/repository?name=web/multi", "repository")
    browser.wait("#tags td.platforms", text="linux/arm64")
    browser.click('input[data-tag="2.0"]')
    browser.click("#delete-selected")
    browser.wait("#plan-manifests li.child")
    children = browser.texts("#plan-manifests li.child")
    assert len(children) == 2 and all("untagged" in child for child in children)
    assert any("linux/arm64" in child for child in children)
    browser.shot("delete-index-confirmation")
    browser.click("#cancel")
    browser.wait("#dialog[open]", gone=True)
    assert htpasswd.tags("web/multi") == ["2.0"]

    # A referrer's subject going: the confirmation names its referrers.
    browser.visit("#/repository?name=web/app", "repository")
    browser.click('input[data-tag="1.0"]')
    browser.click("#delete-selected")
    browser.wait("#plan-manifests li.referrers", text="2 referrers")
    browser.click("#cancel")
    assert "1.0" in htpasswd.tags("web/app")


# -- who sees what -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["htpasswd", "token"])
def test_sign_in_and_out_with_nothing_kept_in_browser_storage(browser, servers, mode):
    server = servers[mode]
    fresh(browser, server)
    assert browser.text("#session").startswith("Anonymous")
    assert repository_names(browser) == ["public/hello"]
    browser.visit("#/sign-in", "sign-in")
    browser.wait("#username").send_keys("alice")
    browser.find("#password").send_keys("not-the-password")
    mark = server.mark()
    browser.click("#sign-in-submit")
    browser.wait("#sign-in-error", text="UNAUTHORIZED")
    browser.expected_errors.append("/auth/token - Failed to load resource: the server responded with a status of 401")
    assert browser.find("#password").get_attribute("value") == ""
    browser.shot(f"sign-in-refused-{mode}")
    browser.find("#password").send_keys(PASSWORDS["alice"])
    browser.click("#sign-in-submit")
    browser.wait("#signed-in-as", text="alice")
    browser.view("repositories")
    assert "web/app" in repository_names(browser)
    browser.shot(f"signed-in-{mode}")
    # The UI signed in through the token endpoint and then sent bearer tokens, never Basic credentials.
    requests_made = server.since(mark)
    assert any(e["path"] == "/auth/token" and e["method"] == "POST" and e["status"] == 200 for e in requests_made)
    assert any(e["path"].startswith("/v2/") and e["user"] == "alice" for e in requests_made)

    stored = browser_storage(browser)
    for secret in (PASSWORDS["alice"], "not-the-password"):
        assert secret not in json.dumps(stored), f"the password is in browser storage: {stored}"
    assert stored["cookies"] == [] and stored["sessionStorage"] == {} and stored["indexedDB"] == {}
    assert set(stored["localStorage"]) <= {"dockyard-ui-theme"} and stored["caches"] == []
    assert not any("token" in value.lower() for value in stored["localStorage"].values())

    browser.sign_out()
    browser.wait("#notice", text="Signed out")
    browser.view("repositories")
    browser.wait("#repositories td.name", text="public/hello")
    assert repository_names(browser) == ["public/hello"]
    assert browser.js("return document.querySelector('#signed-in-as')") is None
    browser.shot(f"signed-out-{mode}")


def browser_storage(browser) -> dict:
    """Everything the page's origin keeps: web storage, cookies (all of them, through the DevTools protocol),
    IndexedDB databases with their records, Cache Storage."""
    stored = browser.js_async("""
        const done = arguments[arguments.length - 1];
        (async () => {
          const dump = (storage) => Object.fromEntries(Object.keys(storage).map((k) => [k, storage.getItem(k)]));
          const indexedDB_ = {};
          for (const info of await indexedDB.databases()) {
            const db = await new Promise((ok, no) => {
              const r = indexedDB.open(info.name); r.onsuccess = () => ok(r.result); r.onerror = no; });
            indexedDB_[info.name] = {};
            for (const store of db.objectStoreNames) {
              indexedDB_[info.name][store] = await new Promise((ok) => {
                const r = db.transaction(store).objectStore(store).getAll(); r.onsuccess = () => ok(r.result); });
            }
            db.close();
          }
          done({localStorage: dump(localStorage), sessionStorage: dump(sessionStorage), indexedDB: indexedDB_,
                documentCookie: document.cookie, caches: await caches.keys()});
        })().catch((e) => done({error: String(e)}));
    """)
    assert "error" not in stored, stored
    stored["cookies"] = browser.driver.execute_cdp_cmd("Network.getAllCookies", {})["cookies"]
    return stored


@pytest.mark.parametrize("mode", ["htpasswd", "token"])
def test_an_anonymous_visitor_sees_only_anonymous_pull_repositories(browser, servers, mode):
    server = servers[mode]
    fresh(browser, server)
    assert repository_names(browser) == ["public/hello"]
    assert browser.find("#nav-admin").get_attribute("hidden") is not None
    browser.shot(f"anonymous-{mode}")
    browser.click("#repositories a", text="public/hello")
    browser.view("repository")
    assert tag_groups(browser) == [["1"]]
    assert not browser.finds("#delete-selected") and not browser.finds('input[type="checkbox"]')
    mark = server.mark()
    browser.visit("#/repository?name=web/app", "repository")
    browser.wait("#main .page", text="You may not see this repository")
    browser.visit("#/repository?name=team/secret", "repository")
    browser.wait("#main .page", text="You may not see this repository")
    browser.visit("#/admin", "admin")
    browser.wait("#not-admin")
    # The page asked only the token endpoint what it may do: no refused request to the registry.
    assert all(e["status"] < 400 for e in server.since(mark))
    assert not any("/v2/web/" in e["path"] or "/v2/team/" in e["path"] for e in server.since(mark))


@pytest.mark.parametrize("mode", ["htpasswd", "token"])
def test_a_non_admin_sees_no_admin_actions_and_the_server_refuses_them(browser, servers, mode):
    server = servers[mode]
    fresh(browser, server, "bob")
    assert browser.find("#nav-admin").get_attribute("hidden") is not None
    browser.visit("#/repository?name=web/keep", "repository")
    browser.wait("#tags")
    assert not browser.finds("#delete-repository")
    assert not browser.finds("#delete-selected") and not browser.finds('#tags input[type="checkbox"]')
    browser.shot(f"non-admin-tags-{mode}")
    browser.visit("#/admin", "admin")
    browser.wait("#not-admin")
    assert not browser.finds("#gc-dry-run") and not browser.finds("#read-only")
    browser.shot(f"non-admin-admin-page-{mode}")

    # Forced, with bob's own bearer token (asking for the admin scope) and with his password.
    token = server.token("bob", "registry:admin:*", "repository:web/keep:pull,delete")
    digest = server.digest("web/keep", "1")
    for headers in ({"Authorization": f"Bearer {token}"}, server.auth("bob")):
        for method, path, body in (("GET", "/v2/_dockyard/storage", None), ("POST", "/v2/_dockyard/gc", {}),
                                   ("PUT", "/v2/_dockyard/read-only", {"read_only": True}),
                                   ("DELETE", "/v2/_dockyard/repositories/web/keep", None),
                                   ("GET", "/v2/_dockyard/repositories", None),
                                   ("DELETE", f"/v2/web/keep/manifests/{digest}", None)):
            resp = server.request(method, path, user=None, headers=headers, json=body)
            assert resp.status_code == 403, (method, path, resp.status_code, resp.text)
            assert resp.json()["errors"][0]["code"] == "DENIED"
    assert server.tags("web/keep") == ["1"]
    assert server.request("GET", "/v2/_dockyard/read-only").json() == {"read_only": False}


# -- admin ---------------------------------------------------------------------------------------------------------

def test_admin_views_storage_gc_read_only_and_repository_delete(browser, htpasswd):
    fresh(browser, htpasswd, "admin")
    browser.wait("#nav-admin:not([hidden])")
    browser.wait("#repositories th", text="Last push")
    assert "ago" in browser.text("#repositories tbody tr")
    browser.shot("admin-repositories")
    # Garbage to collect: a manifest deleted by digest leaves its layer to the next collection.
    digest = htpasswd.digest("web/keep", "1")
    assert htpasswd.request("DELETE", f"/v2/web/keep/manifests/{digest}").status_code == 202

    browser.click("#nav-admin")
    browser.view("admin")
    storage = htpasswd.request("GET", "/v2/_dockyard/storage").json()
    assert browser.find("#storage .big").get_attribute("title") == f"{storage['total_bytes']:,} bytes"
    browser.click("#gc-dry-run")
    would = browser.wait("#gc-would-free").text
    browser.shot("admin-gc-dry-run")
    dry = htpasswd.request("POST", "/v2/_dockyard/gc", json={"dry_run": True}).json()
    assert dry["bytes_freed"] > 0 and f"({dry['bytes_freed']:,} bytes)" in would
    browser.click("#gc-run")
    freed = browser.wait("#gc-freed").text
    assert f"({dry['bytes_freed']:,} bytes)" in freed
    assert htpasswd.request("POST", "/v2/_dockyard/gc", json={"dry_run": True}).json()["bytes_freed"] == 0

    browser.click("#read-only")
    browser.wait("#read-only-state", text="on")
    time.sleep(1.1)  # each worker re-reads the switch at most once a second
    assert htpasswd.request("GET", "/v2/_dockyard/read-only").json() == {"read_only": True}
    browser.shot("admin-read-only")
    browser.click("#read-only")
    browser.wait("#read-only-state", text="off")
    time.sleep(1.1)  # each worker re-reads the switch at most once a second
    assert htpasswd.request("GET", "/v2/_dockyard/read-only").json() == {"read_only": False}

    browser.visit("#/repository?name=web/doomed", "repository")
    browser.click("#delete-repository")
    confirm = browser.wait("#confirm")
    assert not confirm.is_enabled()
    browser.find("#confirm-name").send_keys("web/doomed")
    browser.shot("admin-delete-repository")
    browser.click("#confirm")
    browser.view("repositories")
    browser.wait("#notice", text="Deleted the repository web/doomed")
    assert "web/doomed" not in repository_names(browser)
    assert "web/doomed" not in htpasswd.request("GET", "/v2/_catalog").json()["repositories"]


# -- what a pusher controls stays text -----------------------------------------------------------------------------

def test_markup_in_labels_annotations_history_and_artifact_types_is_shown_inert(browser, htpasswd):
    fresh(browser, htpasswd, "alice")
    browser.visit("#/manifest?name=web/xss&ref=1", "manifest")
    browser.wait("#history")
    browser.wait("#referrers")
    labels, annotations = browser.text("#labels"), browser.text("#annotations")
    assert XSS_SCRIPT in labels and XSS_IMG in labels
    assert XSS_IMG in annotations and XSS_SCRIPT in annotations
    assert XSS_SCRIPT in browser.text("#history") and XSS_IMG in browser.text("#env")
    assert XSS_IMG in browser.text("#referrers")
    assert browser.js("return window.__xss") is None
    # No element came from the payloads: the only images are the header's icon, and no script but the app's.
    assert browser.js("return document.querySelectorAll('main img, main script, main [onerror]').length") == 0
    assert browser.js("return document.scripts.length") == 1
    browser.shot("xss-inert")
    browser.click("#referrers a.referrer")
    browser.view("manifest")
    browser.wait("#artifact-type", text="onerror")
    assert browser.js("return window.__xss") is None


# -- cross-site requests cannot act for the signed-in user ---------------------------------------------------------

def test_a_page_on_another_site_cannot_make_the_signed_in_ui_delete_anything(browser, htpasswd, other_site):
    fresh(browser, htpasswd, "admin")
    ui_window = browser.driver.current_window_handle
    digest = htpasswd.digest("web/app", "1.0")
    target = htpasswd.url
    attack = other_site.page("/attack.html", f"""<!doctype html><meta charset="utf-8"><title>attack</title>
<iframe name="sink" id="sink"></iframe>
<form id="gc" method="post" target="sink" action="{target}/v2/_dockyard/gc">
  <input name="dry_run" value="false"><input name="delete_untagged" value="true"></form>
<form id="upload" method="post" target="sink" action="{target}/v2/web/app/blobs/uploads/"></form>
<script>
window.results = {{}};
(async () => {{
  try {{
    const r = await fetch("{target}/v2/web/app/manifests/{digest}", {{method: "DELETE", credentials: "include"}});
    window.results.fetchDelete = "status " + r.status;
  }} catch (e) {{ window.results.fetchDelete = "failed: " + e.name; }}
  try {{
    await fetch("{target}/v2/_dockyard/gc", {{method: "POST", mode: "no-cors", credentials: "include",
      body: "{{\\"dry_run\\": false, \\"delete_untagged\\": true}}"}});
    window.results.noCors = "sent";
  }} catch (e) {{ window.results.noCors = "failed: " + e.name; }}
  document.getElementById("gc").submit();
  await new Promise((ok) => document.getElementById("sink").onload = ok);
  document.getElementById("upload").submit();
  await new Promise((ok) => document.getElementById("sink").onload = ok);
  window.results.done = true;
}})();
</script>""")
    mark = htpasswd.mark()
    browser.driver.switch_to.new_window("tab")
    browser.driver.get(attack)
    results = browser.until(lambda: browser.js("return window.results && window.results.done && window.results"),
                            "the attacking page did not finish")
    browser.shot("cross-site-attack")
    assert results["fetchDelete"] == "failed: TypeError"  # no CORS for another site: the preflight fails
    answered = [(e["method"], e["path"], e["status"], e["user"]) for e in htpasswd.since(mark)]
    assert ("POST", "/v2/_dockyard/gc", 401, None) in answered  # the form: sent without credentials, refused
    assert ("POST", "/v2/web/app/blobs/uploads/", 401, None) in answered
    assert all(status in (401, 403) or method == "OPTIONS" for method, _, status, _ in answered), answered
    assert "1.0" in htpasswd.tags("web/app")
    assert htpasswd.request("GET", f"/v2/web/app/manifests/{digest}").status_code == 200
    browser.expected_errors += [other_site.origin, f"{target}/v2/"]
    browser.driver.close()
    browser.driver.switch_to.window(ui_window)
    browser.wait("#signed-in-as", text="admin")  # the UI stayed signed in all along


# -- a phone, a wide screen, the keyboard, the dark theme ----------------------------------------------------------

def assert_fits(browser):
    """Nothing sticks out of the screen sideways: only a table may be wider, scrolling inside its own frame."""
    wider = browser.js("""
        const out = [];
        for (const e of document.querySelectorAll("body *")) {
          if (e.closest(".table-wrap")) continue;
          const box = e.getBoundingClientRect();
          if (box.width && box.right > document.documentElement.clientWidth + 1) {
            out.push(`${e.tagName}#${e.id}.${e.className} ${Math.round(box.right)}`);
          }
        }
        return out.concat(document.documentElement.scrollWidth > window.innerWidth + 1 ? ["(the page)"] : []);
    """)
    assert not wider, f"wider than the screen ({browser.js('return window.innerWidth')} px): {wider[:10]}"


def test_readable_on_a_phone_and_a_wide_screen_usable_with_the_keyboard_in_a_dark_theme(browser, htpasswd):
    from selenium.webdriver.common.keys import Keys

    fresh(browser, htpasswd, "alice")
    try:
        for width, height, name in ((390, 844, "phone"), (1920, 1080, "wide")):
            browser.driver.set_window_size(width, height)
            browser.visit("#/", "repositories")
            assert_fits(browser)
            browser.shot(f"{name}-repositories")
            browser.visit("#/repository?name=web/app", "repository")
            browser.wait("#tags")
            assert_fits(browser)
            browser.shot(f"{name}-tags")
            browser.visit("#/manifest?name=web/app&ref=1.10", "manifest")
            browser.wait("#history")
            assert_fits(browser)
            browser.shot(f"{name}-manifest")
    finally:
        browser.driver.set_window_size(1280, 900)

    # The keyboard: "/" to search, typing filters, Tab reaches the result, Enter opens it; Escape cancels a dialog.
    browser.visit("#/", "repositories")
    body = browser.find("body")
    body.send_keys("/")
    assert browser.js("return document.activeElement.id") == "search"
    browser.find("#search").send_keys("multi")
    browser.wait("#scanned")
    browser.wait("#repositories td.name", text="web/multi")
    assert repository_names(browser) == ["web/multi"]
    browser.find("#search").send_keys(Keys.TAB)
    assert browser.js("return document.activeElement.textContent") == "web/multi"
    browser.driver.switch_to.active_element.send_keys(Keys.ENTER)
    browser.view("repository")
    browser.wait("#tags")
    browser.driver.switch_to.active_element.send_keys(Keys.TAB)  # from main to the first control
    box = browser.find('input[data-tag="2.0"]')
    box.send_keys(Keys.SPACE)
    assert box.is_selected()
    browser.find("#delete-selected").send_keys(Keys.ENTER)
    browser.wait("#dialog[open]")
    assert browser.js("return document.activeElement.id") == "cancel"  # the safe choice has the focus
    browser.driver.switch_to.active_element.send_keys(Keys.ESCAPE)
    browser.wait("#dialog[open]", gone=True)
    assert htpasswd.tags("web/multi") == ["2.0"]

    browser.click("#theme")
    browser.wait("#theme", text="dark")
    background = browser.js("return getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(15, 18, 22)", background
    browser.shot("dark-tags")
    browser.visit("#/manifest?name=web/multi&ref=2.0", "manifest")
    browser.wait("#platforms")
    browser.shot("dark-index")
    browser.click("#theme")
    browser.wait("#theme", text="light")
    browser.click("#theme")
    browser.wait("#theme", text="system")


# -- the files, from the real server -------------------------------------------------------------------------------

def test_hostile_paths_to_the_real_server_get_a_4xx_in_the_error_shape(htpasswd):
    """What gunicorn hands over for raw paths (the WSGI tests cover the app's side): never a file, never a 5xx."""
    import http.client
    import re

    def get(path: str):
        connection = http.client.HTTPConnection("127.0.0.1", htpasswd.process.port, timeout=30)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.getheader("Content-Type"), response.read()
        finally:
            connection.close()

    status, _, index = get("/ui/")
    version = re.search(rb"/ui/assets/([0-9a-f]{16})/app\.js", index).group(1).decode()
    assert get(f"/ui/assets/{version}/app.js")[0] == 200
    for path in ("/ui/../../etc/passwd", "/ui/%2e%2e/%2e%2e/etc/passwd", "/ui/assets/{v}/%2e%2e",
                 "/ui/assets/{v}/..\\..\\etc\\passwd", "/ui/assets/{v}/app.js%00", "/ui/./",
                 "/ui/assets/{v}/%252e%252e", "/ui/..;/etc/passwd", "/ui/assets/{v}/%c0%ae%c0%ae",
                 "/ui/assets/{v}/..%2f..%2fapp.js", "/ui/assets/{v}/../../../server/config.py",
                 "/ui/assets/../assets/{v}/../../web/__init__.py"):
        status, content_type, body = get(path.replace("{v}", version))
        assert 400 <= status < 500 and content_type == "application/json", (path, status, body[:200])
        assert json.loads(body)["errors"][0]["code"] in ("NOT_FOUND", "NAME_INVALID", "BAD_REQUEST"), \
            (path, body[:200])
        assert b"root:" not in body and b"import " not in body and b"export " not in body, path


def test_tag_names_sort_semver_aware_in_the_page_own_code(browser, htpasswd):
    """compareTags, as the page runs it (imported from the served module): versions by their numbers, a
    pre-release before its release, then the tags that are no versions, by name."""
    import random

    expected = ["0.9", "1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-beta", "1.0.0-rc.1", "1.0.0", "v1.0.1", "1.2",
                "1.2.10", "1.10", "2", "v2.1", "10.0", "latest", "sha-0a1b2c", "stable"]
    shuffled = expected[:]
    random.Random(15).shuffle(shuffled)
    fresh(browser, htpasswd)
    base = browser.js("return document.querySelector('script[type=module]').src.replace(/app\\.js$/, '')")
    ordered = browser.js_async("""
        const [base, tags, done] = arguments;
        import(base + "util.js").then((m) => done([...tags].sort(m.compareTags)), (e) => done(String(e)));
    """, base, shuffled)
    assert ordered == expected


@pytest.mark.parametrize("fragment, shown", [
    ("#/constructor", "No such page"), ("#/__proto__", "No such page"), ("#/toString", "No such page"),
    ("#/repository?name=../../etc/passwd", "NAME_INVALID"), ("#/repository", "NAME_INVALID"),
    ("#/repository?name=" + "a" * 300, "NAME_INVALID"), ("#/repository?name=Web/App", "NAME_INVALID"),
    ("#/manifest?name=web/app&ref=%3Cscript%3E", "MANIFEST_INVALID"),
    ("#/manifest?name=web/app&ref=../../v2/_catalog", "MANIFEST_INVALID"),
    ("#/manifest?name=web%2F..%2Fteam/secret&ref=1", "NAME_INVALID"),
])
def test_hostile_routes_in_the_page_are_refused_before_any_request(browser, htpasswd, fragment, shown):
    fresh(browser, htpasswd, "alice")
    mark = htpasswd.mark()
    browser.js("location.hash = arguments[0]", fragment)
    browser.wait("#main .page", text=shown)
    assert not [e for e in htpasswd.since(mark) if e["path"].startswith("/v2/")]
    assert browser.js("return window.__xss") is None
