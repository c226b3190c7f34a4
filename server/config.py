"""Dockyard's settings, each declared once with its type, default and help.

Precedence, lowest first: the defaults below, the TOML config file, `DOCKYARD_<NAME>` environment variables, then
command-line flags. An unknown or ill-typed setting stops start-up with a `ConfigError` that names it. The README's
configuration reference is checked against this table by tests/test_docs.py.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .proxies import TrustedProxies

ENV_PREFIX = "DOCKYARD_"
UI_PREFIX_RE = re.compile(r"/(?:[A-Za-z0-9_-][A-Za-z0-9._-]*/)+")
NODE_RE = re.compile(r"[A-Za-z0-9_-]{1,32}")


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the setting."""


def _setting(default: Any, help: str, *, minimum: int | None = None, choices: tuple = ()) -> Any:
    return field(default=default, metadata={"help": help, "minimum": minimum, "choices": choices})


MIB = 1024 * 1024


@dataclass(frozen=True)
class StorageConfig:
    """The `[storage]` table: which blob store, and how to reach it. Every key but `driver` is the s3 driver's."""
    driver: str = _setting("filesystem", "Where blobs live: `filesystem` (under `data`) or `s3` (a bucket of any "
                           "S3-compatible store).", choices=("filesystem", "s3"))
    bucket: str = _setting("", "The bucket (it must exist). Required with `s3`.")
    prefix: str = _setting("", "A folder inside the bucket for everything Dockyard stores (letters, digits, "
                           "`.`, `_`, `-`, `/`), so several registries can share one bucket.")
    endpoint_url: str = _setting("", "The store's URL, e.g. `https://minio.example.com:9000`; empty: AWS S3 in "
                                 "`region`.")
    region: str = _setting("", "The region; empty: AWS's usual sources (`AWS_REGION`, `~/.aws/config`), else "
                           "`us-east-1`.")
    path_style: bool = _setting(False, "Path-style URLs (`https://host/bucket/key`), which most stores other than "
                                "AWS need; false: the bucket in the host name.")
    access_key_id: str = _setting("", "Access key; empty: AWS's usual sources (`AWS_ACCESS_KEY_ID`, "
                                  "`~/.aws/credentials`, an instance or pod role).")
    secret_access_key: str = field(default="", repr=False, metadata={
        "help": "Secret key, with `access_key_id`.", "minimum": None, "choices": ()})
    tls_verify: bool = _setting(True, "Verify the store's TLS certificate.")
    ca_bundle: str = _setting("", "A PEM file of the CAs to verify the store's certificate with; empty: the "
                              "system's.")
    part_size: int = _setting(8 * MIB, "Bytes per part of a multipart upload; at most 10,000 parts make a blob, so "
                              "this also caps a blob's size (8 MiB: 78 GiB).", minimum=5 * MIB)
    download: str = _setting("proxy", "How blob downloads leave: `proxy` (through Dockyard), `redirect` (307 to a "
                             "presigned URL of the store) or `accel` (nginx fetches it: see Deploying).",
                             choices=("proxy", "redirect", "accel"))
    presign_expiry: int = _setting(1200, "Seconds a presigned download URL stays valid (`redirect`, `accel`).",
                                   minimum=1)
    checksums: str = _setting("when_required", "When boto3 adds checksums to requests and checks them in answers: "
                              "`when_required` (accepted by every store) or `when_supported` (boto3's default, "
                              "which some S3-compatible stores reject).", choices=("when_required", "when_supported"))
    timeout: int = _setting(30, "Seconds to connect to the store, and to wait for each of its answers, before a "
                            "request is retried (3 attempts in all) or fails with 503.", minimum=1)

    def __post_init__(self) -> None:
        import importlib.util
        import re

        if self.presign_expiry > 7 * 24 * 3600:
            raise ConfigError("setting 'storage.presign_expiry': at most 604800 (7 days, SigV4's limit)")
        if not re.fullmatch(r"(?:[A-Za-z0-9._-]+/?)*", self.prefix.strip("/")) or ".." in self.prefix.split("/"):
            raise ConfigError(f"setting 'storage.prefix': letters, digits, '.', '_', '-' and '/' only, got "
                              f"{self.prefix[:100]!r}")
        if self.driver == "s3":
            if not self.bucket:
                raise ConfigError("setting 'storage.bucket': required with driver = \"s3\"")
            if importlib.util.find_spec("boto3") is None:
                raise ConfigError("setting 'storage.driver': \"s3\" needs boto3: pip install 'dockyard[s3]'")


