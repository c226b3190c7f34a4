"""Issue 11, finding 3: the failed-login policy (middleware/logins.py), the same at every door that checks a password.

25 wrong passwords through each door are refused the same way (5 x 401, then 429 with Retry-After and no bcrypt);
the same account from another address, and another account from the attacking address, still log in during the
flood; the account under attack is slowed, and recovers as time passes.
"""

from __future__ import annotations

import bcrypt
import pytest
import webtest

from authcases import PASSWORDS, auth_options, basic, make_config
from dockyard.server.app import create_app
from dockyard.server.config import ConfigError

ATTACKER, ELSEWHERE = "203.0.113.66", "198.51.100.7"
TOKEN = "/auth/token?service=dockyard-test&scope=repository:team/app:pull"


class Clock:
    def __init__(self):
        self.now = 1_700_000_000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def app(tmp_path, clock):
    config = make_config(tmp_path, {"name": "auth", "options": auth_options(tmp_path, token=True)})
    return webtest.TestApp(create_app(config, clock=clock))


@pytest.fixture
def bcrypt_checks(monkeypatch):
    calls = []
    original = bcrypt.checkpw

    def counting(password, hashed):
        calls.append(password)
        return original(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", counting)
    return calls


def basic_v2(app, user, password, address):
    return app.get("/v2/", headers=basic(user, password), extra_environ={"REMOTE_ADDR": address}, status="*")


def token_get(app, user, password, address):
    return app.get(TOKEN, headers=basic(user, password), extra_environ={"REMOTE_ADDR": address}, status="*")


def token_post(app, user, password, address):
    return app.post("/auth/token", {"grant_type": "password", "username": user, "password": password,
                                    "service": "dockyard-test"}, extra_environ={"REMOTE_ADDR": address}, status="*")


DOORS = {"basic on /v2/": basic_v2, "token endpoint GET": token_get, "token endpoint POST": token_post}


@pytest.mark.parametrize("door", DOORS)
def test_25_wrong_passwords_through_each_door_are_refused_the_same_way(app, door, bcrypt_checks):
    attempt = DOORS[door]
    answers = [attempt(app, "alice", f"guess-{i}", ATTACKER) for i in range(25)]
    assert [r.status_int for r in answers] == [401] * 5 + [429] * 20
    assert all(r.json["errors"][0]["code"] == "UNAUTHORIZED" for r in answers[:5])
    assert all(r.json["errors"][0]["code"] == "TOOMANYREQUESTS" and int(r.headers["Retry-After"]) >= 1
               for r in answers[5:])
    assert len(bcrypt_checks) == 5  # a refused attempt costs no bcrypt
    # The right password from the attacking address waits too: guessing it is what is being slowed.
    assert attempt(app, "alice", PASSWORDS["alice"], ATTACKER).status_int == 429
    # During the flood: the account's owner elsewhere, and another account behind the attacking address, get in.
    assert attempt(app, "alice", PASSWORDS["alice"], ELSEWHERE).status_int == 200
    assert attempt(app, "bob", PASSWORDS["bob"], ATTACKER).status_int == 200


def test_the_doors_share_one_account_budget(app):
    for i in range(3):
        assert basic_v2(app, "carol", f"a{i}", ATTACKER).status_int == 401
    for i in range(2):
        assert token_post(app, "carol", f"b{i}", ATTACKER).status_int == 401
    assert token_get(app, "carol", "c", ATTACKER).status_int == 429


def test_a_slowed_account_recovers_as_time_passes(app, clock):
    for i in range(5):
        basic_v2(app, "alice", f"guess-{i}", ATTACKER)
    refused = basic_v2(app, "alice", PASSWORDS["alice"], ATTACKER)
    assert refused.status_int == 429 and int(refused.headers["Retry-After"]) == 60
    clock.now += 60
    assert basic_v2(app, "alice", PASSWORDS["alice"], ATTACKER).status_int == 200


def test_ten_wrong_passwords_do_not_lock_out_everyone_behind_one_address(app):
    """The old behaviour this replaces: ten failures from a NAT's address locked out every user behind it."""
    for user in ("alice", "bob"):
        for i in range(10):
            basic_v2(app, user, f"typo-{i}", ATTACKER)
    assert basic_v2(app, "carol", PASSWORDS["carol"], ATTACKER).status_int == 200
    assert basic_v2(app, "admin", PASSWORDS["admin"], ATTACKER).status_int == 200


def test_an_address_guessing_across_many_accounts_is_capped(tmp_path, clock, bcrypt_checks):
    options = auth_options(tmp_path, failed_logins={"per_address": {"rate": 0, "burst": 20}})
    app = webtest.TestApp(create_app(make_config(tmp_path, {"name": "auth", "options": options}), clock=clock))
    statuses = [basic_v2(app, f"user-{i}", "guess", ATTACKER).status_int for i in range(30)]
    assert statuses == [401] * 20 + [429] * 10 and len(bcrypt_checks) == 20
    assert basic_v2(app, "alice", PASSWORDS["alice"], ELSEWHERE).status_int == 200


@pytest.mark.parametrize("failed_logins, message", [
    ({"per_acount": {}}, "failed_logins.per_acount"),
    ({"per_account": {"burst": 0}}, "failed_logins.per_account.burst"),
    ({"per_address": {"rate": -1}}, "failed_logins.per_address.rate"),
])
def test_bad_failed_login_options(tmp_path, failed_logins, message):
    with pytest.raises(ConfigError, match=message):
        create_app(make_config(tmp_path, {"name": "auth", "options": auth_options(tmp_path,
                                                                                  failed_logins=failed_logins)}))
