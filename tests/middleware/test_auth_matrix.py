"""Issue 3: users x repositories x actions x modes (htpasswd basic, bearer token), through the whole app.

The expected outcome of every case comes from the table below, written from the rules in `auth_options`, not
from the implementation: admin may do everything; alice pulls, pushes and deletes team/*; bob (group readers)
pulls team/*; everyone, anonymous included, pulls public/*; every authenticated user pushes scratch/*. A wrong
password is 401 everywhere, an anonymous caller who may not is 401, an authenticated one 403. After a denied
request, nothing in the registry has changed.
"""

from __future__ import annotations

import pytest
import webtest

from authcases import (OCI_MANIFEST, PASSWORDS, REPOSITORIES, auth_options, basic, make_config, plain_client, seed,
                       snapshot)
from dockyard.server.app import create_app

USERS = ("admin", "alice", "bob", "anonymous", "wrong")
MOUNT_TARGET = "scratch/m"
MAY = {
    "pull": {"team/app": {"admin", "alice", "bob"}, "public/lib": {"admin", "alice", "bob", "anonymous"},
             "secret/vault": {"admin"}},
    "push": {"team/app": {"admin", "alice"}, "public/lib": {"admin"}, "secret/vault": {"admin"}},
    "delete": {"team/app": {"admin", "alice"}, "public/lib": {"admin"}, "secret/vault": {"admin"}},
}
SUCCESS = {"pull": 200, "push": 201, "delete": 202}


def expected_status(user: str, action: str, repository: str) -> int:
    if user == "wrong":
        return 401
    if user in MAY[action][repository]:
        return SUCCESS[action]
    return 401 if user == "anonymous" else 403


class Caller:
    """Sends requests as one user, in one mode: basic credentials, or a token fetched for the needed scopes."""

    def __init__(self, client: webtest.TestApp, user: str, mode: str):
        self.client, self.user, self.mode = client, user, mode

    def credentials(self) -> dict:
        if self.user == "anonymous":
            return {}
        if self.user == "wrong":
            return basic("alice", "not-alices-password")
        return basic(self.user, PASSWORDS[self.user])

    def headers(self, *scopes: str) -> dict:
        if self.mode == "htpasswd":
            return self.credentials()
        query = "&".join(f"scope={s}" for s in scopes)
        r = self.client.get(f"/auth/token?service=dockyard-test&{query}", headers=self.credentials(), status="*")
        if self.user == "wrong":
            assert r.status_int == 401, r
            assert "token" not in r.json
            return self.credentials()  # wrong credentials sent to the registry itself are refused too
        assert r.status_int == 200, r
        return {"Authorization": f"Bearer {r.json['token']}"}


@pytest.fixture(params=["htpasswd", "token"])
def mode(request):
    return request.param


@pytest.fixture
def world(tmp_path, mode):
    plain = plain_client(tmp_path)
    images = {repository: seed(plain, repository) for repository in REPOSITORIES}
    app = webtest.TestApp(create_app(make_config(tmp_path, {"name": "auth",
                                                           "options": auth_options(tmp_path, token=mode == "token")})))
    digests = [d for image in images.values() for d in (image["digest"], image["config"], image["layer"])]
    return app, plain, images, digests


def assert_unchanged_unless(status: int, ok: int, before: dict, plain, digests):
    if status != ok:
        assert snapshot(plain, (*REPOSITORIES, MOUNT_TARGET), digests) == before, "a denied request changed state"


@pytest.mark.parametrize("user", USERS)
@pytest.mark.parametrize("repository", REPOSITORIES)
def test_pull(world, mode, user, repository):
    app, plain, images, digests = world
    caller = Caller(app, user, mode)
    want = expected_status(user, "pull", repository)
    headers = {**caller.headers(f"repository:{repository}:pull"), "Accept": OCI_MANIFEST}
    r = app.get(f"/v2/{repository}/manifests/v1", headers=headers, status="*")
    assert r.status_int == want, r
    blob = app.get(f"/v2/{repository}/blobs/{images[repository]['layer']}", headers=headers, status="*")
    assert blob.status_int == want, blob
    if want == 200:
        assert r.body == images[repository]["manifest"]
        assert blob.body == f"layer of {repository}".encode()
    else:
        assert r.json["errors"][0]["code"] == ("UNAUTHORIZED" if want == 401 else "DENIED")
        assert images[repository]["manifest"] not in r.body and b"layer of" not in blob.body