@dataclass(frozen=True)
class Config:
    bind: str = _setting("0.0.0.0:5000", "Address and port to listen on, HOST:PORT (the reference registry's port).")
    data: str = _setting("./data", "Data directory: the SQLite database (registry.db) and the blobs.")
    database: str = _setting("", "The metadata database, a URL: `sqlite:///PATH` (three slashes and a relative "
                             "path, four for an absolute one) or `postgresql://USER:PASSWORD@HOST:PORT/DB`. "
                             "Empty: `<data>/registry.db`.")
    storage: StorageConfig = _setting(StorageConfig(), "Where blobs live: a TOML table `[storage]` (keys: "
                                      "`StorageConfig`); each key also as `DOCKYARD_STORAGE_<KEY>`.")
    workers: int = _setting(0, "gunicorn worker processes; 0 means two per CPU core.", minimum=0)
    threads: int = _setting(64, "Threads per worker; a request holds one while it runs (a blob transfer for as long as "
                            "it takes), idle connections and request headers hold none.", minimum=1)
    header_timeout: int = _setting(10, "Seconds a client has to send a request's line and headers (from when its "
                                   "connection becomes readable); then the connection is closed.", minimum=1)
    body_timeout: int = _setting(60, "Seconds a request body or a response may go without a byte moving before "
                                 "its connection is closed (a stalled upload or download frees its thread).",
                                 minimum=1)
    timeout: int = _setting(120, "Seconds a silent worker may stay unresponsive before gunicorn restarts it.",
                            minimum=1)
    max_manifest_size: int = _setting(4 * 1024 * 1024, "Largest manifest accepted, in bytes (the spec asks for "
                                      "at least 4 MiB).", minimum=1024)
    page_size_max: int = _setting(10000, "Largest page of tags/list and _catalog; larger `n` is cut to it and "
                                  "a Link header points to the rest.", minimum=1)
    io_block_size: int = _setting(1024 * 1024, "Bytes read per system call while streaming blobs in and out.",
                                  minimum=4096)
    min_free_space: int = _setting(256 * 1024 * 1024, "Bytes uploads leave free on the data directory's filesystem "
                                   "(at most 5% of it), so deletes and the database always have room; an upload "
                                   "that would go below is refused with 507 INSUFFICIENT_STORAGE.", minimum=0)
    sendfile: bool = _setting(False, "Let gunicorn send blobs with sendfile(2). Off by default: on loopback a "
                              "read loop measured faster here; behind nginx use X-Accel-Redirect instead.")
    accel_redirect: str = _setting("", "Behind nginx: the `internal` location prefix aliased to the blob directory "
                                   "(e.g. /_dockyard_blobs); blob GETs then answer with X-Accel-Redirect and nginx "
                                   "sends the file. Empty: Python streams blobs itself.")
    base_url: str = _setting("", "External URL of the registry (e.g. https://registry.example.com), used for every "
                             "Location and Link header. Empty: derived from each request.")
    trusted_proxies: str = _setting("", "Comma-separated addresses or CIDR networks of reverse proxies (or `*`) whose "
                                    "X-Forwarded-Proto/-Host/-For are believed; also gunicorn's forwarded_allow_ips.")
    node: str = _setting("", "This node's name in a cluster (letters, digits, - and _; at most 32): upload "
                         "`Location`s carry it as `?node=NAME` so the nginx cluster site sends a session's next "
                         "requests to the node that holds it (deploy/nginx/dockyard-cluster.conf). Any node can "
                         "continue any session; empty: no hint.")
    log_level: str = _setting("info", "gunicorn log level.",
                              choices=("debug", "info", "warning", "error", "critical"))
    config: str = _setting("", "Path of the TOML config file that was loaded (set by --config or "
                           "DOCKYARD_CONFIG).")
    read_only: bool = _setting(False, "Maintenance mode: writes are refused (503 UNSUPPORTED), reads go on. Can "
                               "also be switched at run time through the admin API.")
    quotas: tuple = _setting((), "Byte limits: a TOML table `[quotas]` of repository name (or prefix ending in "
                             "\"/\") to bytes or a size such as \"10GiB\". File only.")
    gc_grace: int = _setting(3600, "Seconds a blob uploaded but not yet used by any manifest is protected from "
                             "garbage collection.", minimum=0)
    gc_interval: int = _setting(0, "Run garbage collection every this many seconds in the background; 0 = never "
                                "(run `dockyard gc` or the admin API instead).", minimum=0)
    gc_delete_untagged: bool = _setting(False, "Scheduled garbage collection also deletes untagged manifests "
                                        "(never children of a tagged index, nor referrers of a live manifest).")
    upload_max_age: int = _setting(86400, "Seconds an upload session may stay idle before garbage collection "
                                   "purges it with its data.", minimum=60)
    upload_sessions_per_repository: int = _setting(500, "Upload sessions a repository may have open at once "
                                                   "(0: no limit); one more is refused with 429.", minimum=0)
    upload_sessions_per_user: int = _setting(1000, "Upload sessions one user may have open at once, across "
                                             "repositories (0: no limit); one more is refused with 429.", minimum=0)
    ui: bool = _setting(True, "Serve the built-in web UI under `ui_prefix`; false turns it off.")
    ui_prefix: str = _setting("/ui/", "Path the web UI is served under: /name/ (not under /v2/ or /auth/).")
    middleware: tuple = _setting((), "The middleware chain, in order: TOML `[[middleware]]` tables, each with "
                                 "`name` (a built-in name or a dotted path to a Falcon middleware class) and "
                                 "`options`. File only.")
    upstreams: tuple = _setting((), "Pull-through cache: TOML `[[upstreams]]` tables, each an upstream registry "
                                "and the repository names it serves (see Pull-through cache). File only.")
    notifications: tuple = _setting((), "Event endpoints: TOML `[[notifications]]` tables (name, url, headers, "
                                    "secret, actions, repositories, media_types, format, retries; see Events). "
                                    "File only.")
    events_retention: int = _setting(7 * 86400, "Seconds a delivered event is kept in the outbox (for replay) "
                                     "before it is pruned.", minimum=60)

    def __post_init__(self) -> None:
        try:
            TrustedProxies.parse(self.trusted_proxies)
        except ValueError as exc:
            raise ConfigError(f"setting 'trusted_proxies': {exc}") from None
        if self.node and not NODE_RE.fullmatch(self.node):
            raise ConfigError(f"setting 'node': letters, digits, '-' and '_', at most 32, got {self.node[:100]!r}")
        if self.database and not self.database.startswith(("sqlite:///", "postgresql://", "postgres://")):
            # Never echo the value: a URL may hold a password.
            raise ConfigError("setting 'database': expected a sqlite:///PATH or postgresql://... URL")
        if self.notifications:
            from .events import Endpoint

            if not all(isinstance(entry, Endpoint) for entry in self.notifications):  # tables given directly
                object.__setattr__(self, "notifications", _coerce("notifications", list(self.notifications)))
        if not UI_PREFIX_RE.fullmatch(self.ui_prefix) or self.ui_prefix.startswith(("/v2/", "/auth/")):
            raise ConfigError(f"setting 'ui_prefix': expected a path like /ui/ (letters, digits, - _ . /; not "
                              f"under /v2/ or /auth/), got {self.ui_prefix!r}")
        if self.storage.driver == "filesystem" and self.storage.download != "proxy":
            raise ConfigError("setting 'storage.download': the filesystem driver sends blobs itself or through "
                              "nginx with accel_redirect; only \"proxy\" applies to it")
        if self.storage.download == "accel" and not self.accel_redirect.startswith("/"):
            raise ConfigError("setting 'accel_redirect': storage.download = \"accel\" needs the nginx internal "
                              "location, a path starting with '/'")

    @property
    def data_path(self) -> Path:
        return Path(self.data)

    @property
    def proxies(self) -> TrustedProxies:
        """`trusted_proxies`, parsed (it was checked when the configuration was loaded)."""
        return TrustedProxies.parse(self.trusted_proxies)

    @property
    def worker_count(self) -> int:
        return self.workers or 2 * (os.cpu_count() or 1)


