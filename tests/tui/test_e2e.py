"""registry-tui driven with the keyboard (Pilot, 80x24) against a real `dockyard serve` and the reference
registry, both seeded over the HTTP API. Each test checks what the screen shows and then asks the registry,
over HTTP, what it holds afterwards."""

from __future__ import annotations

import httpx
import pytest

from conftest import (credential_helper, dialog_text, docker_environment, goto, run_app, screen_text, settle,
                      table_keys, type_text)
from dockyard.tui.app import RegistryApp
from dockyard.tui.client import Credentials, RegistryAuth, RegistryClient
from dockyard.tui.connect import resolve
from dockyard.tui.format import exact_bytes
from seed import LAYERS, SBOM_TYPE, SIGNATURE_TYPE, Seeder, seed

pytestmark = pytest.mark.e2e

ACCEPT = ", ".join(["application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.index.v1+json"])


def app_for(server) -> RegistryApp:
    return RegistryApp(RegistryClient(server.url), gc_grace=0)


def only_in(pushed, *others) -> dict:
    """Blobs of `pushed` that none of `others` references."""
    used = {d for o in others for d in o.blobs}
    return {d: s for d, s in pushed.blobs.items() if d not in used}


def test_browse_filter_sort_and_open_a_manifest(dockyard):
    s = seed(dockyard.url)
    http = dockyard.http()

    async def scenario(pilot):
        text = screen_text(pilot.app)
        assert "admin API" in text and "3 repositories" in text
        assert table_keys(pilot.app) == ["apps/api", "apps/web", "tools/cli"]
        web = pilot.app.screen.query_one("KeyTable").get_row("apps/web")
        assert web[1] == "6"  # tags, from the admin API

        await pilot.press("slash")
        await type_text(pilot, "web")
        assert table_keys(pilot.app) == ["apps/web"]
        assert "1 of 3 repositories match" in screen_text(pilot.app)
        await pilot.press("enter", "enter")  # leave the filter, open the repository
        await settle(pilot)

        # tags that share a digest sit together; sizes are the admin API's, which the registry confirms below
        assert table_keys(pilot.app) == ["1.0", "1.1", "stable", "2.0", "latest", "multi"]
        text = screen_text(pilot.app)
        assert "6 tags, 4 manifests" in text and "linux/amd64,linux/arm64" in text
        assert text.count("└ same") == 2
        await pilot.press("s", "s")  # name -> date -> size
        await settle(pilot)
        assert "sort: size" in screen_text(pilot.app)
        assert table_keys(pilot.app) == ["2.0", "latest", "multi", "1.1", "stable", "1.0"]
        await pilot.press("o")
        assert table_keys(pilot.app) == ["1.0", "1.1", "stable", "multi", "2.0", "latest"]

        await goto(pilot, "multi")
        await pilot.press("enter")
        await settle(pilot)
        text = screen_text(pilot.app)
        assert "application/vnd.oci.image.index.v1+json" in text
        assert exact_bytes(s.multi.total_size) in text
        assert "linux/amd64" in text and "linux/arm64" in text
        await pilot.press("escape")

        await goto(pilot, "2.0")
        await pilot.press("enter")
        await settle(pilot)
        text = screen_text(pilot.app)
        reference = f"127.0.0.1:{dockyard.url.rsplit(':', 1)[1]}/apps/web@{s.c.digest}"
        assert f"docker pull {reference[:60]}" in text  # folded at 80 columns
        await pilot.press("c")
        assert pilot.app.clipboard == reference
        assert "2.0, latest" in text and "Created     2024-03-01T00:00:00Z" in text
        await pilot.press("end")  # the rest of the detail, scrolled into view
        text = screen_text(pilot.app)
        assert "Referrers (1)" in text and SBOM_TYPE in text and "COPY c1 /" in text
        await pilot.press("escape", "escape")
        await settle(pilot)
        assert "apps/web" in table_keys(pilot.app)

    run_app(app_for(dockyard), scenario)
    sizes = {t["tag"]: t["size"] for t in http.get("/v2/_dockyard/repositories/apps/web/tags").json()["tags"]}
    assert sizes["multi"] == s.multi.total_size and sizes["2.0"] == s.c.total_size


