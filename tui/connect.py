"""Where registry-tui finds the registry and the credentials: flags, then the environment, then files.

URL: the argument, else `REGISTRY_TUI_URL`, else `url` in ~/.config/registry-tui/config.toml (or
`$XDG_CONFIG_HOME/registry-tui/config.toml`). Credentials: `--username/--password` (or `--token`), else
`REGISTRY_TUI_USERNAME/REGISTRY_TUI_PASSWORD` (or `REGISTRY_TUI_TOKEN`), else `username/password` in the config
file, else what `docker login` stored for the host in `$DOCKER_CONFIG/config.json` (~/.docker/config.json).
"""

from __future__ import annotations

import base64
import json
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from .client import Credentials

DEFAULT_URL = "http://127.0.0.1:5000"


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


def docker_credentials(host: str, env: Mapping[str, str]) -> Credentials | None:
    """`auths.<host>.auth` (base64 user:pass) from the docker client's config.json, as `docker login` stores it."""
    directory = env.get("DOCKER_CONFIG") or str(Path(env.get("HOME", "~")).expanduser() / ".docker")
    path = Path(directory) / "config.json"
    try:
        auths = json.loads(path.read_text()).get("auths") or {}
    except FileNotFoundError:
        return None
    except (ValueError, OSError, AttributeError) as exc:
        raise SettingsError(f"cannot read {path}: {exc}") from None
    for key, entry in auths.items():
        if host_of(key) != host or not isinstance(entry, dict):
            continue
        if entry.get("auth"):
            try:
                user, _, password = base64.b64decode(entry["auth"], validate=True).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                raise SettingsError(f"{path}: auths.{key}.auth is not base64 user:password") from None
            return Credentials(user, password)
        if entry.get("username"):
            return Credentials(entry["username"], entry.get("password", ""))
        if entry.get("identitytoken"):
            return Credentials(token=entry["identitytoken"])
    return None


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
    docker = docker_credentials(host_of(url), env)
    if docker:
        return Connection(url, docker, "docker config.json", timeout)
    return Connection(url, Credentials(), "anonymous", timeout)