SETTINGS = {f.name: f for f in dataclasses.fields(Config)}
STORAGE_SETTINGS = {f.name: f for f in dataclasses.fields(StorageConfig)}


def _middleware_entries(value: Any) -> tuple:
    if not isinstance(value, list):
        raise ConfigError("setting 'middleware': expected a list of [[middleware]] tables")
    entries = []
    for i, entry in enumerate(value):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
            raise ConfigError(f"setting 'middleware[{i}]': expected a table with a 'name' string")
        unknown = set(entry) - {"name", "options"}
        if unknown:
            raise ConfigError(f"setting 'middleware[{i}]' ({entry['name']}): unknown key(s) {', '.join(sorted(unknown))}")
        options = entry.get("options", {})
        if not isinstance(options, dict):
            raise ConfigError(f"setting 'middleware[{i}].options' ({entry['name']}): expected a table")
        entries.append({"name": entry["name"], "options": options})
    return tuple(entries)


def _quota_entries(value: Any) -> tuple:
    from .quotas import parse_size
    from .names import NAME_RE

    if not isinstance(value, dict):
        raise ConfigError("setting 'quotas': expected a table of repository name or prefix = size")
    entries = []
    for pattern, size in value.items():
        if not NAME_RE.fullmatch(pattern.rstrip("/")):
            raise ConfigError(f"setting 'quotas': {pattern!r} is not a repository name or prefix")
        try:
            entries.append((pattern, parse_size(size)))
        except ValueError as exc:
            raise ConfigError(f"setting 'quotas.{pattern}': {exc}") from None
    return tuple(entries)