def test_mark_several_tags_and_delete_them_then_gc(dockyard):
    s = seed(dockyard.url)
    http = dockyard.http()
    freed_blobs = only_in(s.a, s.b, s.c, s.amd64)  # A's config and its own layer; BASE stays

    async def scenario(pilot):
        await pilot.press("down", "enter")
        await settle(pilot)
        await goto(pilot, "1.0")
        await pilot.press("space", "space")  # marks 1.0, then 1.1 (the cursor moves down after a mark)
        assert "2 marked" in screen_text(pilot.app)
        await pilot.press("d")
        await settle(pilot)
        text = screen_text(pilot.app)
        assert "2 tags, 1 manifest" in text
        assert exact_bytes(sum(freed_blobs.values()) + s.a.manifest_bytes) in text
        assert "removed alone" in text and "1.1" in text
        await pilot.press("y")
        await settle(pilot)
        text = screen_text(pilot.app)
        assert "Deleted 2 of 2." in text
        # Dockyard keeps manifests in the blob store too: GC gives back exactly what the preview said
        assert f"reclaimed {sum(freed_blobs.values()) + s.a.manifest_bytes:,} bytes" in text
        await pilot.press("enter")
        await settle(pilot)
        assert table_keys(pilot.app) == ["2.0", "latest", "multi", "stable"]

    run_app(app_for(dockyard), scenario)
    assert sorted(http.get("/v2/apps/web/tags/list").json()["tags"]) == ["2.0", "latest", "multi", "stable"]
    assert http.get(f"/v2/apps/web/manifests/{s.a.digest}", headers={"Accept": ACCEPT}).status_code == 404
    assert http.get(f"/v2/apps/web/manifests/{s.b.digest}", headers={"Accept": ACCEPT}).status_code == 200
    for digest in freed_blobs:
        assert http.head(f"/v2/apps/web/blobs/{digest}").status_code == 404
    base = next(d for d, size in s.a.blobs.items() if size == LAYERS["base"])
    assert http.head(f"/v2/apps/web/blobs/{base}").status_code == 200


def test_delete_a_manifest_by_digest_shows_the_tags_that_go_with_it(dockyard):
    s = seed(dockyard.url)
    http = dockyard.http()

    async def scenario(pilot):
        await pilot.press("down", "enter")
        await settle(pilot)
        await goto(pilot, "stable")
        await pilot.press("D")
        await settle(pilot)
        text = screen_text(pilot.app)
        assert "Delete manifest" in text and "1.1, stable" in text
        await pilot.press("y")
        await settle(pilot)
        await pilot.press("enter")
        await settle(pilot)

    run_app(app_for(dockyard), scenario)
    assert sorted(http.get("/v2/apps/web/tags/list").json()["tags"]) == ["1.0", "2.0", "latest", "multi"]
    assert http.get(f"/v2/apps/web/manifests/{s.b.digest}", headers={"Accept": ACCEPT}).status_code == 404