@pytest.mark.parametrize("user", USERS)
@pytest.mark.parametrize("repository", REPOSITORIES)
def test_push(world, mode, user, repository):
    app, plain, images, digests = world
    before = snapshot(plain, (*REPOSITORIES, MOUNT_TARGET), digests)
    want = expected_status(user, "push", repository)
    headers = Caller(app, user, mode).headers(f"repository:{repository}:pull,push")
    session = app.post(f"/v2/{repository}/blobs/uploads/", headers=headers, status="*")
    assert session.status_int == (202 if want == 201 else want), session
    r = app.put(f"/v2/{repository}/manifests/v2", images[repository]["manifest"],
                headers={**headers, "Content-Type": OCI_MANIFEST}, status="*")
    assert r.status_int == want, r
    if want == 201:
        assert plain.get(f"/v2/{repository}/tags/list").json["tags"] == ["v1", "v2"]
    assert_unchanged_unless(r.status_int, 201, before, plain, digests)


@pytest.mark.parametrize("user", USERS)
@pytest.mark.parametrize("repository", REPOSITORIES)
def test_delete(world, mode, user, repository):
    app, plain, images, digests = world
    before = snapshot(plain, (*REPOSITORIES, MOUNT_TARGET), digests)
    want = expected_status(user, "delete", repository)
    headers = Caller(app, user, mode).headers(f"repository:{repository}:delete")
    r = app.delete(f"/v2/{repository}/manifests/{images[repository]['digest']}", headers=headers, status="*")
    assert r.status_int == want, r
    if want == 202:
        assert plain.head(f"/v2/{repository}/manifests/v1", status="*").status_int == 404
    assert_unchanged_unless(r.status_int, 202, before, plain, digests)


@pytest.mark.parametrize("user", USERS)
@pytest.mark.parametrize("repository", REPOSITORIES)
def test_mount(world, mode, user, repository):
    """Mounting needs pull on the source; without it the POST silently becomes an ordinary upload (202)."""
    app, plain, images, digests = world
    before = snapshot(plain, (*REPOSITORIES, MOUNT_TARGET), digests)
    layer = images[repository]["layer"]
    headers = Caller(app, user, mode).headers(f"repository:{MOUNT_TARGET}:pull,push", f"repository:{repository}:pull")
    r = app.post(f"/v2/{MOUNT_TARGET}/blobs/uploads/?mount={layer}&from={repository}", headers=headers, status="*")
    if user in ("wrong", "anonymous"):
        assert r.status_int == 401, r
    elif user in MAY["pull"][repository]:
        assert r.status_int == 201, r
        assert plain.head(f"/v2/{MOUNT_TARGET}/blobs/{layer}").status_int == 200
    else:
        assert r.status_int == 202, r
        assert "/blobs/uploads/" in r.headers["Location"]
        assert plain.head(f"/v2/{MOUNT_TARGET}/blobs/{layer}", status="*").status_int == 404
    assert_unchanged_unless(r.status_int, 201, before, plain, digests)


@pytest.mark.parametrize("user", USERS)
def test_catalog(world, mode, user):
    app, plain, images, digests = world
    headers = Caller(app, user, mode).headers("registry:catalog:*")
    r = app.get("/v2/_catalog", headers=headers, status="*")
    if user == "wrong":
        assert r.status_int == 401
        return
    assert r.status_int == 200, r
    assert r.json["repositories"] == sorted(repo for repo in REPOSITORIES if user in MAY["pull"][repo])
