"""Where registry-tui finds the registry and the credentials: flags, then the environment, then files.

URL: the argument, else `REGISTRY_TUI_URL`, else `url` in ~/.config/registry-tui/config.toml (or
`$XDG_CONFIG_HOME/registry-tui/config.toml`). Credentials: `--username/--password` (or `--token`), else
`REGISTRY_TUI_USERNAME/REGISTRY_TUI_PASSWORD` (or `REGISTRY_TUI_TOKEN`), else `username/password` in the config
file, else what `docker login` stored for the host, found as docker finds it in `$DOCKER_CONFIG/config.json`
(~/.docker/config.json): the host's `credHelpers` entry, else `credsStore`, names a credential helper that docker
runs as `docker-credential-<name> get` with the host on stdin; without either, `auths.<host>` in the file itself.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from .client import Credentials

DEFAULT_URL = "http://127.0.0.1:5000"
HELPER_TIMEOUT = 60  # seconds: a helper may wait for a keyring to be unlocked
# What a helper prints when it holds nothing for the server (docker-credential-helpers' ErrCredentialsNotFound):
# docker takes it as "no credentials", not as a failure.
NOT_FOUND = "credentials not found in native keychain"
TOKEN_USERNAME = "<token>"  # a helper's Username for an identity token (the Secret), as docker's native store reads it


class SettingsError(Exception):
    """A configuration mistake, said plainly."""


@dataclass(frozen=True)
class Connection:
    url: str
    credentials: Credentials
    source: str  # where the credentials came from, to show on screen ("docker config.json", "flags", ...)
    timeout: float = 10.0


def config_path(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME", "~")).expanduser() / ".config")
    return Path(base) / "registry-tui" / "config.toml"


def read_config(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        return {}
    except (tomllib.TOMLDecodeError, OSError) as exc:
        raise SettingsError(f"cannot read {path}: {exc}") from None


def normalize_url(url: str) -> str:
    url = url.strip().rstrip("/")
    if "://" not in url:
        # A bare host is what `docker login` takes; loopback is plain HTTP, anything else HTTPS.
        host = url.split("/")[0]
        local = host.split(":")[0] in ("127.0.0.1", "localhost", "::1", "[::1]")
        url = ("http://" if local else "https://") + url
    return url


def host_of(url: str) -> str:
    return url.split("://", 1)[-1].split("/", 1)[0]


def docker_config(env: Mapping[str, str]) -> tuple[Path, dict]:
    directory = env.get("DOCKER_CONFIG") or str(Path(env.get("HOME", "~")).expanduser() / ".docker")
    path = Path(directory) / "config.json"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        return path, {}
    except (ValueError, OSError) as exc:
        raise SettingsError(f"cannot read {path}: {exc}") from None
    if not isinstance(config, dict):
        raise SettingsError(f"cannot read {path}: not a JSON object")
    return path, config


def docker_credentials(host: str, env: Mapping[str, str]) -> tuple[Credentials | None, str]:
    """What `docker login` stored for `host`, read as docker reads it, and where it came from. A credential helper
    configured for the host (`credHelpers`, else `credsStore`) is the only place docker looks: its "not found" is no
    credentials, and `auths` in the file is not read then."""
    path, config = docker_config(env)
    helpers = config.get("credHelpers") or {}
    if not isinstance(helpers, dict):
        raise SettingsError(f"{path}: credHelpers is not an object")
    # An entry for the host wins over credsStore, even an empty one: docker then reads the file for that host.
    helper, setting = next(((name, "credHelpers") for key, name in helpers.items() if host_of(key) == host),
                           (config.get("credsStore"), "credsStore"))
    if helper:
        return run_helper(str(helper), host, env, f"{setting} in {path}"), f"docker-credential-{helper}"
    return file_credentials(path, config.get("auths") or {}, host), "docker config.json"


def file_credentials(path: Path, auths: dict, host: str) -> Credentials | None:
    """`auths.<host>` as `docker login` writes it without a helper: `auth` (base64 user:password), or `username`
    and `password`, and an `identitytoken` (which docker prefers wherever a token service takes it)."""
    if not isinstance(auths, dict):
        raise SettingsError(f"{path}: auths is not an object")
    for key, entry in auths.items():
        if host_of(key) != host or not isinstance(entry, dict):
            continue
        user, password = entry.get("username"), entry.get("password", "")
        if entry.get("auth"):
            try:
                user, _, password = base64.b64decode(entry["auth"], validate=True).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                raise SettingsError(f"{path}: auths.{key}.auth is not base64 user:password") from None
        credentials = Credentials(user or None, password if user else None,
                                  identity_token=entry.get("identitytoken") or None)
        if credentials:
            return credentials
    return None


def run_helper(name: str, host: str, env: Mapping[str, str], where: str) -> Credentials | None:
    """`docker-credential-<name> get` with the server on stdin, as docker runs it: a JSON answer with `Username` and
    `Secret` (`<token>` as the Username: the Secret is an identity token); a failure is a one-line SettingsError."""
    program = f"docker-credential-{name}"
    executable = shutil.which(program, path=env.get("PATH", os.defpath))
    if executable is None:
        raise SettingsError(f"{program} is not on PATH ({where} names it): install it, or pass --username")
    try:
        done = subprocess.run([executable, "get"], input=host.encode(), capture_output=True, env=dict(env),
                              timeout=HELPER_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise SettingsError(f"{program} get {host}: no answer within {HELPER_TIMEOUT}s") from None
    except OSError as exc:
        raise SettingsError(f"cannot run {executable}: {exc.strerror or exc}") from None
    out = done.stdout.decode(errors="replace").strip()
    if done.returncode != 0:
        if out == NOT_FOUND:
            return None
        said = " ".join((out or done.stderr.decode(errors="replace").strip()).split())[:200]
        raise SettingsError(f"{program} get {host} failed (exit {done.returncode}): {said or 'no output'}")
    try:
        answer = json.loads(out)
        username, secret = answer.get("Username") or "", answer.get("Secret") or ""
    except (ValueError, AttributeError):
        raise SettingsError(f"{program} get {host}: the answer is not the JSON docker expects") from None
    if username == TOKEN_USERNAME:
        return Credentials(identity_token=secret) if secret else None
    return Credentials(username, secret) if username else None


def resolve(url: str | None = None, *, username: str | None = None, password: str | None = None,
            token: str | None = None, env: Mapping[str, str] | None = None) -> Connection:
    env = os.environ if env is None else env
    config = read_config(config_path(env))
    url = url or env.get("REGISTRY_TUI_URL") or config.get("url") or DEFAULT_URL
    url = normalize_url(str(url))
    timeout = float(config.get("timeout", 10.0))
    if username or token:
        return Connection(url, Credentials(username, password, token), "flags", timeout)
    if env.get("REGISTRY_TUI_USERNAME") or env.get("REGISTRY_TUI_TOKEN"):
        creds = Credentials(env.get("REGISTRY_TUI_USERNAME"), env.get("REGISTRY_TUI_PASSWORD"),
                            env.get("REGISTRY_TUI_TOKEN"))
        return Connection(url, creds, "environment", timeout)
    if config.get("username"):
        return Connection(url, Credentials(config["username"], config.get("password")), "config file", timeout)
    docker, source = docker_credentials(host_of(url), env)
    if docker:
        return Connection(url, docker, source, timeout)
    return Connection(url, Credentials(), "anonymous", timeout)