def test_retention_preview_counts_exact_bytes_and_layers_other_repositories_keep(dockyard):
    s = seed(dockyard.url)
    http = dockyard.http()
    base = next(d for d, size in s.a.blobs.items() if size == LAYERS["base"])

    async def scenario(pilot):
        await pilot.press("down", "enter")
        await settle(pilot)
        await pilot.press("p")
        await settle(pilot)
        await pilot.press("tab", "tab")  # keep newest, older than, then the pattern
        await type_text(pilot, "1.*")
        await settle(pilot)
        text = screen_text(pilot.app)
        assert "2 tags, 1 manifest" in text and "Other repositories: unknown" not in text
        assert exact_bytes(sum(only_in(s.a, s.b, s.c, s.amd64).values()) + s.a.manifest_bytes) in text

        # every tag: BASE would go from apps/web, but apps/api still uses it, so it frees nothing
        for _ in range(3):
            await pilot.press("backspace")
        await type_text(pilot, "*")
        await settle(pilot)
        text = screen_text(pilot.app)
        everything = {**s.a.blobs, **s.b.blobs, **s.c.blobs, **s.amd64.blobs, **s.arm64.blobs}
        expected_blobs = sum(size for d, size in everything.items() if d != base)
        manifests = sum(p.manifest_bytes for p in (s.a, s.b, s.c, s.multi, s.amd64, s.arm64))
        assert "6 tags, 6 manifests" in text
        assert exact_bytes(expected_blobs + manifests) in text
        assert "Kept: 1 blob (4.0 KiB) that other repositories still use" in text
        await pilot.press("enter")
        await settle(pilot)
        await pilot.press("y")
        await settle(pilot)
        text = screen_text(pilot.app)
        assert "Deleted 6 of 6." in text
        assert f"reclaimed {expected_blobs + manifests:,} bytes" in text
        await pilot.press("enter")
        await settle(pilot)
        assert table_keys(pilot.app) == []

    run_app(app_for(dockyard), scenario)
    assert http.get("/v2/apps/web/tags/list").json().get("tags") in ([], None)
    assert http.head(f"/v2/apps/api/blobs/{base}").status_code == 200
    assert http.get("/v2/apps/api/manifests/1", headers={"Accept": ACCEPT}).status_code == 200


def test_delete_a_repository_and_collect_garbage(dockyard):
    s = seed(dockyard.url)
    http = dockyard.http()

    async def scenario(pilot):
        await goto(pilot, "tools/cli")
        await pilot.press("x")
        text = screen_text(pilot.app)
        assert "Delete repository" in text and "tools/cli" in text
        await pilot.press("y")
        await settle(pilot)
        assert f"reclaimed {sum(s.cli.blobs.values()) + s.cli.manifest_bytes:,} bytes" in screen_text(pilot.app)
        await pilot.press("enter")
        await settle(pilot)
        assert table_keys(pilot.app) == ["apps/api", "apps/web"]
        await pilot.press("C", "y")  # a second collection finds nothing left
        await settle(pilot)
        assert "reclaimed 0 bytes" in screen_text(pilot.app)

    run_app(app_for(dockyard), scenario)
    assert "tools/cli" not in http.get("/v2/_catalog").json()["repositories"]
    for digest in s.cli.blobs:
        assert http.head(f"/v2/tools/cli/blobs/{digest}").status_code == 404


def test_reference_registry_browse_and_delete(reference):
    s = seed(reference.url, referrer=False)
    http = reference.http()

    async def scenario(pilot):
        text = screen_text(pilot.app)
        assert "V2 API only" in text and "unknown (no admin API)" in text
        assert pilot.app.screen.query_one("KeyTable").get_row("apps/web")[1:] == ["?", "?", "?"]
        await goto(pilot, "apps/web")
        await pilot.press("enter")
        await settle(pilot)
        assert table_keys(pilot.app) == ["1.0", "1.1", "stable", "2.0", "latest", "multi"]
        # no push times without the admin API: the age is the image's creation time (2024-01-01)
        assert pilot.app.screen.query_one("KeyTable").get_row("1.0")[5] != "?"

        await goto(pilot, "2.0")
        await pilot.press("enter")
        await settle(pilot)
        assert exact_bytes(s.c.total_size) in screen_text(pilot.app)
        await pilot.press("end")
        assert "unknown: this server has no referrers API" in screen_text(pilot.app)
        await pilot.press("escape")

        # 1.0 is its manifest's only tag: deleted by digest. 1.1 shares its manifest with `stable`, and
        # Distribution cannot delete a tag alone: it says so and keeps it.
        await goto(pilot, "1.0")
        await pilot.press("space", "space", "d")
        await settle(pilot)
        assert "Other repositories: unknown" in screen_text(pilot.app)
        await pilot.press("y")
        await settle(pilot)
        text = screen_text(pilot.app)
        assert "Deleted 1 of 2." in text and "cannot delete a tag" in text
        assert "reclaimed bytes unknown" in text
        await pilot.press("enter")
        await settle(pilot)
        assert table_keys(pilot.app) == ["1.1", "stable", "2.0", "latest", "multi"]

    run_app(app_for(reference), scenario)
    assert sorted(http.get("/v2/apps/web/tags/list").json()["tags"]) == ["1.1", "2.0", "latest", "multi", "stable"]
    assert http.get(f"/v2/apps/web/manifests/{s.a.digest}", headers={"Accept": ACCEPT}).status_code == 404