def _storage_table(value: Any) -> dict:
    """The keys of a `[storage]` table, each checked; the table is checked as a whole once every source is read."""
    if isinstance(value, StorageConfig):
        return dataclasses.asdict(value)
    if not isinstance(value, dict):
        raise ConfigError("setting 'storage': expected a table [storage]")
    unknown = sorted(set(value) - set(STORAGE_SETTINGS))
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(f'storage.{key}' for key in unknown)}")
    return {key: _coerce(f"storage.{key}", item) for key, item in value.items()}


def _upstream_entries(value: Any) -> tuple:
    from .quotas import parse_size
    from .upstream import check_upstreams, upstream_from_table

    if not isinstance(value, list):
        raise ConfigError("setting 'upstreams': expected a list of [[upstreams]] tables")
    entries = []
    for i, table in enumerate(value):
        try:
            entries.append(upstream_from_table(table, size_of=parse_size))
        except ValueError as exc:
            raise ConfigError(f"setting 'upstreams[{i}]': {exc}") from None
    try:
        check_upstreams(tuple(entries))
    except ValueError as exc:
        raise ConfigError(f"setting 'upstreams': {exc}") from None
    return tuple(entries)


def _coerce(name: str, value: Any) -> Any:
    if name == "upstreams":
        return _upstream_entries(value)
    if name == "middleware":
        return _middleware_entries(value)
    if name == "quotas":
        return _quota_entries(value)
    if name == "storage":
        return _storage_table(value)
    if name == "notifications":
        from .events import parse_endpoints

        try:
            return parse_endpoints(value)
        except ValueError as exc:
            raise ConfigError(f"setting 'notifications': {exc}") from None
    f = SETTINGS[name] if not name.startswith("storage.") else STORAGE_SETTINGS[name.removeprefix("storage.")]
    kind = f.type if isinstance(f.type, type) else {"str": str, "int": int, "bool": bool}[f.type]
    if kind is bool:
        if isinstance(value, bool):
            out = value
        elif isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            out = value.lower() in ("1", "true", "yes", "on")
        else:
            raise ConfigError(f"setting {name!r}: expected true or false, got {value!r}")
    elif kind is int:
        if isinstance(value, bool):
            raise ConfigError(f"setting {name!r}: expected an integer, got {value!r}")
        try:
            out = int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"setting {name!r}: expected an integer, got {value!r}") from None
        if f.metadata["minimum"] is not None and out < f.metadata["minimum"]:
            raise ConfigError(f"setting {name!r}: must be at least {f.metadata['minimum']}, got {out}")
    else:
        if not isinstance(value, str):
            raise ConfigError(f"setting {name!r}: expected a string, got {value!r}")
        out = value
    if f.metadata["choices"] and out not in f.metadata["choices"]:
        raise ConfigError(f"setting {name!r}: must be one of {', '.join(f.metadata['choices'])}, got {out!r}")
    return out


def load_config(path: str | os.PathLike | None = None, *, environ: Mapping[str, str] | None = None,
                overrides: Mapping[str, Any] | None = None) -> Config:
    """Build the Config from defaults, the TOML file, DOCKYARD_* variables and explicit overrides."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    path = path or environ.get(ENV_PREFIX + "CONFIG") or None
    if path:
        try:
            with open(path, "rb") as fh:
                document = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file {str(path)!r} not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from None
        for key, value in document.items():
            name = key.replace("-", "_")
            if name not in SETTINGS or name == "config":
                raise ConfigError(f"unknown setting {key!r} in {str(path)!r}")
            values[name] = _coerce(name, value)
        values["config"] = str(path)
    storage_environ = {}
    for key, value in environ.items():
        if key.startswith(ENV_PREFIX) and key != ENV_PREFIX + "CONFIG":
            name = key[len(ENV_PREFIX):].lower()
            if name.startswith("storage_") and name.removeprefix("storage_") in STORAGE_SETTINGS:
                storage_environ[name.removeprefix("storage_")] = value
                continue
            if name not in SETTINGS or name in ("middleware", "quotas", "storage", "upstreams", "notifications"):
                raise ConfigError(f"unknown setting {name!r} from environment variable {key}")
            values[name] = _coerce(name, value)
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = _coerce(name, value)
    if "storage" in values or storage_environ:
        values["storage"] = StorageConfig(**{**values.get("storage", {}), **_storage_table(storage_environ)})
    return Config(**values)