def test_bearer_tokens_with_the_credentials_docker_login_stored(dockyard_with_tokens, tmp_path):
    import base64
    import json

    server = dockyard_with_tokens
    token_http = httpx.Client(timeout=30)
    seed(server.url, auth=RegistryAuth(Credentials("alice", "ecila"), token_http))
    host = server.url.removeprefix("http://")
    (tmp_path / "docker").mkdir()
    (tmp_path / "docker" / "config.json").write_text(json.dumps(
        {"auths": {host: {"auth": base64.b64encode(b"alice:ecila").decode()}}}))
    connection = resolve(server.url, env={"HOME": str(tmp_path), "DOCKER_CONFIG": str(tmp_path / "docker")})
    assert connection.source == "docker config.json"
    client = RegistryClient(connection.url, connection.credentials)

    async def scenario(pilot):
        assert "admin API" in screen_text(pilot.app)  # alice has the admin role: the token grants it
        await goto(pilot, "apps/web")
        await pilot.press("enter")
        await settle(pilot)
        await goto(pilot, "1.0")
        await pilot.press("d")
        await settle(pilot)
        await pilot.press("y")
        await settle(pilot)
        assert "Deleted 1 of 1." in screen_text(pilot.app)

    run_app(RegistryApp(client, gc_grace=0), scenario)
    check = RegistryClient(server.url, Credentials("alice", "ecila"))
    assert sorted(t for page in check.tags("apps/web") for t in page) == ["1.1", "2.0", "latest", "multi", "stable"]
    check.close()
    token_http.close()

    async def refused(pilot):
        assert "the token service refused user 'alice' (401): check the credentials" in screen_text(pilot.app)

    run_app(RegistryApp(RegistryClient(server.url, Credentials("alice", "wrong"))), refused)

    async def reader(pilot):  # bob may pull but has no admin role: browsing works, sizes are unknown
        assert "V2 API only" in screen_text(pilot.app)
        await goto(pilot, "apps/web")
        await pilot.press("enter")
        await settle(pilot)
        assert "stable" in table_keys(pilot.app)

    run_app(RegistryApp(RegistryClient(server.url, Credentials("bob", "bob"))), reader)


# -- issue 15: a manifest's referrers, deleted with it when the operator asks --------------------------------------


def own_bytes(pushed, *kept) -> int:
    """What deleting `pushed` gives back while `kept` stay: its manifest and the blobs none of `kept` holds."""
    return pushed.manifest_bytes + sum(only_in(pushed, *kept).values())


def test_delete_a_manifest_with_its_referrers_when_asked(dockyard):
    s = seed(dockyard.url)  # c (2.0, latest) has an SBOM
    seeder = Seeder(dockyard.url)
    sig_b = seeder.signature("apps/web", s.b, "b")  # a signature of b (1.1, stable)
    sig_sbom = seeder.signature("apps/web", s.sbom, "sbom")  # a signature of c's SBOM: a referrer of a referrer
    seeder.close()
    http = dockyard.http()
    images = (s.a, s.c, s.amd64, s.arm64)
    # b with its signature: the empty config ({}) stays, c's SBOM and its signature still use it
    first = own_bytes(s.b, *images) + own_bytes(sig_b, s.sbom, sig_sbom)
    # then c with its SBOM and the SBOM's signature: the last users of {}, so it goes too
    second = own_bytes(s.c, s.a, s.amd64, s.arm64) + own_bytes(s.sbom) + own_bytes(sig_sbom, s.sbom)

    async def scenario(pilot):
        await goto(pilot, "apps/web")
        await pilot.press("enter")
        await settle(pilot)
        await goto(pilot, "stable")
        await pilot.press("D")
        await settle(pilot)
        text = dialog_text(pilot.app)
        assert "Delete manifest" in text and "2 tags, 1 manifest would be deleted" in text  # the default: alone
        assert "1 referrer (signatures, SBOMs) of this manifest stays, orphaned. r: delete them too" in text
        await pilot.press("r")
        await settle(pilot)
        text = dialog_text(pilot.app)
        assert "Delete manifest, with referrers" in text
        assert "2 tags, 2 manifests (1 referrer) would be deleted from apps/web" in text
        assert f"✗ {s.b.digest[7:19]}  1.1, stable" in text
        assert f"✗ {sig_b.digest[7:19]}  referrer: {SIGNATURE_TYPE}" in text
        assert f"Frees {exact_bytes(first)}" in text
        await pilot.press("y")
        await settle(pilot)
        text = screen_text(pilot.app)
        assert "Deleted 2 of 2." in text and f"reclaimed {first:,} bytes" in text
        await pilot.press("enter")
        await settle(pilot)

        await goto(pilot, "2.0")
        await pilot.press("D")
        await settle(pilot)
        assert "2 referrers (signatures, SBOMs) of this manifest stay, orphaned" in dialog_text(pilot.app)
        await pilot.press("r")
        await settle(pilot)
        text = dialog_text(pilot.app)
        assert "2 tags, 3 manifests (2 referrers) would be deleted" in text
        assert f"✗ {s.sbom.digest[7:19]}  referrer: {SBOM_TYPE}" in text
        assert f"✗ {sig_sbom.digest[7:19]}  referrer: {SIGNATURE_TYPE}" in text
        assert f"Frees {exact_bytes(second)}" in text
        await pilot.press("y")
        await settle(pilot)
        text = screen_text(pilot.app)
        assert "Deleted 3 of 3." in text and f"reclaimed {second:,} bytes" in text
        await pilot.press("enter")
        await settle(pilot)
        assert table_keys(pilot.app) == ["1.0", "multi"]

    run_app(app_for(dockyard), scenario)
    assert sorted(http.get("/v2/apps/web/tags/list").json()["tags"]) == ["1.0", "multi"]
    for gone in (s.b, sig_b, s.c, s.sbom, sig_sbom):
        assert http.get(f"/v2/apps/web/manifests/{gone.digest}", headers={"Accept": ACCEPT}).status_code == 404
    for subject in (s.b, s.c, s.sbom):
        assert http.get(f"/v2/apps/web/referrers/{subject.digest}").json()["manifests"] == []
    for blob in {**sig_b.blobs, **s.sbom.blobs, **sig_sbom.blobs}:  # {} among them
        assert http.head(f"/v2/apps/web/blobs/{blob}").status_code == 404
    assert http.get(f"/v2/apps/web/manifests/{s.a.digest}", headers={"Accept": ACCEPT}).status_code == 200


def test_delete_a_manifest_alone_by_default_leaves_its_referrers(dockyard):
    s = seed(dockyard.url)
    http = dockyard.http()
    alone = own_bytes(s.c, s.a, s.b, s.amd64, s.arm64)

    async def scenario(pilot):
        await goto(pilot, "apps/web")
        await pilot.press("enter")
        await settle(pilot)
        await goto(pilot, "latest")
        await pilot.press("D")
        await settle(pilot)
        text = dialog_text(pilot.app)
        assert "1 referrer (signatures, SBOMs) of this manifest stays, orphaned" in text
        assert f"Frees {exact_bytes(alone)}" in text and "referrer:" not in text
        await pilot.press("r", "r")  # with, then alone again: the body says so
        await settle(pilot)
        text = dialog_text(pilot.app)
        assert "with referrers" not in text and "2 tags, 1 manifest would be deleted" in text
        await pilot.press("y")
        await settle(pilot)
        assert "Deleted 1 of 1." in screen_text(pilot.app)
        assert f"reclaimed {alone:,} bytes" in screen_text(pilot.app)

    run_app(app_for(dockyard), scenario)
    assert http.get(f"/v2/apps/web/manifests/{s.c.digest}", headers={"Accept": ACCEPT}).status_code == 404
    # the SBOM is still there, and the referrers API still lists it under its (deleted) subject
    assert http.get(f"/v2/apps/web/manifests/{s.sbom.digest}", headers={"Accept": ACCEPT}).status_code == 200
    assert [m["digest"] for m in http.get(f"/v2/apps/web/referrers/{s.c.digest}").json()["manifests"]] == \
        [s.sbom.digest]
    for blob in s.sbom.blobs:
        assert http.head(f"/v2/apps/web/blobs/{blob}").status_code == 200


def test_reference_registry_refuses_deleting_referrers_and_says_why(reference):
    s = seed(reference.url, referrer=False)
    http = reference.http()

    async def scenario(pilot):
        await goto(pilot, "apps/web")
        await pilot.press("enter")
        await settle(pilot)
        await goto(pilot, "2.0")
        await pilot.press("D")
        await settle(pilot)
        text = dialog_text(pilot.app)
        assert "Referrers: this registry has no referrers API" in text
        await pilot.press("r")
        await settle(pilot)
        text = dialog_text(pilot.app)
        assert "Cannot delete the referrers: this registry has no referrers API" in text
        assert "with referrers" not in text and "2 tags, 1 manifest would be deleted" in text
        await pilot.press("y")
        await settle(pilot)
        assert "Deleted 1 of 1." in screen_text(pilot.app)

    run_app(app_for(reference), scenario)
    assert http.get(f"/v2/apps/web/manifests/{s.c.digest}", headers={"Accept": ACCEPT}).status_code == 404
    assert sorted(http.get("/v2/apps/web/tags/list").json()["tags"]) == ["1.0", "1.1", "multi", "stable"]


def test_a_credential_helper_holding_an_identity_token_against_dockyard_serve(dockyard_with_tokens, tmp_path):
    """Issue 15: `docker login` against Dockyard keeps an identity token (the refresh token of its password grant)
    in the credential store as `<token>`; registry-tui runs the helper and signs in with it as docker does."""
    server = dockyard_with_tokens
    host = server.url.removeprefix("http://")
    r = httpx.post(f"{server.url}/auth/token", timeout=30, data={
        "grant_type": "password", "username": "alice", "password": "ecila", "service": "dockyard-test",
        "client_id": "docker", "access_type": "offline"})
    assert r.status_code == 200, r.text
    with httpx.Client(timeout=30) as token_http:
        seed(server.url, auth=RegistryAuth(Credentials("alice", "ecila"), token_http))
    log = credential_helper(tmp_path / "bin", "secretservice",
                            {host: {"ServerURL": host, "Username": "<token>", "Secret": r.json()["refresh_token"]}})
    env = docker_environment(tmp_path, {"auths": {host: {}}, "credsStore": "secretservice"})
    connection = resolve(server.url, env=env)
    assert connection.source == "docker-credential-secretservice" and log.read_text() == f"get {host}\n"

    async def scenario(pilot):
        assert "admin API" in screen_text(pilot.app)  # alice's identity token: alice, an admin
        await goto(pilot, "apps/web")
        await pilot.press("enter")
        await settle(pilot)
        await goto(pilot, "1.0")
        await pilot.press("d")
        await settle(pilot)
        await pilot.press("y")
        await settle(pilot)
        assert "Deleted 1 of 1." in screen_text(pilot.app)

    run_app(RegistryApp(RegistryClient(connection.url, connection.credentials), gc_grace=0), scenario)
    check = RegistryClient(server.url, Credentials("alice", "ecila"))
    assert sorted(t for page in check.tags("apps/web") for t in page) == ["1.1", "2.0", "latest", "multi", "stable"]
    check.close()
